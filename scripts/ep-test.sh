#!/usr/bin/env bash
# The multi-rank tests of the parallel experts: CPU ranks under mpirun on this
# machine (--oversubscribe: more ranks than cores is fine, the tests are small).
#
#   ep-equal   expert parallel is bitwise the single-rank layer, np 1..4
#   tp-equal   tensor-parallel experts match one rank (f32 rounding), np 2..4
#   migrate    EPLB weight migration, np 2..4
#   io-ep-model real model files split over ranks, np 2, 3 (with make testdata)
#   faults     SIGKILL of one rank before / mid-dispatch / after dispatch /
#              mid-combine, EP_FAULT_TRIALS (20) trials each at np 2 and 4:
#              every survivor must return MOE_ERR_PEER_DEAD or MOE_ERR_TIMEOUT
#              within deadline + 5 s; a silent rank (timeout); malformed
#              messages (MOE_ERR_PROTOCOL); a rank slow by half the deadline
#              for 200 steps (no false alarm); 10000 fault-free steps with
#              varying token counts, each checked bitwise
#
# Open MPI 4 kills the whole job when one rank dies unless mpirun runs with
# --enable-recovery; with it the survivors keep running and report.
# Each check prints "ok NAME" or "FAIL NAME"; the last line is
# "N passed, M failed". Logs of failing runs go to build/logs/ep/.
set -u
cd "$(dirname "$0")/.."
TRIALS=${EP_FAULT_TRIALS:-20}
DEADLINE_MS=${EP_DEADLINE_MS:-1000}
LOGS=build/logs/ep
mkdir -p "$LOGS"
pass=0
fail=0
ok()  { echo "ok   $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }

bash scripts/ep-deps.sh >/dev/null 2>&1 || true
if ! command -v mpirun >/dev/null 2>&1; then
    echo "FAIL Open MPI is not installed (scripts/ep-deps.sh failed)"
    echo "0 passed, 1 failed"
    exit 1
fi
if ! make -s -j2 mpi-tests >"$LOGS/build.log" 2>&1; then
    cat "$LOGS/build.log"
    echo "FAIL building the multi-rank tests"
    echo "0 passed, 1 failed"
    exit 1
fi
MPIRUN=(mpirun --oversubscribe --allow-run-as-root --enable-recovery --mca btl self,vader)
B=build/tests/mpi

# A program whose rank 0 prints ok/FAIL lines per case.
cases() {
    local np=$1; shift
    local log="$LOGS/$(basename "$1")-np$np.log"
    timeout 300 "${MPIRUN[@]}" -np "$np" "$@" >"$log" 2>&1
    local rc=$?
    local p f
    p=$(grep -c '^ok ' "$log")
    f=$(grep -c '^FAIL ' "$log")
    grep -E '^(ok|FAIL) |^  migrate' "$log"
    grep -E '^  rank ' "$log" | head -5
    pass=$((pass + p))
    fail=$((fail + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then bad "$(basename "$1") np $np exited $rc (see $log)"; fi
}

for np in 1 2 3 4; do cases "$np" $B/ep-equal; done
for np in 2 3 4; do cases "$np" $B/tp-equal; done
if [ -x $B/ep-migrate ]; then for np in 2 3 4; do cases "$np" $B/ep-migrate; done; fi
# Real model files under expert parallelism (tests/mpi/io-ep-model.c, from the
# model-file work): needs the generated test data (make testdata).
if [ -x $B/io-ep-model ] && [ -d build/testdata/models ]; then
    for np in 2 3; do cases "$np" $B/io-ep-model build/testdata; done
fi

# One fault trial: all np-1 survivors must report "RESULT ok" (each writes
# its line to a file of its own: mpirun need not forward the output of
# processes that leave with _exit).
trial() {
    local np=$1 point=$2 victim=$3 step=$4 log=$5 dir
    dir=$(mktemp -d)
    EP_FAULT_DIR=$dir timeout $((3 * DEADLINE_MS / 1000 + 20)) "${MPIRUN[@]}" -x EP_FAULT_DIR \
        -np "$np" $B/ep-fault "$point" "$DEADLINE_MS" "$victim" "$step" >"$log" 2>&1
    cat "$dir"/rank-* >>"$log" 2>/dev/null
    local n_ok
    n_ok=$(cat "$dir"/rank-* 2>/dev/null | grep -c '^RESULT ok')
    rm -rf "$dir"
    [ "$n_ok" -eq $((np - 1)) ] && ! grep -q 'RESULT FAIL' "$log"
}

faults() {
    local np=$1 point=$2 n=$3 good=0 worst=0 t
    for t in $(seq 1 "$n"); do
        local log="$LOGS/fault-$point-np$np-$t.log"
        if trial "$np" "$point" $((t % np)) $((1 + t % 2)) "$log"; then
            good=$((good + 1))
            t=$(grep '^RESULT ok' "$log" | grep -o 'after [0-9.]* s' |
                awk '{ if ($2 > m) m = $2 } END { print m + 0 }')
            worst=$(awk -v a="$worst" -v b="$t" 'BEGIN { print (b > a) ? b : a }')
            rm -f "$log"
        fi
    done
    if [ "$good" -eq "$n" ]; then ok "fault $point np $np: $good/$n trials, slowest survivor ${worst} s"
    else bad "fault $point np $np: $good/$n trials (logs in $LOGS)"; fi
}

for np in 2 4; do
    for point in before mid-dispatch after-dispatch mid-combine; do faults "$np" "$point" "$TRIALS"; done
    faults "$np" silent 2
    for point in bad-magic big-count bad-expert long-rows bad-slot bad-io; do faults "$np" "$point" 2; done
done

# No false alarm: rank 1 sleeps half the deadline before every 10th of 200 forwards.
for np in 2 4; do
    log="$LOGS/slow-np$np.log"
    timeout 120 "${MPIRUN[@]}" -np "$np" $B/ep-fault slow "$DEADLINE_MS" 1 0 200 >"$log" 2>&1
    if [ "$(grep -o 'RESULT ok' "$log" | wc -l)" -eq "$np" ]; then ok "slow rank np $np: 200 steps, no false alarm"
    else bad "slow rank np $np (see $log)"; fi
done

# Fault-free randomized steps: token counts 0..8 per rank and step, bitwise
# checked every step (no token lost or duplicated).
log="$LOGS/steps-np3.log"
timeout 120 "${MPIRUN[@]}" -np 3 $B/ep-fault none "$DEADLINE_MS" 0 0 10000 >"$log" 2>&1
if [ "$(grep -o 'RESULT ok' "$log" | wc -l)" -eq 3 ]; then ok "10000 fault-free steps np 3, all bitwise"
else bad "fault-free steps np 3 (see $log)"; fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
