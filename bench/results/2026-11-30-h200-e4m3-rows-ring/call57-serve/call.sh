#!/bin/bash
# One H200, 10e95d5 + the e4m3 rows GEMM's ring, stagger and wide entries: serving A/B (8B 32 requests: route on / off / bf16,
# twice; 70B FP8 as on an 80 GB card: route on / off, bf16 KV and fp8 KV).
cd "$(dirname "$0")/.."
R=$OUT/r; mkdir -p $R
E="bash .gpu/gpu-env.sh"
S="$E dotnet .gpu/apps/SwiftKV.Cli/swiftkv.dll"
( cd .gpu/apps/SwiftKV.Cuda.Tests && while read src f; do mkdir -p "$(dirname "$f")"; cp "$src/$f" "$f"; done < ../../cuda-dedupe.txt )
( cd .gpu/apps/SwiftKV.AI.Cuda.Tests && while read src f; do mkdir -p "$(dirname "$f")"; cp "$src/$f" "$f"; done < ../../ai-dedupe.txt )
echo "commit $(cat .gpu/commit)" > $R/commit.txt
nvidia-smi --query-gpu=index,name,driver_version,power.limit,memory.total --format=csv > $R/gpu.txt
export SWIFTKV_COMMIT=$(cat .gpu/commit)
i=0; for c in "e4m3 on" "e4m3 off" "bf16 on" "e4m3 on" "e4m3 off" "bf16 on"; do set -- $c; i=$((i+1)); n=serve8-$i-$1-$2
  ( time timeout 40 $S serve-bench --preset llama-3.1-8b --variants swiftkv50 --requests 32 --prompt 2000 --output 128 --kv-gb auto --prefix-variant none --weights $1 --e4m3-rows-gemm $2 --out $R/$n.json --md $R/$n.md ) > $R/$n.log 2>&1
  echo "$n $(grep -E '\| throughput' $R/$n.log | awk -F'|' '{print $8, $11, $16}')"
done
for m in on off; do
  ( time timeout 130 $S serve-bench --preset llama-3.1-70b --variants swiftkv50,swiftkv50-fp8 --requests 32 --prompt 2000 --output 128 --kv-gb auto --prefix-variant none --weights e4m3 --e4m3-rows-gemm $m --card-mib 81079 --out $R/serve70-80g-$m.json --md $R/serve70-80g-$m.md ) > $R/serve70-80g-$m.log 2>&1
  echo "70B $m"; grep -E '\| throughput|real' $R/serve70-80g-$m.log | cut -c1-250
done
tar czf $OUT/results.tar.gz -C $OUT r
