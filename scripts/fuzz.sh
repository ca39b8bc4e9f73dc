#!/usr/bin/env bash
# Runs every fuzz target of core/fuzz in turn, SECONDS each (default 60), starting from the
# seeds kept in core/fuzz/seeds/<target> and the corpus grown by earlier runs
# (core/fuzz/corpus/<target>, not committed). Crashing inputs land in core/fuzz/artifacts/;
# the script ends non-zero if any target found one.
#
#   ./scripts/fuzz.sh [SECONDS] [TARGET...]      # SANITIZER=address for AddressSanitizer
#
# cargo-fuzz needs nightly flags: the stable compiler accepts them with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/../core/fuzz"
secs="${1:-60}"
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
sanitizer="${SANITIZER:-none}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
failed=()
printf '%-12s %14s %10s %s\n' TARGET EXECUTIONS EXEC/S RESULT
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    log="$(mktemp)"
    if cargo fuzz run -s "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
        result=ok
    else
        result="FAILED (see core/fuzz/artifacts/$t; log $log)"
        failed+=("$t")
    fi
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)"
    rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)"
    printf '%-12s %14s %10s %s\n' "$t" "$execs" "$rate" "$result"
    [ "$result" = ok ] && rm -f "$log"
done
[ ${#failed[@]} -eq 0 ] || { echo "crashes in: ${failed[*]}" >&2; exit 1; }
