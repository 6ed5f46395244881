#!/usr/bin/env bash
# One device call for the attention work: GPU tests (all, or those matching $1), the attention benchmark with the
# old kernels and build-switch variants in the same process ($VARIANTS), then the engine bench. Logs under $OUT.
# Here first: bash bench/attention/fetch_baselines.sh (old kernels from git, ignored; carry them with .gpu).
# Usage on the device (carry .gpu, bench/attention/baselines): VARIANTS="label=FA_X=0;..." bash bench/attention/device_run.sh [class-filter]
set -o pipefail
env=.gpu/gpu-env.sh tests=.gpu/apps/SwiftKV.Cuda.Tests/SwiftKV.Cuda.Tests.dll cli=$PWD/.gpu/apps/SwiftKV.Cli/swiftkv.dll
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
filter=(); [ -n "$1" ] && filter=(-class "$1")
timeout 240 bash $env dotnet $tests "${filter[@]}" > $OUT/tests.log 2>&1; echo "tests rc=$?"
grep -E "^\s*(failed|Failed)|\[FAIL\]|Total:|passed|error" $OUT/tests.log | head -20
SWIFTKV_BENCH=1 SWIFTKV_BENCH_BASELINE=$PWD/bench/attention/baselines/attention_flash_2e05f9d.cu SWIFTKV_BENCH_VARIANTS="$VARIANTS" \
  timeout 150 bash $env dotnet $tests -class "*AttentionBenchmarkTests*" > $OUT/attn_bench.log 2>&1; echo "attention bench rc=$?"
grep -E "registers/thread" $OUT/attn_bench.log | sed 's/.*bench //' | grep "d128"
grep "bench table" $OUT/attn_bench.log | sed 's/.*bench table | //'
timeout 150 bash $env dotnet $cli bench --preset llama-3.1-8b --prefill 1x2048,1x8192,1x32768 --variants off,swiftkv50 \
  --out $OUT/engine.json --md $OUT/engine.md > $OUT/engine.log 2>&1; echo "engine bench rc=$?"
grep -E "prefill|GEMM|copy" $OUT/engine.log | tail -12
