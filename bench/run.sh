#!/usr/bin/env bash
# bench/run.sh: measures what Palisade adds over calling an MCP upstream directly, for an HTTP
# upstream and a stdio upstream, direct and through the gateway in the same run, and prints a
# markdown table (bench/report.py) with the deltas against the issue's targets.
#
# Runs (each WARMUP s + DURATION s, SESSIONS concurrent sessions, legacy era):
#   latency    open loop at RATE calls/s in total (paced, no coordinated omission)
#   saturated  closed loop (each session calls again as soon as it is answered)
#   hold       HOLD legacy sessions kept open on the gateway, for its RSS
#   jwt        the HTTP latency run again through the gateway, authenticated with an OAuth access
#              token (ES256, from a local issuer, bench-idp) instead of an API key
#   auth       bench-auth: authentication per request in process, against a no-auth baseline
# The gateway part runs only when target/release/palisade exists.
#
# Environment: DURATION=10 WARMUP=2 SESSIONS=16 RATE=2000 HOLD=1000 ERA=legacy
#   OAUTH=1 (0: no issuer and no access-token run, for a gateway built before OAuth support)
#   AUDIT=1 (0: the gateway's audit trail off, to measure what it costs)
#   HOLD_RATE=1 (0: for a gateway built before limits.initialize_rate, which the hold run must
#              lift: 50 sessions/s per tenant would refuse most of its 1,000 with 429)
#   GATEWAY=target/release/palisade (the gateway binary to start)
#   GW_PORT=18080 ADMIN_PORT=19090 OUT=<dir for the JSON results>
#   LOAD_CPUS / GW_CPUS / ECHO_CPUS: pin that process with `taskset -c` (unset: no pinning).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SESSIONS=${SESSIONS:-16}
RATE=${RATE:-2000}
HOLD=${HOLD:-1000}
ERA=${ERA:-legacy}
OAUTH=${OAUTH:-1}
AUDIT=${AUDIT:-1}
HOLD_RATE=${HOLD_RATE:-1}
GW_PORT=${GW_PORT:-18080}
ADMIN_PORT=${ADMIN_PORT:-19090}
OUT=${OUT:-$(mktemp -d /tmp/palisade-bench.XXXXXX)}
mkdir -p "$OUT"

BIN=$ROOT/target/release
GATEWAY=${GATEWAY:-$BIN/palisade}

log() { printf '== %s\n' "$*" >&2; }

pin() { # pin CPUS CMD...: run CMD under taskset when CPUS is non-empty
    local cpus=$1
    shift
    if [[ -n $cpus ]]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

# start_bg CPUS OUTFILE CMD...: start CMD in the background (its own pid in BG_PID, so that it
# can be watched and stopped), stdout and stderr to OUTFILE.
start_bg() {
    local cpus=$1 out=$2
    shift 2
    if [[ -n $cpus ]]; then
        taskset -c "$cpus" "$@" >"$out" 2>&1 &
    else
        "$@" >"$out" 2>&1 &
    fi
    BG_PID=$!
    STARTED+=("$BG_PID")
}

STARTED=()
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

# Room for HOLD sessions, each on its own connection, on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "building palisade-bench (release)"
cargo build -p palisade-bench --release

# load NAME ARGS...: one bench-load run, JSON to $OUT/NAME.json, a one-line summary to stderr.
load() {
    local name=$1
    shift
    log "$name: bench-load $*"
    if ! pin "${LOAD_CPUS:-}" "$BIN/bench-load" --json --era "$ERA" --sessions "$SESSIONS" \
        --warmup "$WARMUP" --duration "$DURATION" "$@" >"$OUT/$name.json"; then
        log "$name: bench-load reported a failure (see $OUT/$name.json)"
    fi
    python3 - "$OUT/$name.json" <<'EOF' >&2 || true
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except ValueError:
    sys.exit("   no result")
l = r.get("latency_us") or {}
print(f"   {r['calls']} calls, {r['errors']} errors, {r['throughput']:.0f}/s, "
      f"p50 {l.get('p50')} p99 {l.get('p99')} us")
EOF
}

# --- the HTTP upstream -----------------------------------------------------------------------
start_bg "${ECHO_CPUS:-}" "$OUT/echo.out" "$BIN/bench-echo" http --listen 127.0.0.1:0
ECHO_PID=$BG_PID
ECHO_URL=
for _ in $(seq 100); do
    ECHO_URL=$(sed -n 's/^listening on //p' "$OUT/echo.out")
    [[ -n $ECHO_URL ]] && break
    sleep 0.05
done
[[ -n $ECHO_URL ]] || { log "bench-echo did not start"; exit 1; }
log "bench-echo http: $ECHO_URL (pid $ECHO_PID)"

load http-direct-latency --url "$ECHO_URL" --rate "$RATE" --pid "upstream=$ECHO_PID"
load http-direct-saturated --url "$ECHO_URL" --pid "upstream=$ECHO_PID"

# --- the stdio upstream, driven directly ---------------------------------------------------------
load stdio-direct-latency --stdio-cmd "$BIN/bench-echo stdio" --rate "$RATE"
load stdio-direct-saturated --stdio-cmd "$BIN/bench-echo stdio"

# --- through the gateway ----------------------------------------------------------------------
port_busy() { (: >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [[ -x $GATEWAY ]]; then
    # Another gateway (a colleague's) may already hold the default ports: never measure that one.
    if port_busy "$GW_PORT"; then
        log "port $GW_PORT is in use; the gateway gets a free port instead"
        GW_PORT=$(free_port)
    fi
    if port_busy "$ADMIN_PORT"; then
        ADMIN_PORT=$(free_port)
    fi
    CONF=$(mktemp -d /tmp/palisade-bench-gw.XXXXXX)
    # The pepper: 64 hex characters, no trailing newline (the gateway trims one anyway).
    PEPPER=$(openssl rand -hex 32)
    printf '%s' "$PEPPER" >"$CONF/pepper"
    chmod 600 "$CONF/pepper"
    KEY_HTTP="pal_bench_$(openssl rand -hex 16)"
    KEY_STDIO="pal_benchstdio_$(openssl rand -hex 16)"
    # An OAuth issuer, so that the same tenant can also be reached with an access token.
    OAUTH_TABLE=
    if [[ $OAUTH == 1 ]]; then
        RESOURCE="http://127.0.0.1:$GW_PORT/mcp"
        start_bg "" "$OUT/idp.out" "$BIN/bench-idp" --tenant bench --resource "$RESOURCE"
        for _ in $(seq 100); do
            grep -q '^issuer=' "$OUT/idp.out" && break
            sleep 0.05
        done
        ISSUER=$(sed -n 's/^issuer=\([^ ]*\) .*/\1/p' "$OUT/idp.out")
        TOKEN=$(sed -n 's/.* token=//p' "$OUT/idp.out")
        [[ -n $ISSUER && -n $TOKEN ]] || { log "bench-idp did not start"; exit 1; }
        OAUTH_TABLE="[oauth]
resource = \"$RESOURCE\"
scopes_supported = [\"mcp\"]
required_scopes = [\"mcp\"]

[[oauth.issuers]]
issuer = \"$ISSUER\"
tenant_claim = \"/tenant_id\""
    fi
    hmac() { printf '%s' "$1" | openssl dgst -sha256 -hmac "$PEPPER" | awk '{print $NF}'; }
    cat >"$CONF/palisade.toml" <<EOF
[listen]
mcp = "127.0.0.1:$GW_PORT"
admin = "127.0.0.1:$ADMIN_PORT"

[auth]
pepper_file = "$CONF/pepper"

$OAUTH_TABLE

$([[ $AUDIT == 0 ]] && printf '[audit]\nenabled = false\n')

$([[ $HOLD_RATE == 1 ]] && printf '[limits]\ninitialize_rate = { per_second = 100000, burst = 100000 }\n')

[[servers]]
name = "echo"
protocol = "$ERA"
[servers.http]
url = "$ECHO_URL"

[[servers]]
name = "echostdio"
protocol = "$ERA"
[servers.stdio]
command = "$BIN/bench-echo"
args = ["stdio"]

[[tenants]]
id = "bench"
servers = ["echo"]
namespacing = false
keys = ["hmac-sha256:$(hmac "$KEY_HTTP")"]

[[tenants]]
id = "benchstdio"
servers = ["echostdio"]
namespacing = false
keys = ["hmac-sha256:$(hmac "$KEY_STDIO")"]
EOF
    start_bg "${GW_CPUS:-}" "$OUT/gateway.log" "$GATEWAY" serve --config "$CONF/palisade.toml"
    GW_PID=$BG_PID
    GW_URL="http://127.0.0.1:$GW_PORT/mcp"
    up=
    for _ in $(seq 200); do
        kill -0 "$GW_PID" 2>/dev/null || break
        if port_busy "$GW_PORT" && kill -0 "$GW_PID" 2>/dev/null; then
            up=1
            break
        fi
        sleep 0.05
    done
    if [[ -z $up ]]; then
        log "the gateway did not come up; its log:"
        cat "$OUT/gateway.log" >&2
        exit 1
    fi
    log "gateway: $GW_URL (pid $GW_PID), config $CONF/palisade.toml"

    load http-gateway-latency --url "$GW_URL" -H "Authorization: Bearer $KEY_HTTP" \
        --rate "$RATE" --pid "gateway=$GW_PID" --pid "upstream=$ECHO_PID"
    load http-gateway-saturated --url "$GW_URL" -H "Authorization: Bearer $KEY_HTTP" \
        --pid "gateway=$GW_PID" --pid "upstream=$ECHO_PID"
    if [[ $OAUTH == 1 ]]; then
        load http-gateway-jwt-latency --url "$GW_URL" -H "Authorization: Bearer $TOKEN" \
            --rate "$RATE" --pid "gateway=$GW_PID" --pid "upstream=$ECHO_PID"
    fi

    # One call starts the gateway's stdio upstream, so its pid can be watched too.
    "$BIN/bench-load" --url "$GW_URL" -H "Authorization: Bearer $KEY_STDIO" --era "$ERA" \
        --sessions 1 --calls 1 --warmup 0 >/dev/null || true
    STDIO_PIDS=()
    n=0
    for pid in $(pgrep -f -x "$BIN/bench-echo stdio" || true); do
        n=$((n + 1))
        STDIO_PIDS+=(--pid "upstream$n=$pid")
    done
    load stdio-gateway-latency --url "$GW_URL" -H "Authorization: Bearer $KEY_STDIO" \
        --rate "$RATE" --pid "gateway=$GW_PID" "${STDIO_PIDS[@]}"
    load stdio-gateway-saturated --url "$GW_URL" -H "Authorization: Bearer $KEY_STDIO" \
        --pid "gateway=$GW_PID" "${STDIO_PIDS[@]}"

    log "hold: $HOLD legacy sessions on the gateway"
    pin "${LOAD_CPUS:-}" "$BIN/bench-load" --json --url "$GW_URL" \
        -H "Authorization: Bearer $KEY_HTTP" --hold-sessions "$HOLD" --hold-secs 1 \
        --pid "gateway=$GW_PID" >"$OUT/hold.json" || log "hold: some sessions failed"
else
    log "no $GATEWAY: gateway rows stay pending"
fi

log "auth: bench-auth (in process, 1000 tenants)"
pin "${GW_CPUS:-}" "$BIN/bench-auth" >"$OUT/auth.json" || log "auth: bench-auth failed"

python3 "$ROOT/bench/report.py" "$OUT" | tee "$OUT/results.md"
log "raw results in $OUT"
