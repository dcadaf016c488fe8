#!/usr/bin/env bash
# What every queued study (studies/queue.sh) still has left, from its cache: the dry run of each, one line apiece.
#   studies/status.sh
set -uo pipefail
cd "$(dirname "$0")/.."
BAPO=${BAPO:-.venv/bin/bapo}
left() {  # NAME ARGS...: the dry run's "left" line (or its estimate from nothing when it has no cache yet)
  local name=$1; shift
  local line
  line=$(COLUMNS=200 OMP_NUM_THREADS=1 "$BAPO" study "$@" --dry-run 2>&1 | grep -E "^(left after|estimated run time|error)" | tail -1)
  printf '%-26s %s\n' "$name" "$line"
}
for setting in "2 0.0005" "2 0.001" "4 0.0005" "4 0.001" "8 0.0005" "8 0.001"; do
  read -r epochs lr <<< "$setting"
  left "calibrate e${epochs}-lr${lr}" --config studies/calibrate.yaml --epochs "$epochs" --lr "$lr" \
    --out "study_calibrate/e${epochs}-lr${lr}"
done
for lr in 0.00001 0.00005; do
  left "calibrate full-e2-lr${lr}" --config studies/calibrate.yaml --epochs 2 --lr "$lr" --set train.finetune=full \
    --out "study_calibrate/full-e2-lr${lr}"
done
for study in trend balance compare; do
  left "$study" --config "studies/$study.yaml"
done
