#!/usr/bin/env bash
# Builds every fuzz target and runs each for N seconds, one after the other.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     (default: 20 s each, every target)
#
# Stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags); installs cargo-fuzz if it
# is missing. Each run uses -rss_limit_mb=2048 (also the per-allocation limit) and -timeout=10,
# so unbounded allocation and hangs fail like crashes. New inputs go to fuzz/work/corpus/<target>
# (not committed); the committed seeds in fuzz/corpus/<target> are only read. A failing input is
# saved under fuzz/artifacts/<target>/. Exits non-zero if any target failed.
#
# Environment: CARGO_BUILD_JOBS (build parallelism), FUZZ_EXTRA_ARGS (more libFuzzer flags,
# e.g. -runs=10000000 instead of a time limit), FUZZ_NO_BUILD=1 (reuse the last build).
set -uo pipefail
cd "$(dirname "$0")"

seconds=${1:-20}
shift || true
export RUSTC_BOOTSTRAP=1
# Sanitizer builds must not inherit flags meant for the main build.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked || exit 1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

echo "toolchain: $(rustc --version); cargo-fuzz: $(cargo fuzz --version)"
# -O: optimized; -a: with debug assertions and overflow checks; AddressSanitizer (default).
# FUZZ_PROFILE=debug (CI's short runs) builds unoptimized instead, which compiles much faster.
if [ "${FUZZ_PROFILE:-release}" = debug ]; then
    build_args=(--dev)
    bin_dir=target/x86_64-unknown-linux-gnu/debug
else
    build_args=(-O -a)
    bin_dir=target/x86_64-unknown-linux-gnu/release
fi
if [ "${FUZZ_NO_BUILD:-0}" != 1 ]; then
    cargo fuzz build "${build_args[@]}" || exit 1
fi

dict_for() {
    case "$1" in
        jsonrpc_message | param_headers | request_state | policy_glob | audit_verify | audit_chain | jwks_parse)
            echo dict/json.dict ;;
        jwt_verify | sql_assertion) echo "dict/json.dict dict/token.dict" ;;
        sse_decoder) echo dict/sse.dict ;;
        sql_statement) echo dict/sql.dict ;;
        config_toml) echo "dict/toml.dict dict/json.dict" ;;
        session_id | sealed_session_id | last_event_id | list_cursor | bearer_header) echo dict/ids.dict ;;
    esac
}

# Per-target libFuzzer flags. jwt_verify: the verifier keeps a (bounded) cache of verified
# tokens, so libFuzzer's per-input leak check runs a full LeakSanitizer scan on most inputs and
# costs 8x the throughput; growth is still caught by -rss_limit_mb.
flags_for() {
    case "$1" in
        jwt_verify) echo "-detect_leaks=0" ;;
    esac
}

mkdir -p work/logs work/dict
results=work/results.tsv
printf 'target\tseconds\texecutions\texec_per_s\tnew_units\tpeak_rss_mb\tstatus\n' >"$results"
failed=()
for t in "${targets[@]}"; do
    mkdir -p "work/corpus/$t" "artifacts/$t" "corpus/$t"
    dict=work/dict/$t.dict
    : >"$dict"
    for d in $(dict_for "$t"); do cat "$d" >>"$dict"; done
    dict_arg=()
    [ -s "$dict" ] && dict_arg=("-dict=$dict")
    log=work/logs/$t.log
    echo "=== $t (${seconds} s) ==="
    # shellcheck disable=SC2086
    "$bin_dir/$t" "work/corpus/$t" "corpus/$t" \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 "${dict_arg[@]}" \
        $(flags_for "$t") ${FUZZ_EXTRA_ARGS:-} >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    units=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    status=ok
    if [ $rc -ne 0 ]; then
        status="FAILED (exit $rc)"
        failed+=("$t")
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written|==ERROR' "$log" | head -20
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$seconds" "${execs:-?}" "${rate:-?}" \
        "${units:-?}" "${rss:-?}" "$status" >>"$results"
    echo "=== $t: $status, ${execs:-?} executions, ${rate:-?} exec/s ==="
done

echo
column -t -s $'\t' "$results" 2>/dev/null || cat "$results"
if [ ${#failed[@]} -ne 0 ]; then
    echo "failed: ${failed[*]} (logs in fuzz/work/logs, inputs in fuzz/artifacts)"
    exit 1
fi
