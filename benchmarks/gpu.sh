#!/usr/bin/env bash
# The one-call GPU check: the benchmark suite at GPU sizes, then short real training runs.
# Sized for under 8 minutes on one H100/H200. Results (JSON, markdown, logs) go to $OUT.
#   OUT=/tmp/gpu bash benchmarks/gpu.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/gpu.txt"

# 1. every family at its GPU size (+ sampling speed), MFU against the device table
timeout 290 python3 -m benchmarks --size gpu --steps 10 --out "$OUT" --name bench 2>&1 | tee "$OUT/bench.log"

# 2. a real experiment end to end on the GPU (data, loop, checkpoints, metrics), timed
timeout 100 python3 experiments/vae_digits.py --workdir /tmp/vae_gpu --train.steps 3000 2>&1 \
  | tail -n 3 | tee "$OUT/vae.log"
cp /tmp/vae_gpu/summary.json "$OUT/vae_summary.json" 2>/dev/null || true
echo "gpu.sh done"
