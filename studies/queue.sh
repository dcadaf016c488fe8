#!/usr/bin/env bash
# Every study issues 13 and 15 still wait for, one after another on this 2-core machine (one at a time, both cores):
# the comparison, the trend, the balance study, then the calibration's stronger settings. Each study resumes from its
# own cache, and a finished one only reads its cache back and rewrites its tables, so after an interruption rerun:
#   OMP_NUM_THREADS=2 nohup studies/queue.sh >> study_queue.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
BAPO=${BAPO:-.venv/bin/bapo}
for study in compare trend balance; do
  echo "== $(date '+%F %T') studies/$study.yaml"
  "$BAPO" study --config "studies/$study.yaml"
done
echo "== $(date '+%F %T') studies/calibrate.sh"
BAPO="$BAPO" studies/calibrate.sh
echo "== $(date '+%F %T') done"
