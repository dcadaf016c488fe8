#!/usr/bin/env bash
# Every study docs/RESULTS.md still waits for, one after another on this 2-core machine (one at a time, both cores):
# the calibration's settings and the balance study (done 2026-12-03: read back), the comparison's BAPO lambda arms and
# kl:0.1 (its first 12 adapters and DPO's frontier are scored), then the trend's seeds 1 and 2 (its seed 0 is done).
# Each study resumes from its own cache,
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
run balance
run compare
run trend
echo "== $(date '+%F %T') done"
