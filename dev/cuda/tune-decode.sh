#!/bin/sh
# tune-decode.sh - decode-tile experiments on a GPU machine: builds the tree
# as it is (v0) and variants of the BM = 16 tile configuration in copies
# under /tmp, then times the decode rows of `moe bench --backend cuda`.
#   OUT=dir dev/cuda/tune-decode.sh
set -u
OUT=${OUT:-build/tune}
mkdir -p "$OUT"
J=$(nproc)
# name | bf16 decode template args | fp8 decode template args
VARIANTS=${VARIANTS:-"v1:16, 16, 1, 1, 8:16, 16, 1, 1, 8
v2:16, 32, 1, 2, 12:16, 32, 1, 2, 12"}
make -j"$J" NO_MPI=1 NO_NCCL=1 build/moe >"$OUT/build-v0.log" 2>&1 || tail "$OUT/build-v0.log"
echo "$VARIANTS" | while IFS=: read -r name b16 b8; do
    d=/tmp/moe-$name
    rm -rf "$d" && mkdir -p "$d" && cp -r Makefile include src tools tests "$d"/
    tile='16, [0-9]*, [0-9]*, [0-9]*, [0-9]*, '
    sed -i "s/DT, $tile/DT, $b16, /g" "$d/src/cuda/grouped-gemm-bf16.cu"
    sed -i "s/FP8, $tile/FP8, $b8, /g" "$d/src/cuda/grouped-gemm-fp8.cu"
    (cd "$d" && make -j"$J" NO_MPI=1 NO_NCCL=1 build/moe >"$OUT/build-$name.log" 2>&1 ||
        tail "$OUT/build-$name.log") &
done
wait
for v in v0 $(echo "$VARIANTS" | cut -d: -f1); do
    bin=build/moe
    [ $v = v0 ] || bin=/tmp/moe-$v/build/moe
    [ -x "$bin" ] || { echo "$v: no binary"; continue; }
    echo "== $v"
    for pf in "qwen3-30b-a3b bf16" "qwen3-30b-a3b fp8-block" "mixtral-8x7b bf16" \
              "deepseek-v3 fp8-block"; do
        set -- $pf
        "$bin" bench --backend cuda --preset "$1" --format "$2" --tokens 1,8,64 --bw 4100 |
            grep "^| [qmd]" | tee -a "$OUT/bench-$v.txt"
    done
done
