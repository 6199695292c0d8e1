#!/usr/bin/env bash
# The loader's GPU checks in one go, on the first GPU machine available (about 3 minutes on an H100):
# the CUDA tests of the loader, then the pretraining benchmark with the real loader, decoding on the
# workers and on the device. Results (JSON) go to $OUT (default: results/gpu_loader).
#
#     PYTHONPATH=$PWD bash benchmarks/gpu_loader.sh
set -euo pipefail
OUT=${OUT:-results/gpu_loader}
mkdir -p "$OUT"
python -m pytest tests/test_pretrain_gpu.py -q -rs 2>&1 | tee "$OUT/test_pretrain_gpu.txt"
for decode in worker device; do
    mkdir -p "$OUT/$decode"
    OUT="$OUT/$decode" python benchmarks/gpu_pretrain.py --decode "$decode" "$@" 2>&1 | tee "$OUT/$decode/gpu_pretrain.txt"
done
