# Sourced by the test scripts: makes (or reuses) the virtualenv with the official Python MCP SDK
# and the other packages of tests/clients/requirements.txt, recreated when that file changes.
# Sets PALISADE_PYTHON to its interpreter.
palisade_venv() {
    local dir
    dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    local venv="$dir/.venv"
    local stamp="$venv/.requirements.sha256"
    local want
    want="$(sha256sum "$dir/requirements.txt" | cut -d' ' -f1)"
    if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        echo "== creating $venv"
        python3 -m venv "$venv" || return 1
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$dir/requirements.txt" || return 1
        echo "$want" > "$stamp"
    fi
    export PALISADE_PYTHON="$venv/bin/python"
}
