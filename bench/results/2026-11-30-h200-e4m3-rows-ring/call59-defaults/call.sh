#!/bin/bash
# One H200 at c29a704 (route from 4 rows, row blocks for smaller shared memory): E4m3WeightTests; serve-bench at the
# defaults (8B 32 requests e4m3 and bf16; 70B FP8 as on an 80 GB card, bf16 KV).
cd "$(dirname "$0")/.."
R=$OUT/r; mkdir -p $R
E="bash .gpu/gpu-env.sh"
S="$E dotnet .gpu/apps/SwiftKV.Cli/swiftkv.dll"
( cd .gpu/apps/SwiftKV.Cuda.Tests && while read src f; do mkdir -p "$(dirname "$f")"; cp "$src/$f" "$f"; done < ../../cuda-dedupe.txt )
echo "commit $(cat .gpu/commit)" > $R/commit.txt
nvidia-smi --query-gpu=index,name,driver_version,power.limit,memory.total --format=csv > $R/gpu.txt
export SWIFTKV_COMMIT=$(cat .gpu/commit)
( time timeout 120 $E dotnet .gpu/apps/SwiftKV.Cuda.Tests/SwiftKV.Cuda.Tests.dll -class "*E4m3WeightTests" ) > $R/e4m3-tests.log 2>&1
grep -E "\[FAIL\]|Total|real|rows-GEMM launches" $R/e4m3-tests.log | head -20
( time timeout 60 $S serve-bench --preset llama-3.1-8b --variants swiftkv50 --requests 8 --prompt 200 --output 8 --weights e4m3 ) > $R/warm.log 2>&1
for w in e4m3 bf16; do n=serve8-$w
  ( time timeout 40 $S serve-bench --preset llama-3.1-8b --variants swiftkv50 --requests 32 --prompt 2000 --output 128 --kv-gb auto --prefix-variant none --weights $w --out $R/$n.json --md $R/$n.md ) > $R/$n.log 2>&1
  echo "$n $(grep -E '\| throughput' $R/$n.log | awk -F'|' '{print $8, $11, $16}')"
done
( time timeout 60 $S serve-bench --preset llama-3.1-70b --variants swiftkv50 --requests 32 --prompt 2000 --output 128 --kv-gb auto --prefix-variant none --weights e4m3 --card-mib 81079 --out $R/serve70-80g.json --md $R/serve70-80g.md ) > $R/serve70-80g.log 2>&1
echo "70B default"; grep -E '\| throughput|real' $R/serve70-80g.log | cut -c1-250
tar czf $OUT/results.tar.gz -C $OUT r
