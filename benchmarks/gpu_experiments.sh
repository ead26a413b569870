#!/usr/bin/env bash
# Every experiment's default run on one GPU, timed end to end (data, compile, training, evaluation,
# samples), plus nanoGPT's shakespeare-size GPT (6 layers, 384 dims, context 256, batch 64, dropout 0.2,
# 5000 steps, bf16) on Python's docs. Sized for under 7 minutes on one H100/H200; summaries to $OUT.
#   OUT=/tmp/gpu bash benchmarks/gpu_experiments.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu-experiments}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd) GENJAX_CACHE=/tmp/genjax-cache
nvidia-smi --query-gpu=name --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/gpu.txt"

run() {  # name, time limit (s), command...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" --workdir "/tmp/runs/$name" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/times.txt"
  cp "/tmp/runs/$name/summary.json" "$OUT/$name.summary.json" 2>/dev/null || tail -n 20 "$OUT/$name.log"
}

run gpt_shakespeare 130 python3 experiments/gpt_text.py --model.n_layer 6 --model.n_head 6 \
  --model.d_model 384 --model.block_size 256 --model.dropout 0.2 --model.dtype bfloat16 \
  --train.batch_size 64 --train.steps 5000 --train.eval_every 1000 --train.sample_every 5000 \
  --train.ckpt_every 5000 --eval_blocks 0
run vae_digits 110 python3 experiments/vae_digits.py
run diffusion_digits 140 python3 experiments/diffusion_digits.py
run gan_digits 100 python3 experiments/gan_digits.py
run gpt_text 50 python3 experiments/gpt_text.py
echo "gpu_experiments.sh done"
