#!/usr/bin/env bash
# Same-machine A/B of two builds of the CLI: `swiftkv bench` with the same arguments, alternating base and new
# ROUNDS times so drift (clocks, temperature) hits both alike; the side that goes first swaps every round (a card
# that warms through the call favours whichever side always runs first). Each run's JSON and log land in OUT_DIR.
# Usage (on the device, after packing the new build to .gpu/apps and publishing the base build to BASE_DIR):
#   bash bench/ab.sh OUT_DIR BASE_DIR ROUNDS -- bench --preset llama-3.1-8b --prefill 1x2048 ...
set -uo pipefail
out=${1:?OUT_DIR}; base=${2:?BASE_DIR with swiftkv.dll}; rounds=${3:?ROUNDS}; shift 3
[ "${1:-}" = "--" ] && shift
env=".gpu/gpu-env.sh"
for r in $(seq 1 "$rounds"); do
  sides="base new"; [ $((r % 2)) -eq 0 ] && sides="new base"
  for side in $sides; do
    dll=$([ $side = base ] && echo "$base/swiftkv.dll" || echo ".gpu/apps/SwiftKV.Cli/swiftkv.dll")
    timeout 200 bash "$env" dotnet "$dll" "$@" --out "$out/$side-$r.json" > "$out/$side-$r.log" 2>&1
    echo "== $side round $r"; grep -E "prefill|decode batch" "$out/$side-$r.log" | sed 's/^\[bench\] //'
  done
done
