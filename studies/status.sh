#!/usr/bin/env bash
# What each current study still has left (studies/queue.sh runs the first; the others by hand), from its cache: the
# dry run of each, one line apiece, at the thread count studies/queue.sh runs them at (on a CPU, generated answers
# are cached by it: bapo.evaluation.tasks.generation_key).
#   studies/status.sh
set -uo pipefail
cd "$(dirname "$0")/.."
BAPO=${BAPO:-.venv/bin/bapo}
left() {  # NAME ARGS...: the dry run's "left" line (or its estimate from nothing when it has no cache yet)
  local name=$1; shift
  local line
  line=$(COLUMNS=200 OMP_NUM_THREADS=2 "$BAPO" study "$@" --dry-run 2>&1 | grep -E "^(left after|estimated run time|error)" | tail -1)
  printf '%-26s %s\n' "$name" "$line"
}
for study in frontier_rivals frontier feedback frontier_flip1 heterogeneity_hash; do
  left "$study" --config "studies/$study.yaml"
done
