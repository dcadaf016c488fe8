#!/usr/bin/env bash
# What docs/RESULTS.md still waits for, one after another on this 2-core machine (one at a time, both cores):
# issue 29's frontier (studies/frontier.yaml), then issue 30's validation of the forgetting-budget probes on its
# adapters (studies/budget_check.py, with studies/feedback.yaml's adapters where that study's folder exists). Issue 29's
# parts 2 and 3 (studies/frontier_flip1.yaml, studies/heterogeneity_hash.yaml) were cut by its 12-hour rule; run them
# by hand after this queue if a session decides to. Each step resumes from its own cache, and a finished one only
# reads its cache back and rewrites its tables, so after an interruption rerun:
#   OMP_NUM_THREADS=2 nohup studies/queue.sh >> study_queue.log 2>&1 &
# (studies/status.sh prints what each study still has left, from its cache.)
set -euo pipefail
cd "$(dirname "$0")/.."
BAPO=${BAPO:-.venv/bin/bapo}
run() {
  echo "== $(date '+%F %T') studies/$1.yaml"
  "$BAPO" study --config "studies/$1.yaml"
}
run frontier
echo "== $(date '+%F %T') budget probes"
studies=(study_frontier)
[ -d study_feedback ] && studies+=(study_feedback)
.venv/bin/python studies/budget_check.py "${studies[@]}" --out budget_check.md
echo "== $(date '+%F %T') done"
