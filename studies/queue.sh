#!/usr/bin/env bash
# What docs/RESULTS.md read last (finished 2026-12-06 13:59), one after another on this 2-core machine (one at a
# time, both cores): issue 29's BAPO, replay and KL arms beside DPO's frontier (studies/frontier_rivals.yaml: the
# frontier's cache was lost with its machine on 2026-12-06), then issue 30's validation of the forgetting-budget
# probes on its adapters (studies/budget_check.py). Issue 29's parts 2 and 3 (studies/frontier_flip1.yaml, studies/heterogeneity_hash.yaml)
# were cut by its 12-hour rule. Each step resumes from its own cache, and a finished one only reads its cache back and
# rewrites its tables, so after an interruption rerun:
#   OMP_NUM_THREADS=2 nohup studies/queue.sh >> study_queue.log 2>&1 &
# On a new machine (no study folder, no bapo cache) it first takes back what studies/carry.py carried in git; at the
# end of a session, pause it and carry what it has scored:
#   pkill -STOP -f frontier_rivals; .venv/bin/python studies/carry.py pack studies/frontier_rivals.yaml; git add ...
# (studies/status.sh prints what each study still has left, from its cache.)
set -euo pipefail
cd "$(dirname "$0")/.."
BAPO=${BAPO:-.venv/bin/bapo}
[ -f studies/carried/frontier_rivals.jsonl.gz ] && .venv/bin/python studies/carry.py unpack studies/frontier_rivals.yaml
echo "== $(date '+%F %T') studies/frontier_rivals.yaml"
"$BAPO" study --config studies/frontier_rivals.yaml
echo "== $(date '+%F %T') budget probes"
.venv/bin/python studies/budget_check.py studies/frontier_rivals.yaml --out budget_check.md
echo "== $(date '+%F %T') done"
