#!/bin/bash
# One H200, 10e95d5 + the rows GEMM's ring / stagger / wide entries + the route from 5 rows: E4m3WeightTests; the probe
# at 1-32 rows beside the e4m3 GEMV; serving A/B of where the route starts (8B 32 requests: bf16 / from 5 / from 9 / off,
# twice; 70B FP8 as on an 80 GB card: from 5 / from 9).
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
( time timeout 90 python3 bench/e4m3_rows_probe.py --variants "" --rows 1,2,4,5,6,8,9,16,32 --gemv ) > $R/probe.txt 2>&1
cut -c1-200 $R/probe.txt
( time timeout 60 $S serve-bench --preset llama-3.1-8b --variants swiftkv50 --requests 8 --prompt 200 --output 8 --weights e4m3 ) > $R/warm.log 2>&1
i=0; for c in "bf16 -" "e4m3 5" "e4m3 9" "e4m3 off" "bf16 -" "e4m3 5" "e4m3 9" "e4m3 off"; do set -- $c; i=$((i+1)); n=serve8-$i-$1-$2
  x=""; [ "$1" = e4m3 ] && { [ "$2" = off ] && x="--e4m3-rows-gemm off" || x="--e4m3-rows-from $2"; }
  ( time timeout 40 $S serve-bench --preset llama-3.1-8b --variants swiftkv50 --requests 32 --prompt 2000 --output 128 --kv-gb auto --prefix-variant none --weights $1 $x --out $R/$n.json --md $R/$n.md ) > $R/$n.log 2>&1
  echo "$n $(grep -E '\| throughput' $R/$n.log | awk -F'|' '{print $8, $11, $16}')"
done
for m in 5 9; do
  ( time timeout 60 $S serve-bench --preset llama-3.1-70b --variants swiftkv50 --requests 32 --prompt 2000 --output 128 --kv-gb auto --prefix-variant none --weights e4m3 --e4m3-rows-from $m --card-mib 81079 --out $R/serve70-80g-from$m.json --md $R/serve70-80g-from$m.md ) > $R/serve70-80g-from$m.log 2>&1
  echo "70B from $m"; grep -E '\| throughput|real' $R/serve70-80g-from$m.log | cut -c1-250
done
tar czf $OUT/results.tar.gz -C $OUT r
