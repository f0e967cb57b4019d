#!/bin/sh
# pcsample.sh - where a kernel's time goes, on a GPU machine: ncu's warp-state
# sampling at its finest interval (one sample per 32 cycles per SM) on one
# launch of the kernel inside `moe bench --backend cuda`, printed per SASS
# instruction (the hottest first) with the kernel's duration.
#   OUT=dir dev/cuda/pcsample.sh KERNEL-REGEX PRESET FORMAT TOKENS
set -u
OUT=${OUT:-build/pcsample}
K=$1 P=$2 F=$3 T=$4
mkdir -p "$OUT"
R="$OUT/$P-$F-$T"
ncu --clock-control none -k "regex:$K" --launch-skip 50 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SourceCounters \
    --warp-sampling-interval 0 -f -o "$R" \
    build/moe bench --backend cuda --preset "$P" --format "$F" --tokens "$T" --bw 4100 \
    >"$R.log" 2>&1 || { tail -20 "$R.log"; exit 1; }
ncu --import "$R.ncu-rep" --page details --print-units base >"$R.details.txt" 2>&1
grep -E "Duration|Elapsed Cycles|Executed Instructions|Warp Cycles Per Issued" "$R.details.txt"
ncu --import "$R.ncu-rep" --page source --print-source sass --csv >"$R.sass.csv" 2>&1 ||
    tail -5 "$R.sass.csv"
