#!/usr/bin/env bash
# The open studies, one after another on this 2-core machine (one at a time, both cores): the first claim without
# the length confound (studies/heterogeneity_hash.yaml, ~8 h in bfloat16 by its dry run; started 2026-12-06 17:40),
# then the hinge against replay at flip:1 (studies/frontier_flip1.yaml). Each step resumes from its own cache (trained
# cells are kept in its study folder, scores in the bapo cache), so after an interruption rerun:
#   OMP_NUM_THREADS=2 nohup studies/queue.sh >> study_queue.log 2>&1 &
# On a new machine (no study folder, no bapo cache) it first takes back what studies/carry.py carried in git; at the
# end of a session, pause it and carry what it has scored:
#   pkill -STOP -f "bapo study"; .venv/bin/python studies/carry.py pack studies/heterogeneity_hash.yaml; git add ...
# Every cell of a study must train with the same code: heterogeneity_hash's first 15 cells trained at commit 1435876,
# and training changed after it (BAPO's in-batch reference, 2026-12-06), so the queue runs from a checkout of that
# commit beside the repository:
#   git worktree add ../study-code 1435876   # once per machine
#   PYTHONPATH=../study-code/src OMP_NUM_THREADS=2 nohup studies/queue.sh >> study_queue.log 2>&1 &
# (studies/status.sh prints what each study still has left, from its cache.) The rivals' study that RESULTS.md read
# on 2026-12-06 (studies/frontier_rivals.yaml) and its budget-probe check are done; their scores are carried in git.
set -euo pipefail
cd "$(dirname "$0")/.."
BAPO=${BAPO:-.venv/bin/bapo}
# frontier_flip1's DPO and BAPO cells at flip:1 are heterogeneity_hash's: the same user, settings, seeds and code (their
# training configs differ only in `resume`, checked 2026-12-07), so they are copied with their user's files, not
# trained again; their scores at scale 1 are cached under their weights' digest, so they are not scored again either.
reuse_flip1() {
  local to=study_frontier_flip1
  mkdir -p "$to/cells" "$to/users"
  local f cell name
  for f in study_hash/users/flip-1.*; do  # each copied beside, then renamed: a kill leaves no half-copied file
    name=${f##*/}
    [ -e "$to/users/$name" ] || { cp -a "$f" "$to/users/.$name.tmp" && mv "$to/users/.$name.tmp" "$to/users/$name"; }
  done
  for cell in study_hash/cells/flip-1__{dpo,bapo}__s{0,1,2}; do
    name=${cell##*/}
    if [ -f "$cell/run.json" ] && [ ! -e "$to/cells/$name" ]; then
      rm -rf "$to/cells/.$name.tmp"
      cp -a "$cell" "$to/cells/.$name.tmp" && mv "$to/cells/.$name.tmp" "$to/cells/$name"
    fi
  done
  return 0
}
for study in heterogeneity_hash frontier_flip1; do
  [ -f "studies/carried/$study.jsonl.gz" ] && .venv/bin/python studies/carry.py unpack "studies/$study.yaml"
  [ "$study" = frontier_flip1 ] && [ -d study_hash/cells ] && reuse_flip1
  echo "== $(date '+%F %T') studies/$study.yaml"
  "$BAPO" study --config "studies/$study.yaml"
  # the first claim's figure (the study's checkout predates it): every adapter a point, each method's slope
  [ "$study" = heterogeneity_hash ] && PYTHONPATH= .venv/bin/python studies/trend_reading.py study_hash \
    --figure docs/figures/heterogeneity_hash_trend.png --out study_hash/trend_reading.md
  # the hinge against replay at flip:1: its trade-off figure beside the other frontiers' in docs/figures
  [ "$study" = frontier_flip1 ] && { cp study_frontier_flip1/figures/tradeoff_margin.png \
    docs/figures/study_frontier_flip1_tradeoff_margin.png || echo "queue.sh: no trade-off figure to copy"; }
done
# Issue 46 part 2's matched reading (the repository's own code): BAPO's lambda frontier minus replay's at each one's margin
PYTHONPATH= .venv/bin/python studies/hinge_reading.py study_frontier_flip1 --out study_frontier_flip1/hinge_reading.md \
  || echo "queue.sh: hinge_reading failed"
# Issue 46 part 3 on frontier_flip1's adapters: what the budget gains by choosing among dpo, replay and bapo (with
# the repository's own code: the study's checkout predates it)
echo "== $(date '+%F %T') studies/budget_gain.py studies/frontier_flip1.yaml"
PYTHONPATH= .venv/bin/python studies/budget_gain.py studies/frontier_flip1.yaml --out study_frontier_flip1/budget_gain.md
# and the probes checked against the full measures on a second user (RESULTS.md section 4 rests on flip:0.5 alone);
# DPO's, replay's and BAPO's probes are budget_gain's; the other arms' are probed anew (minutes)
echo "== $(date '+%F %T') studies/budget_check.py studies/frontier_flip1.yaml"
PYTHONPATH= .venv/bin/python studies/budget_check.py studies/frontier_flip1.yaml --out study_frontier_flip1/budget_check.md
echo "== $(date '+%F %T') done"
