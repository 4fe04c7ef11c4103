#!/usr/bin/env bash
# deploy/check.sh: checks the deployment files offline (no cluster runs here): the Kubernetes
# manifests against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail),
# the ServiceMonitor against the Prometheus Operator's schema (check/servicemonitor.mjs), the
# ConfigMap's palisade.toml with `palisade check`, and the HAProxy example with `haproxy -c`.
# What this does not show: that a cluster runs them (the probes, the rolling update and the
# disruption budget are exercised by the fleet test with HAProxy instead).
#
# Environment: PALISADE_BIN_DIR [target/debug], DEPLOY_CHECK_VENV [target/deploy-check-venv]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${PALISADE_BIN_DIR:-$root/target/debug}
venv=${DEPLOY_CHECK_VENV:-$root/target/deploy-check-venv}

if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
manifests=()
for f in deploy/kubernetes/*.yaml; do
    [ "$(basename "$f")" = servicemonitor.yaml ] || manifests+=("$f")
done
"$venv/bin/kubernetes-validate" --strict --quiet "${manifests[@]}"
echo "kubernetes manifests: valid (${#manifests[@]} files)"

(cd deploy/check && npm ci --silent --no-audit --no-fund && node servicemonitor.mjs ../kubernetes/servicemonitor.yaml)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$venv/bin/python" - deploy/kubernetes/configmap.yaml "$tmp/palisade.toml" <<'PY'
import sys
import yaml
with open(sys.argv[1]) as f:
    config = yaml.safe_load(f)["data"]["palisade.toml"]
with open(sys.argv[2], "w") as f:
    f.write(config)
PY
"$bin/palisade" check --config "$tmp/palisade.toml"

haproxy -c -q -f deploy/haproxy/haproxy.cfg
echo "deploy/haproxy/haproxy.cfg: valid"
