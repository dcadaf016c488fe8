#!/usr/bin/env bash
# Issue 46's long run on this 2-core machine, alone, both cores: the first claim without the length confound
# (studies/heterogeneity_hash.yaml, ~11 h in float32 by its dry run; restarted from nothing 2026-12-07 15:00, its
# first run lost with its machine; finished 2026-12-08 00:51, all 30 adapters scored and carried, read in
# docs/RESULTS.md section 1). It scores each adapter as soon as it is trained and resumes from its study folder
# and the bapo cache, so after an interruption rerun, from the repository root:
#   PYTHONPATH=../study-code/src OMP_NUM_THREADS=2 nohup studies/queue.sh >> study_queue.log 2>&1 &
# Every cell of a study must train with the same code, and training may change on main while it runs: it runs from a
# checkout of the commit it started at (training unchanged since 5c6f384, where its first cell trained):
#   git worktree add ../study-code 5fe607a   # once per machine
# On a new machine (no study folder, no bapo cache) it first takes back what studies/carry.py carried in git: the
# scored adapters' records and their scores. At the end of a session, pause it and carry what it has scored, at the
# thread count it scores at (scores are keyed by it):
#   pkill -STOP -f "bapo study"; OMP_NUM_THREADS=2 .venv/bin/python studies/carry.py pack studies/heterogeneity_hash.yaml
#   git add studies/carried/heterogeneity_hash.jsonl.gz; git commit ...; pkill -CONT -f "bapo study"
# (studies/status.sh prints what each study still has left, from its cache.) Issue 46's parts 2 and 3
# (studies/frontier_flip1.yaml, studies/budget_gain.py and studies/budget_check.py on it) are cut by the issue's
# machine-time limit, which the first run's loss spent: see the issue's note of 2026-12-07.
set -euo pipefail
cd "$(dirname "$0")/.."
BAPO=${BAPO:-.venv/bin/bapo}
study=heterogeneity_hash
[ -f "studies/carried/$study.jsonl.gz" ] && PYTHONPATH= .venv/bin/python studies/carry.py unpack "studies/$study.yaml"
echo "== $(date '+%F %T') studies/$study.yaml"
"$BAPO" study --config "studies/$study.yaml"
# the first claim's table and figure, with the repository's own code: every adapter a point, each method's slope
PYTHONPATH= .venv/bin/python studies/trend_reading.py study_hash \
  --figure docs/figures/heterogeneity_hash_trend.png --out study_hash/trend_reading.md
echo "== $(date '+%F %T') done"
