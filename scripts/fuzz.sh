#!/usr/bin/env bash
# Runs every fuzz target in turn, SECONDS each (default 60): the core's decoders (core/fuzz),
# the terminal's (terminal/fuzz: its configuration, the status socket's requests, outbox
# recovery) and central's control protocol (cli/fuzz). Each starts from the seeds kept in
# <crate>/fuzz/seeds/<target> and the corpus grown by earlier runs (<crate>/fuzz/corpus/<target>,
# not committed). Crashing inputs land in <crate>/fuzz/artifacts/<target>; the script ends
# non-zero if any target found one.
#
#   ./scripts/fuzz.sh [SECONDS] [TARGET...]      # SANITIZER=address for AddressSanitizer
#
# cargo-fuzz needs nightly flags: the stable compiler accepts them with RUSTC_BOOTSTRAP=1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-60}"
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
sanitizer="${SANITIZER:-none}"
wanted=("$@")
failed=()
printf '%-14s %14s %10s %s\n' TARGET EXECUTIONS EXEC/S RESULT
for crate in core terminal cli; do
    cd "$root/$crate/fuzz"
    mapfile -t targets < <(cargo fuzz list)
    for t in "${targets[@]}"; do
        if [ ${#wanted[@]} -gt 0 ] && ! printf '%s\n' "${wanted[@]}" | grep -qx "$t"; then
            continue
        fi
        mkdir -p "corpus/$t" "seeds/$t"
        log="$(mktemp)"
        if cargo fuzz run -s "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
            -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
            result=ok
        else
            result="FAILED (see $crate/fuzz/artifacts/$t; log $log)"
            failed+=("$t")
        fi
        execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)"
        rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)"
        printf '%-14s %14s %10s %s\n' "$t" "$execs" "$rate" "$result"
        [ "$result" = ok ] && rm -f "$log"
    done
done
[ ${#failed[@]} -eq 0 ] || { echo "crashes in: ${failed[*]}" >&2; exit 1; }
