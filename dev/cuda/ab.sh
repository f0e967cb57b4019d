#!/bin/sh
# ab.sh - compares builds of the CUDA backend on a GPU machine: the tree as
# it is (v0) and variants of it changed by one sed expression each, every
# one built in its own copy under /tmp, in parallel; then the GPU tests
# (build/moe-test -o cuda) of the builds named in TESTS, and rows of `moe
# bench --backend cuda`, the binaries alternating row by row.
#   OUT=dir VARIANTS="..." ROWS="preset:format ..." TESTS="v0 ..." dev/cuda/ab.sh [tokens]
# VARIANTS: one per line, "name|file|sed expression", for example
#   mma|src/cuda/cuda.cu|1i #define MOE_CUDA_NO_WGMMA 1
#   d4|src/cuda/grouped-gemm-fp8.cu|s/FP8, 16, 32, 4, 1, 2,/FP8, 16, 32, 4, 1, 4,/g
# BASE=file.tar adds a variant "base" built from that tree, made here with
#   git archive -o base.tar REV Makefile include src tools tests
# (an untracked file of the checkout travels to the GPU machine).
set -u
OUT=${OUT:-build/ab}
TOKENS=${1:-1,8,64,512,4096}
VARIANTS=${VARIANTS-"mma|src/cuda/cuda.cu|1i #define MOE_CUDA_NO_WGMMA 1"}
ROWS=${ROWS:-"qwen3-30b-a3b:bf16 mixtral-8x7b:bf16 qwen3-30b-a3b:fp8-block deepseek-v3:fp8-block"}
TESTS=${TESTS:-v0}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) # (the builds write their logs from their copies)
J=$(nproc)
bin_of() { echo "/tmp/moe-$1/build"; }

# Every build, v0 too, in a copy under /tmp: the checkout's build/ keeps
# what its own make built (built here with NO_NCCL, it had left a later
# scripts/gpu-check.sh on the same machine with a library without NCCL).
printf 'v0||\n%s\n' "$VARIANTS" | {
while IFS='|' read -r name file expr; do
    [ -n "$name" ] || continue
    d=/tmp/moe-$name
    rm -rf "$d" && mkdir -p "$d" && cp -r Makefile include src tools tests "$d"/
    [ -z "$file" ] || sed -i "$expr" "$d/$file"
    (cd "$d" && make -j"$J" NO_MPI=1 NO_NCCL=1 build/moe-test build/moe \
        >"$OUT/build-$name.log" 2>&1 || tail -30 "$OUT/build-$name.log") &
done
if [ -n "${BASE:-}" ]; then
    rm -rf /tmp/moe-base && mkdir -p /tmp/moe-base && tar -xf "$BASE" -C /tmp/moe-base
    (cd /tmp/moe-base && make -j"$J" NO_MPI=1 NO_NCCL=1 build/moe-test build/moe \
        >"$OUT/build-base.log" 2>&1 || tail -30 "$OUT/build-base.log") &
fi
wait # inside the pipeline's subshell, whose children the builds are
}
names="v0 $(printf '%s\n' "$VARIANTS" | cut -d'|' -f1)${BASE:+ base}"
for v in $TESTS; do
    b=$(bin_of "$v")
    (cd "$(dirname "$b")" && build/moe-test -o cuda) >"$OUT/test-$v.log" 2>&1
    echo "tests $v: $(tail -1 "$OUT/test-$v.log")"
    grep -A1 '^FAIL\|CHECK' "$OUT/test-$v.log" | head -8
done
for pf in $ROWS; do
    set -- $(echo "$pf" | tr : ' ')
    for v in $names; do
        b=$(bin_of "$v")/moe
        [ -x "$b" ] || { echo "$v: no binary"; continue; }
        "$b" bench --backend cuda --preset "$1" --format "$2" --tokens "$TOKENS" --bw 4100 2>&1 |
            grep "^| [a-z]" | sed "s/^/$v /"
    done
done 2>&1 | tee "$OUT/bench.txt"
