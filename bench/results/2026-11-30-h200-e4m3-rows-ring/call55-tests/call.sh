#!/bin/bash
# One H200, working tree of 10e95d5 + the e4m3 rows GEMM's cp.async ring: the probe (ring depths, two CTAs per SM, the
# 67a2148 kernel as 'old', torch bf16), then SwiftKV.AI.Cuda.Tests and the whole SwiftKV.Cuda.Tests.
cd "$(dirname "$0")/.."
R=$OUT/r; mkdir -p $R
E="bash .gpu/gpu-env.sh"
( cd .gpu/apps/SwiftKV.Cuda.Tests && while read src f; do mkdir -p "$(dirname "$f")"; cp "$src/$f" "$f"; done < ../../cuda-dedupe.txt )
( cd .gpu/apps/SwiftKV.AI.Cuda.Tests && while read src f; do mkdir -p "$(dirname "$f")"; cp "$src/$f" "$f"; done < ../../ai-dedupe.txt )
echo "commit $(cat .gpu/commit)" > $R/commit.txt
nvidia-smi --query-gpu=index,name,driver_version,power.limit,memory.total --format=csv > $R/gpu.txt
export SWIFTKV_COMMIT=$(cat .gpu/commit)
( time timeout 240 python3 bench/e4m3_rows_probe.py --variants ";S2;S3;S6;S3,M2;P0;old" --old .gpu/old/gemm_e4m3_rows.cu ) > $R/probe.txt 2>&1
cat $R/probe.txt | cut -c1-400
( time timeout 60 $E dotnet .gpu/apps/SwiftKV.AI.Cuda.Tests/SwiftKV.AI.Cuda.Tests.dll ) > $R/ai-tests.log 2>&1
grep -E "\[FAIL\]|Total|real" $R/ai-tests.log | head
( time timeout 300 $E dotnet .gpu/apps/SwiftKV.Cuda.Tests/SwiftKV.Cuda.Tests.dll ) > $R/cuda-tests.log 2>&1
grep -E "\[FAIL\]|Total|real" $R/cuda-tests.log | head -20
tar czf $OUT/results.tar.gz -C $OUT r
