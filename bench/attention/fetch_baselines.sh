#!/usr/bin/env bash
# Writes earlier versions of the attention kernel from git history into bench/attention/baselines/ (ignored), so the
# device run can time them in the same process as today's kernel without committing copies of old code.
# Run here before packing:  bash bench/attention/fetch_baselines.sh [COMMIT ...]   (default: 2e05f9d 5847af3)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p bench/attention/baselines
grep -qx '/bench/attention/baselines/' .git/info/exclude 2>/dev/null || echo '/bench/attention/baselines/' >> .git/info/exclude
for c in "${@:-2e05f9d 5847af3}"; do
  for commit in $c; do
    git show "$commit:native-kernels/attention_flash.cu" > "bench/attention/baselines/attention_flash_$commit.cu"
    echo "bench/attention/baselines/attention_flash_$commit.cu"
  done
done
