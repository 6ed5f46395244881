#!/usr/bin/env bash
# One device run that produces the figures docs/BENCHMARKS.md reports, on the same card in the same run: the GPU test
# suites, our engine's benchmark (SwiftKV off / on / AcrossKV) with the card's ceilings, the PyTorch/transformers
# peer, and the serving benchmark. Each part fits one device call (10 minutes), so it can be run part by part.
# Pack first (here):  ../shared/device/pack.sh src/SwiftKV.Cli/SwiftKV.Cli.csproj \
#                       tests/SwiftKV.Cuda.Tests/SwiftKV.Cuda.Tests.csproj tests/SwiftKV.AI.Cuda.Tests/SwiftKV.AI.Cuda.Tests.csproj
# Then on the device (carry .gpu):  bash bench/run_all.sh $OUT [tests,engine,peer,serving,engine70,peer70]
# engine70 / peer70: Llama-3.1-70B's shape on one card, ours and the peer's; they need >= 141 GB of GPU memory (an H200).
set -uo pipefail
final=${1:?usage: run_all.sh OUT_DIR [tests,engine,peer,serving,engine70,peer70]}
parts=",${2:-tests,engine,peer,serving},"
# The device returns at most 8 files: everything is written here, then packed into one archive.
out=$(mktemp -d)
env=".gpu/gpu-env.sh"
cli=".gpu/apps/SwiftKV.Cli/swiftkv.dll"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/card.txt" 2>&1
if [[ $parts == *,tests,* ]]; then
  for t in SwiftKV.Cuda.Tests SwiftKV.AI.Cuda.Tests; do
    [ -f ".gpu/apps/$t/$t.dll" ] && timeout 240 bash "$env" dotnet ".gpu/apps/$t/$t.dll" > "$out/$t.log" 2>&1
  done
fi
if [[ $parts == *,engine,* ]]; then
  timeout 300 bash "$env" dotnet "$cli" bench --preset llama-3.1-8b --max-case-seconds 20 --out "$out/engine.json" --md "$out/engine.md" > "$out/engine.log" 2>&1
fi
if [[ $parts == *,peer,* ]]; then
  timeout 240 python3 bench/hf_peer.py --out "$out/peer.json" > "$out/peer.log" 2>&1
fi
if [[ $parts == *,serving,* ]]; then
  timeout 420 bash "$env" dotnet "$cli" serve-bench --preset llama-3.1-8b --configs tuned --out "$out/serving.json" --md "$out/serving.md" > "$out/serving.log" 2>&1
fi
if [[ $parts == *,engine70,* ]]; then
  timeout 300 bash "$env" dotnet "$cli" bench --preset llama-3.1-70b --prefill 1x2048,1x8192 --decode-batches 1 --batched-prefill none --gemv-rows none \
    --variants off,swiftkv50 --max-case-seconds 40 --out "$out/engine70.json" --md "$out/engine70.md" > "$out/engine70.log" 2>&1
fi
if [[ $parts == *,peer70,* ]]; then
  timeout 240 python3 bench/hf_peer.py --preset 70b --out "$out/peer70.json" > "$out/peer70.log" 2>&1
fi
for f in "$out"/*.log; do echo "== $f"; grep -E "Total|passed|failed|tok/s|ms" "$f" | tail -n 6; done | tee "$final/summary.txt"
tar czf "$final/results.tar.gz" -C "$out" .
