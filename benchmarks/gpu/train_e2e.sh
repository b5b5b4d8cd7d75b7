#!/usr/bin/env bash
# The trainer itself on one GPU, end to end: `dlrm synth` writes a Criteo-FL15-shaped dataset (tables
# shrunk 100x), `dlrm train` runs NVIDIA's model on it with bf16 AMP, torch.compile and the Triton
# table update, evaluates the exact AUC and checkpoints; then `dlrm eval` reloads the checkpoint.
# Prints the trainer's own summary line (samples/s includes reading the data from disk).
# DEVICE=cpu ROWS=20000 BATCH=1024 runs it here as a smoke test.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
ROWS=${ROWS:-4000000}
BATCH=${BATCH:-65536}
DEVICE=${DEVICE:-cuda}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH=.
"$PY" -m dlrm synth --out "$WORK/data" --rows "$ROWS" --seed 3 --tables criteo-fl15 --scale 100
"$PY" -m dlrm train --config criteo-1tb --dataset "$WORK/data" --out "$WORK/run" \
  --set device="$DEVICE" --set compile=true --set epochs=2 --set data.batch_size="$BATCH" \
  --set data.eval_batch_size="$BATCH" --set log_every=20 --set checkpoint_every=0 \
  --set optim.lr=8 --set optim.warmup_steps=20 --set optim.decay_start_step=60 --set optim.decay_steps=62
"$PY" -m dlrm eval --checkpoints "$WORK/run/checkpoints"
tail -n 3 "$WORK/run/metrics.jsonl"
