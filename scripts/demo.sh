#!/usr/bin/env bash
# make demo: generate a small learnable dataset, train on the CPU, print AUC next to the best achievable.
# make demo-data: the dataset only (scripts/demo.sh PY --data-only).
set -euo pipefail
PY=${1:-.venv/bin/python}
DATA=${DEMO_DATA:-data/demo}
RUN=${DEMO_RUN:-runs/demo}
ROWS=${DEMO_ROWS:-600000}
if [ ! -f "$DATA/feature_spec.yaml" ]; then
  "$PY" -m dlrm synth --out "$DATA" --rows "$ROWS" --seed 1 --tables small
fi
if [ "${2:-}" = --data-only ]; then
  exit 0
fi
rm -rf "$RUN"
"$PY" -m dlrm train --config demo --dataset "$DATA" --out "$RUN" "${@:2}"
