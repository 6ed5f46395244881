#!/bin/bash
# One H200 at the final commit: E4m3WeightTests (the shared Operands set-up of the kernel tests).
cd "$(dirname "$0")/.."
R=$OUT/r; mkdir -p $R
echo "commit $(cat .gpu/commit)" > $R/commit.txt
nvidia-smi --query-gpu=index,name,driver_version,power.limit,memory.total --format=csv > $R/gpu.txt
( time timeout 100 bash .gpu/gpu-env.sh dotnet .gpu/apps/SwiftKV.Cuda.Tests/SwiftKV.Cuda.Tests.dll -class "*E4m3WeightTests" ) > $R/e4m3-tests.log 2>&1
grep -E "\[FAIL\]|Total|real" $R/e4m3-tests.log | head -20
