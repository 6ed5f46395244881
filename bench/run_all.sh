#!/usr/bin/env bash
# One device call that produces every figure docs/BENCHMARKS.md reports, all on the same card in the same run:
# the GPU test suites, our engine's benchmark (SwiftKV off / on / AcrossKV), the serving benchmark when present,
# and the PyTorch/transformers peer with the card's roofline.
# Pack first (here):  ../shared/device/pack.sh src/SwiftKV.Cli/SwiftKV.Cli.csproj \
#                       tests/SwiftKV.Cuda.Tests/SwiftKV.Cuda.Tests.csproj tests/SwiftKV.AI.Cuda.Tests/SwiftKV.AI.Cuda.Tests.csproj
# Then on the device (carry .gpu):  bash bench/run_all.sh $OUT [--quick]
set -uo pipefail
final=${1:?usage: run_all.sh OUT_DIR [--quick]}
quick=${2:-}
# The device returns at most 8 files: everything is written here, then packed into one archive.
out=$(mktemp -d)
env=".gpu/gpu-env.sh"
cli=".gpu/apps/SwiftKV.Cli/swiftkv.dll"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  git log -1 --format='commit %H %cd' 2>/dev/null || echo "commit: (no git on the device; see the carried tree)"
} > "$out/card.txt" 2>&1
for t in SwiftKV.Cuda.Tests SwiftKV.AI.Cuda.Tests; do
  [ -f ".gpu/apps/$t/$t.dll" ] && timeout 300 bash "$env" dotnet ".gpu/apps/$t/$t.dll" > "$out/$t.log" 2>&1
done
prefill="1x2048,8x2048,1x8192,1x32768"
[ "$quick" = "--quick" ] && prefill="1x2048,1x8192"
timeout 400 bash "$env" dotnet "$cli" bench --preset llama-3.1-8b --prefill "$prefill" --out "$out/engine.json" --md "$out/engine.md" > "$out/engine.log" 2>&1
if bash "$env" dotnet "$cli" bench --serving --help > /dev/null 2>&1; then
  timeout 400 bash "$env" dotnet "$cli" bench --serving --preset llama-3.1-8b --out "$out/serving.json" --md "$out/serving.md" > "$out/serving.log" 2>&1
fi
timeout 300 python3 bench/hf_peer.py --out "$out/peer.json" $quick > "$out/peer.log" 2>&1
tail -n 3 "$out"/*.log | tee "$final/summary.txt"
tar czf "$final/results.tar.gz" -C "$out" .
