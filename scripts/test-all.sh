#!/usr/bin/env bash
# Every test suite of libmoe, one after the other, then one total line.
#
#   unit   the C test runner (make test): core, router, CPU, formats against
#          ml_dtypes/gguf, model files against safetensors/gguf writers
#   asan   the same suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   fuzz   each fuzz target for FUZZ_SECONDS (default 60) under ASan + UBSan
#   install  make install into a staging prefix, build and run examples/ with pkg-config
#   ep     multi-rank tests under mpirun (CPU ranks)
#
# Each suite's log goes to build/logs/SUITE.log. The last line is
# "N passed, M failed" summed over the suites; exit status 1 if any failed.
set -u
cd "$(dirname "$0")/.."
mkdir -p build/logs
total_pass=0
total_fail=0
total_skip=0

run_suite() {
    local name=$1; shift
    echo "=== $name: $*"
    local start=$SECONDS
    "$@" 2>&1 | tee "build/logs/$name.log"
    local rc=${PIPESTATUS[0]}
    local line
    line=$(grep -E '^([A-Za-z]+: )?[0-9]+ passed, [0-9]+ failed' "build/logs/$name.log" | tail -n 1)
    local p=0 f=0 s=0
    if [ -n "$line" ]; then
        p=$(sed -E 's/^([A-Za-z]+: )?([0-9]+) passed.*/\2/' <<<"$line")
        f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
        s=$(sed -nE 's/.* ([0-9]+) skipped.*/\1/p' <<<"$line")
        s=${s:-0}
    fi
    # A suite that failed without saying how counts as one failure.
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    echo "=== $name: $p passed, $f failed, $s skipped ($((SECONDS - start)) s, exit $rc)"
    total_pass=$((total_pass + p))
    total_fail=$((total_fail + f))
    total_skip=$((total_skip + s))
}

bash scripts/deps.sh || { echo "dependency installation failed"; echo "0 passed, 1 failed"; exit 1; }
run_suite unit make -j2 test
run_suite asan make -j2 test-asan
run_suite install scripts/install-check.sh
if grep -q '^fuzz:' Makefile; then run_suite fuzz make fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-60}"; fi
if [ -x scripts/ep-test.sh ]; then run_suite ep scripts/ep-test.sh; fi

echo "total: $total_pass passed, $total_fail failed, $total_skip skipped"
[ "$total_fail" -eq 0 ]
