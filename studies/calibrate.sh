#!/usr/bin/env bash
# The calibration sweep of issue 13 (see studies/calibrate.yaml): one resumable study per training strength, weakest
# first; LoRA r16 at 2, 4, 8 epochs x lr 5e-4, 1e-3, then full fine-tuning (every weight, 2 epochs) at two learning
# rates. Rerun the same command after an interruption: finished settings are read from their caches.
#   OMP_NUM_THREADS=1 nohup studies/calibrate.sh > study_calibrate.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
BAPO=${BAPO:-.venv/bin/bapo}
for setting in "2 0.0005" "2 0.001" "4 0.0005" "4 0.001" "8 0.0005" "8 0.001"; do
  read -r epochs lr <<< "$setting"
  "$BAPO" study --config studies/calibrate.yaml --epochs "$epochs" --lr "$lr" --out "study_calibrate/e${epochs}-lr${lr}"
done
for lr in 0.00001 0.00005; do
  "$BAPO" study --config studies/calibrate.yaml --epochs 2 --lr "$lr" --set train.finetune=full \
    --out "study_calibrate/full-e2-lr${lr}"
done
.venv/bin/python studies/calibration_table.py study_calibrate
