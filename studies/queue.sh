#!/usr/bin/env bash
# The studies docs/RESULTS.md still waits for, one after another on this 2-core machine (one at a time, both cores):
# the comparison's BAPO lambda arms and kl:0.1, then the trend's seeds 1 and 2. The calibration (studies/calibrate.sh)
# and the balance study (studies/balance.yaml) are done and in RESULTS; they are not queued, because a fresh machine
# has none of their caches and would redo them from nothing (hours). Each study resumes from its own cache, and a
# finished one only reads its cache back and rewrites its tables, so after an interruption rerun:
#   OMP_NUM_THREADS=2 nohup studies/queue.sh >> study_queue.log 2>&1 &
# (studies/status.sh prints what each still has left, from its cache.)
set -euo pipefail
cd "$(dirname "$0")/.."
BAPO=${BAPO:-.venv/bin/bapo}
run() {
  echo "== $(date '+%F %T') studies/$1.yaml"
  "$BAPO" study --config "studies/$1.yaml"
}
run compare
run trend
echo "== $(date '+%F %T') done"
