#!/bin/sh
# gpu-check.sh - the CUDA backend's check on a machine with an NVIDIA GPU:
#   1. build with CUDA (nvcc on PATH) and NCCL when found
#   2. measure the card's ceilings (read bandwidth, dense bf16 and fp8 GEMM)
#      with PyTorch when it is installed
#   3. run the GPU tests (build/moe-test -o cuda)
#   4. run one test of each kernel family under compute-sanitizer memcheck
#      and racecheck, all ten processes at once
#   5. run build/bench-ep-nccl (expert parallel over NCCL on every GPU) and
#      the benchmark grid of TARGETS.md (moe bench --backend cuda), and
#      print the table
# Everything is logged under $OUT (default build/gpu-check); the last table
# is gpu-check.md there, to be copied to bench/results/ with the date and card.
#
#   scripts/gpu-check.sh [--no-bench] [--no-sanitizer] [--bench-args "..."]
set -u
OUT=${OUT:-build/gpu-check}
mkdir -p "$OUT"
BENCH=1 SAN=1 BENCH_ARGS=""
while [ $# -gt 0 ]; do
    case "$1" in
    --no-bench) BENCH=0 ;;
    --no-sanitizer) SAN=0 ;;
    --bench-args) shift; BENCH_ARGS="$1" ;;
    *) echo "usage: $0 [--no-bench] [--no-sanitizer] [--bench-args ARGS]" >&2; exit 2 ;;
    esac
    shift
done
JOBS=$(nproc 2>/dev/null || echo 4)
status=0

echo "== build" | tee "$OUT/build.log"
# NCCL: the system's, or the nvidia-nccl wheel next to PyTorch (no libnccl.so there)
NCCL_ARGS=""
NH=$(python3 -c "import nvidia.nccl as n; print(list(n.__path__)[0])" 2>/dev/null)
if [ -n "$NH" ] && [ -e "$NH/include/nccl.h" ]; then
    NCCL_ARGS="NCCL_HOME=$NH"
    [ -e "$NH/lib/libnccl.so" ] || NCCL_ARGS="$NCCL_ARGS NCCL_LIB=-l:libnccl.so.2"
fi
export NCCL_NVLS_ENABLE=0
# shellcheck disable=SC2086
if ! make -k -j"$JOBS" NO_MPI=1 $NCCL_ARGS build/moe-test build/moe bench >>"$OUT/build.log" 2>&1; then
    echo "build failed (tail of $OUT/build.log):"; tail -30 "$OUT/build.log"
    [ -x build/moe-test ] || exit 1
    status=1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv \
    >"$OUT/gpu.txt" 2>&1
CARD=$(sed -n 2p "$OUT/gpu.txt" | cut -d, -f1)
echo "card: $CARD"

echo "== ceilings"
BW="" PB="" PF=""
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    python3 - >"$OUT/ceilings.txt" 2>&1 <<'PY'
import torch
def t(fn, n=10):
    for _ in range(3): fn()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(n):
        s.record(); fn(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    ts.sort(); return ts[len(ts) // 2] / 1e3
x = torch.randn(2 << 30, device="cuda", dtype=torch.bfloat16)      # 4 GiB
bw = x.numel() * 2 / t(lambda: x.sum(dtype=torch.float32)) / 1e9
del x
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
bf = 2 * n**3 / t(lambda: a @ b) / 1e12
fp = 0.0
try:
    a8 = a.to(torch.float8_e4m3fn); b8 = b.t().contiguous().to(torch.float8_e4m3fn).t()
    one = torch.ones((), device="cuda")
    fp = 2 * n**3 / t(lambda: torch._scaled_mm(a8, b8, one, one, out_dtype=torch.bfloat16)) / 1e12
except Exception as ex:
    print("fp8 gemm failed:", ex)
print(f"BW {bw:.0f}\nBF16 {bf:.0f}\nFP8 {fp:.0f}")
PY
    BW=$(sed -n 's/^BW //p' "$OUT/ceilings.txt"); PB=$(sed -n 's/^BF16 //p' "$OUT/ceilings.txt")
    PF=$(sed -n 's/^FP8 //p' "$OUT/ceilings.txt")
    cat "$OUT/ceilings.txt"
else
    echo "no PyTorch: bench-cuda measures a device copy and uses TARGETS.md's peaks"
fi

echo "== GPU tests"
build/moe-test -o cuda >"$OUT/tests.log" 2>&1 || status=1
tail -15 "$OUT/tests.log"

if [ $SAN = 1 ] && command -v compute-sanitizer >/dev/null; then
    echo "== compute-sanitizer"
    mkdir -p "$OUT/sanitizer"
    # one test per kernel family: the fp8 tiles (the warp-specialized W13
    # included), the bf16 decode and prefill tiles (the persistent kernel),
    # the shared-experts stream, routing, and the expert-parallel path
    # all runs at once, one process each: one after another they took over
    # 500 s (racecheck of the persistent kernels), in parallel 131 s
    tests="cuda_layer_fp8_block cuda_layer_bf16_shape_grid cuda_layer_shared cuda_route
           cuda_ep_bitwise"
    for tool in memcheck racecheck; do
        for t in $tests; do
            { compute-sanitizer --tool $tool --error-exitcode 3 build/moe-test -o "$t" \
                  >"$OUT/sanitizer/$tool-$t.log" 2>&1
              echo $? >"$OUT/sanitizer/$tool-$t.rc"; } &
        done
    done
    wait
    for tool in memcheck racecheck; do
        rcs=""
        for t in $tests; do
            r=$(cat "$OUT/sanitizer/$tool-$t.rc" 2>/dev/null || echo missing)
            rcs="$rcs $t=$r"
            [ "$r" = 0 ] || status=1
        done
        echo "$tool rc:$rcs"
        grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$OUT"/sanitizer/$tool-*.log
    done
fi

if [ $BENCH = 1 ] && [ -x build/bench-ep-nccl ]; then
    echo "== expert parallel over NCCL, every GPU of this host"
    build/bench-ep-nccl >"$OUT/bench-ep-nccl.txt" 2>&1 || status=1
    tail -3 "$OUT/bench-ep-nccl.txt"
fi

if [ $BENCH = 1 ]; then
    echo "== bench"
    # shellcheck disable=SC2086
    build/moe bench --backend cuda ${BW:+--bw $BW} ${PB:+--bf16-peak $PB} ${PF:+--fp8-peak $PF} \
        $BENCH_ARGS >"$OUT/bench.txt" 2>&1 || status=1
    {
        echo "# CUDA backend benchmark, $(date -u +%Y-%m-%d), $CARD"
        echo
        echo "One forward of the whole layer (routing from random logits, grouping, both GEMMs,"
        echo "activation, combine), CUDA graph replays, fresh routing per replay, median."
        echo
        cat "$OUT/bench.txt"
    } >"$OUT/gpu-check.md"
    cat "$OUT/gpu-check.md"
fi
exit $status
