#!/usr/bin/env bash
# examples/fleet/run.sh: three Palisade replicas behind HAProxy on loopback, sharing the local
# PostgreSQL (the registry, in a database of its own) and Redis (rate limits and sessions, any
# replica continuing a session another opened). Prints the load
# balancer's MCP URL, the replicas' admin URLs, tenant acme's API key and the admin API's key
# on one line starting with "fleet ", then runs until interrupted (or sent SIGTERM), and stops everything it started.
#
# Environment (defaults in brackets):
#   PALISADE_BIN_DIR  [target/debug]   palisade and palisade-testkit (cargo build --workspace --bins)
#   FLEET_POSTGRES    [postgres://postgres@127.0.0.1:5432/postgres]  a role that may CREATE DATABASE
#   PALISADE_REDIS_URL [redis://127.0.0.1:6379]
#   FLEET_BASE_PORT   [18100]  the load balancer; replicas' MCP at +1..+3, admin at +11..+13
#   FLEET_DIR         [a new temporary directory]  configs, data and logs
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$(cd "${PALISADE_BIN_DIR:-$root/target/debug}" && pwd)
base=${FLEET_BASE_PORT:-18100}
dir=${FLEET_DIR:-$(mktemp -d /tmp/palisade-fleet.XXXXXX)}
admin_db=${FLEET_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
database=palisade_fleet_$$_$RANDOM
mkdir -p "$dir"

export PALISADE_DATABASE_URL="${admin_db%/*}/$database"
export PALISADE_REDIS_URL=${PALISADE_REDIS_URL:-redis://127.0.0.1:6379}
PALISADE_PEPPER=$(head -c 32 /dev/urandom | base64)
PALISADE_FLEET_KEY=$(head -c 32 /dev/urandom | base64)
export PALISADE_PEPPER PALISADE_FLEET_KEY

# What the CLI needs to reach this fleet's registry: `source $dir/env`, then e.g.
# `palisade tenant suspend acme --config $dir/r1.toml`.
umask 077
printf 'export PALISADE_DATABASE_URL=%q PALISADE_PEPPER=%q PALISADE_REDIS_URL=%q PALISADE_FLEET_KEY=%q\n' \
    "$PALISADE_DATABASE_URL" "$PALISADE_PEPPER" "$PALISADE_REDIS_URL" "$PALISADE_FLEET_KEY" >"$dir/env"
umask 022

pids=()
stop() {
    trap - EXIT INT TERM
    touch "$dir/stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    pkill -TERM -f -- "serve --config $dir/r" 2>/dev/null || true
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    # The replicas drain (shutdown_notice_secs, then in-flight calls): wait for them.
    for _ in $(seq 1 300); do
        pgrep -f -- "serve --config $dir/r" >/dev/null || break
        sleep 0.1
    done
    psql -q "$admin_db" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
    # The fleet's sessions in Redis (they would expire anyway).
    if command -v redis-cli >/dev/null; then
        redis-cli -u "$PALISADE_REDIS_URL" --scan --pattern "$database:*" 2>/dev/null |
            xargs -r redis-cli -u "$PALISADE_REDIS_URL" del >/dev/null 2>&1 || true
    fi
}
trap stop EXIT INT TERM

psql -q -v ON_ERROR_STOP=1 "$admin_db" -c "CREATE DATABASE $database" >/dev/null

render() { # render I ADMIN_KEY_HASH: replica I's config
    sed -e "s|@MCP_PORT@|$((base + $1))|" -e "s|@ADMIN_PORT@|$((base + 10 + $1))|" \
        -e "s|@DATA_DIR@|$dir/r$1|" -e "s|@BIN_DIR@|$bin|" -e "s|@ADMIN_KEY_HASH@|$2|" \
        -e "s|@FLEET@|$database|" -e "s|@FLEET_DIR@|$dir|" \
        "$here/replica.toml" >"$dir/r$1.toml"
}
# The admin key: made with the fleet's pepper (the placeholder hash only lets `key new` read
# the config), then written into every replica's config.
render 1 "hmac-sha256:$(printf '0%.0s' $(seq 1 64))"
made=$("$bin/palisade" key new --config "$dir/r1.toml")
admin_key=$(printf '%s\n' "$made" | sed -n 's/^API key .*: \(pal_[A-Za-z0-9_-]*\)$/\1/p')
admin_hash=$(printf '%s\n' "$made" | grep -o 'hmac-sha256:[0-9a-f]*')
for i in 1 2 3; do render "$i" "$admin_hash"; done

# The tenant and its key go into the shared registry before any replica starts.
"$bin/palisade" tenant create acme --servers kit,kitl --config "$dir/r1.toml" >/dev/null
key=$("$bin/palisade" key issue acme --config "$dir/r1.toml" | sed -n 's/^API key .*: \(pal_[A-Za-z0-9_-]*\)$/\1/p')

# Replica I, started again whenever it exits (a SIGTERM restarts it, as a rolling restart
# would), until the fleet stops.
replica() {
    while [ ! -e "$dir/stopping" ]; do
        PALISADE_REPLICA=r$1 "$bin/palisade" --log-format json serve --config "$dir/r$1.toml" \
            >>"$dir/r$1.out" 2>>"$dir/r$1.log" || sleep 1
    done
}
for i in 1 2 3; do
    replica "$i" &
    pids+=($!)
done
for i in 1 2 3; do
    ready=no
    for _ in $(seq 1 200); do
        if curl -fsS "http://127.0.0.1:$((base + 10 + i))/readyz" >/dev/null 2>&1; then
            ready=yes
            break
        fi
        sleep 0.1
    done
    if [ $ready = no ]; then
        echo "replica r$i did not become ready within 20 s; its log:" >&2
        tail -5 "$dir/r$i.log" >&2
        exit 1
    fi
done

sed -e "s|@LB_PORT@|$base|" \
    -e "s|@MCP_1@|$((base + 1))|" -e "s|@MCP_2@|$((base + 2))|" -e "s|@MCP_3@|$((base + 3))|" \
    -e "s|@ADMIN_1@|$((base + 11))|" -e "s|@ADMIN_2@|$((base + 12))|" -e "s|@ADMIN_3@|$((base + 13))|" \
    "$here/haproxy.cfg" >"$dir/haproxy.cfg"
haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    curl -sS -o /dev/null "http://127.0.0.1:$base/" 2>/dev/null && break
    sleep 0.1
done

echo "fleet mcp=http://127.0.0.1:$base/mcp admin=http://127.0.0.1:$((base + 11)),http://127.0.0.1:$((base + 12)),http://127.0.0.1:$((base + 13)) key=$key admin_key=$admin_key dir=$dir"
# Until interrupted; `wait` returns when a signal arrives, and the trap stops the fleet.
wait
