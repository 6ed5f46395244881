#!/bin/bash
# One H200, 10e95d5 + the e4m3 rows GEMM's ring, stagger and wide entries: SwiftKV.AI.Cuda.Tests, the whole
# SwiftKV.Cuda.Tests, the demo.
cd "$(dirname "$0")/.."
R=$OUT/r; mkdir -p $R
E="bash .gpu/gpu-env.sh"
S="$E dotnet .gpu/apps/SwiftKV.Cli/swiftkv.dll"
( cd .gpu/apps/SwiftKV.Cuda.Tests && while read src f; do mkdir -p "$(dirname "$f")"; cp "$src/$f" "$f"; done < ../../cuda-dedupe.txt )
( cd .gpu/apps/SwiftKV.AI.Cuda.Tests && while read src f; do mkdir -p "$(dirname "$f")"; cp "$src/$f" "$f"; done < ../../ai-dedupe.txt )
echo "commit $(cat .gpu/commit)" > $R/commit.txt
nvidia-smi --query-gpu=index,name,driver_version,power.limit,memory.total --format=csv > $R/gpu.txt
export SWIFTKV_COMMIT=$(cat .gpu/commit)
( time timeout 60 $E dotnet .gpu/apps/SwiftKV.AI.Cuda.Tests/SwiftKV.AI.Cuda.Tests.dll ) > $R/ai-tests.log 2>&1
grep -E "\[FAIL\]|Total|real" $R/ai-tests.log | head
( time timeout 300 $E dotnet .gpu/apps/SwiftKV.Cuda.Tests/SwiftKV.Cuda.Tests.dll ) > $R/cuda-tests.log 2>&1
grep -E "\[FAIL\]|Total|real" $R/cuda-tests.log | head -20
( time SWIFTKV_CACHE=/tmp/swiftkv-cache timeout 30 $S demo ) > $R/demo.log 2>&1
grep -E "SwiftKV o|saved|real" $R/demo.log | head -4
tar czf $OUT/results.tar.gz -C $OUT r
