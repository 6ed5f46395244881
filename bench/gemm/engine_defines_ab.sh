#!/usr/bin/env bash
# Kernel variants in the engine, on a device without a .NET SDK: `swiftkv bench` once per SWIFTKV_NVRTC_DEFINES value,
# the values alternating process by process for ROUNDS rounds, so clock and power drift reach all alike.
#   bash bench/gemm/engine_defines_ab.sh OUT 2 1x2048,1x8192 off,swiftkv50 "" "QG_STAGES=3" ...   ("" = the defaults)
# Output: OUT/defines-ab.txt (each process's prefill lines, labelled by its defines).
set -u
out=${1:?usage: engine_defines_ab.sh OUT ROUNDS CASES VARIANTS DEFINES...}; rounds=$2; cases=$3; variants=$4; shift 4
env=.gpu/gpu-env.sh
cli=.gpu/apps/SwiftKV.Cli/swiftkv.dll
for r in $(seq 1 "$rounds"); do
  for d in "$@"; do
    echo "== round $r defines '${d}'" >> "$out/defines-ab.txt"
    SWIFTKV_NVRTC_DEFINES="$d" timeout 120 bash "$env" dotnet "$cli" bench --preset llama-3.1-8b --prefill "$cases" --variants "$variants" \
      --runs 5 --decode-batches none --gemv-rows none --decode-steps 4 --out /tmp/ab.json 2>&1 | grep -E "\] .*prefill" >> "$out/defines-ab.txt"
  done
done
cat "$out/defines-ab.txt"
