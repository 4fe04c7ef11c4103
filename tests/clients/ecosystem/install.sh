#!/usr/bin/env bash
# Installs the ecosystem MCP servers that tests/clients/test_ecosystem.py runs behind the gateway
# (tests/clients/run.sh calls this; safe to run again: it reinstalls only what changed):
#   - npm: n8n-mcp, @modelcontextprotocol/server-memory and @modelcontextprotocol/server-filesystem,
#     from package-lock.json, into node_modules/. `--omit=optional` skips n8n-mcp's optional
#     better-sqlite3, a native build of about a minute; n8n-mcp then uses sql.js (see the test).
#   - Python: mcp-server-time from requirements.txt, in its own virtualenv .venv/ (apart from the
#     client tests' tests/clients/.venv, so the server's dependencies never change the client's).
# Each is redone when its lockfile or requirements file changes (a hash stamp in the install).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

stamp_of() { sha256sum "$1" | cut -d' ' -f1; }

want="$(stamp_of "$here/package-lock.json")"
if [[ "$(cat "$here/node_modules/.palisade-lock.sha256" 2>/dev/null)" != "$want" ]]; then
  echo "== npm ci in $here"
  (cd "$here" && npm ci --omit=optional --no-audit --no-fund --loglevel=error)
  echo "$want" > "$here/node_modules/.palisade-lock.sha256"
fi

want="$(stamp_of "$here/requirements.txt")"
if [[ ! -x "$here/.venv/bin/mcp-server-time" || "$(cat "$here/.venv/.requirements.sha256" 2>/dev/null)" != "$want" ]]; then
  echo "== creating $here/.venv"
  rm -rf "$here/.venv"
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" > "$here/.venv/.requirements.sha256"
fi
