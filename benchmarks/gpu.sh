#!/usr/bin/env bash
# The one-call GPU check: GPT-2 124M's train step over the speed levers (batch 16/32 and accumulation,
# vocabulary padding, einsum vs cuDNN attention, f32 vs bf16 compute, scanned vs unrolled layers, remat,
# XLA GPU flags), the CIFAR-10 U-Net (bf16, batch 128) and GPT-2's KV-cache decode at batch 1: tokens/s
# (images/s) and MFU per row, each configuration in its own subprocess under a timeout, all within a
# deadline (benchmarks/gpu_levers.py). Under 8 minutes on one H200; JSON + markdown to --out.
#   bash benchmarks/gpu.sh [--out DIR]          # default benchmarks/results
#   bash benchmarks/gpu.sh --tiny --out /tmp/x  # the same code paths with tiny models on CPU
# The whole suite at GPU sizes is `python -m benchmarks --size gpu` (~5 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
if [[ " $* " == *" --tiny "* ]]; then
  # XLA:CPU compiles take most of a tiny run (~10 s per row on 2 loaded cores): reruns reuse them
  export JAX_PLATFORMS=cpu JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/genjax-gpu-levers-cache}
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
fi
# gpu_levers keeps its own deadline (440 s; tiny 420 s) and rewrites the report after every row: this outer
# limit only catches a hang of the parent itself.
timeout 470 "${PYTHON:-python3}" -m benchmarks.gpu_levers "$@"
