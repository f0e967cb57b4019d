#!/usr/bin/env bash
# Decode figures of every weight format on the CPU, for the README's table:
# `moe bench` at 1 and 8 tokens for the qwen3-30b-a3b and deepseek-v3 presets
# (deepseek-v3's 256 experts scaled down to fit --max-gb). Prints a markdown
# table: µs per layer and % of the memory read bandwidth measured in the
# same run, with that run's probe in GB/s (on a VM the probe, and how close a
# layer comes to it, can move between processes), per token count.
#   bench/cpu-formats.sh [MOE_BINARY] [MAX_GB]
set -u
moe=${1:-build/moe}
max_gb=${2:-6}
formats=$("$moe" formats --json 2>/dev/null | sed -n 's/.*"format": *"\([^"]*\)".*/\1/p')
[ -n "$formats" ] || formats="f32 bf16 f16 fp8-tensor fp8-channel fp8-block int8-w8a8 int4-gptq int4-awq int8-gptq mxfp4 nvfp4 q8_0 q4_0 q4_k q6_k gguf-mxfp4"
echo "| preset | format | 1 token µs | 1 token %bw (probe GB/s) | 8 tokens µs | 8 tokens %bw (probe GB/s) |"
echo "|---|---|---|---|---|---|"
for p in qwen3-30b-a3b deepseek-v3; do
    for f in $formats; do
        out=$("$moe" bench --preset "$p" --format "$f" --tokens 1,8 --runs 7 --max-gb "$max_gb" 2>&1)
        r1=$(awk '$1 == 1 {print $2, $5 " (" $7 ")"}' <<<"$out")
        r8=$(awk '$1 == 8 {print $2, $5 " (" $7 ")"}' <<<"$out")
        if [ -z "$r1" ]; then
            echo "| $p | $f | – | $(head -c 60 <<<"$out" | tr '\n' ' ') | | |"
        else
            echo "| $p | $f | ${r1%% *} | ${r1#* } | ${r8%% *} | ${r8#* } |"
        fi
    done
done
