# Sourced by the test runners: exports PALISADE_BIN_DIR (default: this checkout's target/debug)
# and stops with a message saying what to build if `palisade` or `palisade-testkit` is missing.
PALISADE_BIN_DIR="${PALISADE_BIN_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/debug}"
export PALISADE_BIN_DIR
for bin in palisade palisade-testkit; do
  if [[ ! -x "$PALISADE_BIN_DIR/$bin" ]]; then
    echo "missing $PALISADE_BIN_DIR/$bin: run 'cargo build -p palisade -p testkit'" >&2
    exit 2
  fi
done
