#!/usr/bin/env bash
# Runs the external MCP client tests against the Palisade gateway:
#   1. Python: the official `mcp` SDK (2.3.0), both protocol eras (pytest);
#   2. TypeScript: the official `@modelcontextprotocol/sdk` (1.32.2), legacy era, and
#      `@modelcontextprotocol/client` (2.4.0), 2026-07-28 era (node --test).
# Besides our own test upstream (palisade-testkit), both run against upstreams we did not write:
# the fixture servers of tests/servers on the official Python and TypeScript SDKs
# (test_third_party.py, ts/test/third_party.test.mjs).
# Binaries: $PALISADE_BIN_DIR (default <repo>/target/debug) must hold `palisade`
# and `palisade-testkit` (cargo build -p palisade -p testkit).
# Exits non-zero if any test fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../bins.sh"

# Python virtualenv with the official SDK, recreated when requirements.txt changes.
source "$here/venv.sh"
palisade_venv
venv="$here/.venv"

# Node dependencies, from the lockfiles: the clients, and the TypeScript fixture server.
if [[ ! -d "$here/ts/node_modules/@modelcontextprotocol/sdk" || ! -d "$here/ts/node_modules/@modelcontextprotocol/client" ]]; then
  echo "== npm ci in $here/ts"
  (cd "$here/ts" && npm ci --no-audit --no-fund --loglevel=error)
fi
servers="$(cd "$here/../servers" && pwd)"
if [[ ! -d "$servers/ts/node_modules/@modelcontextprotocol/server" ]]; then
  echo "== npm ci in $servers/ts"
  (cd "$servers/ts" && npm ci --no-audit --no-fund --loglevel=error --engine-strict=false)
fi

# MCP servers from the ecosystem (n8n-mcp, server-memory, server-filesystem, mcp-server-time) for
# test_ecosystem.py: npm packages and a virtualenv of their own, from their lockfiles.
bash "$here/ecosystem/install.sh"

status=0
echo "== Python SDK (mcp 2.3.0): legacy and 2026-07-28 eras"
(cd "$here" && "$venv/bin/python" -m pytest -p no:cacheprovider -v "$@") || status=1

echo "== TypeScript SDKs (@modelcontextprotocol/sdk 1.32.2: legacy era; @modelcontextprotocol/client 2.4.0: 2026-07-28 era)"
(cd "$here/ts" && node --test test/gateway.test.mjs test/third_party.test.mjs) || status=1

if [[ $status -ne 0 ]]; then
  echo "== client tests FAILED" >&2
else
  echo "== client tests passed"
fi
exit $status
