#!/usr/bin/env bash
# `make bench-gpu`: single-GPU training throughput of the FL=15-shaped DLRM (bf16 AMP, fp32/TF32)
# and of MLPerf's DLRM-DCNv2 multi-hot shape (bf16), then the trainer end to end on the same GPU
# (train_e2e.sh).
# For a machine with one NVIDIA GPU and a CUDA torch already installed (system python3, no venv).
# Extra arguments go to bench_gpu.py, e.g. `bash benchmarks/gpu/run.sh --steps 100`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA device"; print("torch", torch.__version__, torch.version.cuda)'
# the whole run must stay well under 10 minutes: a hung compile or step is cut off
PYTHONPATH=. timeout 300 "$PY" benchmarks/gpu/bench_gpu.py "$@"
# MLPerf's DLRM-DCNv2 on multi-hot data (bf16: what MLPerf submissions train in); compare its
# samples/s with MLPerf's per-GPU figures (global / 8), see bench_gpu.py's docstring
PYTHONPATH=. timeout 240 "$PY" benchmarks/gpu/bench_gpu.py --shape mlperf-dcnv2 --modes amp-bf16 "$@"
# then the trainer itself, end to end on the GPU (data from disk, AMP, compile, eval, checkpoint)
timeout 300 bash benchmarks/gpu/train_e2e.sh
