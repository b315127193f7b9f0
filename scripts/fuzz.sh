#!/usr/bin/env bash
# Runs the fuzz targets (docs/fuzzing.md) with cargo-fuzz, each for SECONDS (default 60), and
# prints each one's executions. An input that fails is copied to fuzz/regressions/<target>/, where
# the normal test run replays it (fuzz/tests/regressions.rs) once it is fixed.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      targets: restore decrypt manifest homeserver_yaml relation
#
# cargo-fuzz wants a nightly compiler; RUSTC_BOOTSTRAP lets the machine's stable one stand in.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(restore decrypt manifest homeserver_yaml relation)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cd "$repo/fuzz"
fuzz_dir=(--fuzz-dir targets)
status=0
for t in "${targets[@]}"; do
    mkdir -p "targets/corpus/$t" "targets/artifacts/$t"
    log=$(mktemp)
    # -rss_limit_mb: any input that needs more memory than this is a finding (bounded memory)
    if cargo fuzz run "${fuzz_dir[@]}" --sanitizer none "$t" "targets/corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=512 -max_len=1048576 -timeout=30 \
        -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        status=1
        mkdir -p "regressions/$t"
        for a in "targets/artifacts/$t"/*; do [ -f "$a" ] && cp "$a" "regressions/$t/"; done
        tail -40 "$log"
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    printf '%-16s %-6s %12s executions in %ss, coverage %s\n' "$t" "$result" "${runs:-?}" "$seconds" "${cov:-?}"
    rm -f "$log"
done
exit $status
