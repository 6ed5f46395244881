#!/usr/bin/env bash
# Builds bench/gemm/swiglu_probe.cu in several variants on the GPU machine and runs each: bash bench/gemm/swiglu_device.sh OUT "S C" ...
# (S = GG_STAGES, C = GG_CLUSTER, optional third word a -D define such as GG_FAST_SILU=0; default variants "4 2" "4 1"). Output: OUT/swiglu_probe.txt
set -u
out=${1:-/tmp}; shift || true
variants=("$@"); [ ${#variants[@]} -eq 0 ] && variants=("4 2" "4 1")
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit --format=csv | tee -a "$out/swiglu_probe.txt"
for v in "${variants[@]}"; do
  set -- $v
  extra=""; [ $# -ge 3 ] && extra="-D$3"
  bin=/tmp/swiglu_probe_$1_$2_${3:-x}
  bin=${bin//=/_}
  echo "== variant GG_STAGES=$1 GG_CLUSTER=$2 $extra" | tee -a "$out/swiglu_probe.txt"
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Xptxas -v -Inative-kernels -DGG_STAGES=$1 -DGG_CLUSTER=$2 $extra \
    -o $bin bench/gemm/swiglu_probe.cu -lcublas -lcuda > $bin.log 2>&1
  grep -E "registers|spill|error|warning|C75" $bin.log | tee -a "$out/swiglu_probe.txt"
  [ -x $bin ] && timeout 120 $bin 2>&1 | tee -a "$out/swiglu_probe.txt"
done
