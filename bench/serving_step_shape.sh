#!/usr/bin/env bash
# The serving engine's step shape on the GPU: tokens per step (ServingOptions.MaxBatchTokens, the prefill chunk) and
# positions per KV block (ServingOptions.BlockSize). Measures, for each shape, the time to first token of one long
# prompt (8K and 32K tokens, what a RAG request through the IChatClient waits) and the throughput workload
# (128 requests of 2000 + 256), SwiftKV off and 50%, on one card in one call.
# Pack first (here): ../shared/device/pack.sh src/SwiftKV.Cli/SwiftKV.Cli.csproj
# Then on the device (carry .gpu): bash bench/serving_step_shape.sh $OUT ["512x16 8192x16 8192x64"] ["512x16 8192x64"]
set -uo pipefail
final=${1:?usage: serving_step_shape.sh OUT_DIR [TTFT_SHAPES] [THROUGHPUT_SHAPES]}
ttft_shapes=${2:-512x16 8192x16 8192x64}
tput_shapes=${3:-512x16 8192x64}
out=$(mktemp -d)
cli=(bash .gpu/gpu-env.sh dotnet .gpu/apps/SwiftKV.Cli/swiftkv.dll serve-bench --preset llama-3.1-8b --prefix-variant none --variants off,swiftkv50)
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv > "$out/card.txt" 2>&1
for shape in $ttft_shapes; do
  for p in 8000 32000; do
    n="ttft-$p-$shape"
    timeout 150 "${cli[@]}" --requests 1 --prompt "$p" --output 16 --max-batch-tokens "${shape%x*}" --block-size "${shape#*x}" \
      --out "$out/$n.json" --md "$out/$n.md" > "$out/$n.log" 2>&1 || echo "$n: exit $?" >> "$out/errors.txt"
  done
done
for shape in $tput_shapes; do
  n="throughput-$shape"
  timeout 200 "${cli[@]}" --requests 128 --prompt 2000 --output 256 --max-batch-tokens "${shape%x*}" --block-size "${shape#*x}" \
    --out "$out/$n.json" --md "$out/$n.md" > "$out/$n.log" 2>&1 || echo "$n: exit $?" >> "$out/errors.txt"
done
for f in "$out"/*.log; do echo "== $(basename "$f" .log)"; grep -E "total tok/s" "$f" | cut -c1-230; done | tee "$final/summary.txt"
tar czf "$final/results.tar.gz" -C "$out" .
