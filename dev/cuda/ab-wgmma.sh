#!/bin/sh
# ab-wgmma.sh - the prefill rows of `moe bench --backend cuda` with the
# grouped GEMM's wgmma inner loop (the tree as it is) and with mma.sync (a
# copy built with MOE_CUDA_NO_WGMMA), binaries alternating, after the GPU
# tests. On a GPU machine:   OUT=dir dev/cuda/ab-wgmma.sh [tokens]
set -u
OUT=${OUT:-build/ab-wgmma}
TOKENS=${1:-512,4096,16384}
mkdir -p "$OUT"
J=$(nproc)
d=/tmp/moe-nowg
rm -rf "$d" && mkdir -p "$d" && cp -r Makefile include src tools tests "$d"/
sed -i '1i #define MOE_CUDA_NO_WGMMA 1' "$d/src/cuda/cuda.cu"
(cd "$d" && make -j"$J" NO_MPI=1 NO_NCCL=1 build/moe >"$OUT/build-mma.log" 2>&1 ||
    tail "$OUT/build-mma.log") &
make -j"$J" NO_MPI=1 NO_NCCL=1 build/moe-test build/moe >"$OUT/build.log" 2>&1 ||
    tail -30 "$OUT/build.log"
wait
build/moe-test -o cuda >"$OUT/test-cuda.log" 2>&1
tail -3 "$OUT/test-cuda.log"
ROWS=${ROWS:-"qwen3-30b-a3b:bf16 mixtral-8x7b:bf16 qwen3-30b-a3b:fp8-block deepseek-v3:fp8-block"}
for pf in $ROWS; do
    set -- $(echo "$pf" | tr : ' ')
    for bin in build/moe "$d/build/moe"; do
        echo "== $bin $1 $2"
        "$bin" bench --backend cuda --preset "$1" --format "$2" --tokens "$TOKENS" --bw 4100 2>&1 |
            grep -E "^\|" | tail -n +3
    done
done 2>&1 | tee "$OUT/bench.log"
