#!/usr/bin/env bash
# Expert-parallel layer on CPU ranks over MPI on this machine: for each EP
# size, per-step time split into dispatch, experts and combine, and bytes
# sent per rank (moe bench --ep N). Defaults: qwen3-30b-a3b, bf16, 256 tokens
# per rank; the issue's bar is dispatch + combine under 20% of the layer at
# ep 2. Usage: scripts/ep-bench.sh [EP_SIZES] [extra moe bench flags]
#   scripts/ep-bench.sh "1 2 4" --tokens 64 --format f32
set -eu
cd "$(dirname "$0")/.."
sizes=${1:-"1 2"}
[ $# -gt 0 ] && shift
bash scripts/ep-deps.sh >/dev/null
make -s build/moe
for n in $sizes; do
    build/moe bench --ep "$n" --preset qwen3-30b-a3b --tokens 256 --runs 5 "$@" 2>&1 |
        grep -v 'PMIX ERROR'
done
