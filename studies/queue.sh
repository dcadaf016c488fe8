#!/usr/bin/env bash
# Every study issues 13 and 15 still wait for, one after another on this 2-core machine (one at a time, both cores):
# the calibration's stronger settings (each its own study, done in 20-60 min), the trend, the balance study, then the
# comparison's BAPO lambda arms
# (bapo:0.1, bapo:0.01; its first 12 adapters and DPO's frontier are scored). Each study resumes from its own cache,
# and a finished one only reads its cache back and rewrites its tables, so after an interruption rerun:
#   OMP_NUM_THREADS=2 nohup studies/queue.sh >> study_queue.log 2>&1 &
# (studies/status.sh prints what each still has left, from its cache.)
set -euo pipefail
cd "$(dirname "$0")/.."
BAPO=${BAPO:-.venv/bin/bapo}
run() {
  echo "== $(date '+%F %T') studies/$1.yaml"
  "$BAPO" study --config "studies/$1.yaml"
}
echo "== $(date '+%F %T') studies/calibrate.sh"
BAPO="$BAPO" studies/calibrate.sh
run trend
run balance
run compare
echo "== $(date '+%F %T') done"
