"""Issue 30: which forgetting-budget probe holds on the full measures? (bapo.studies.budget_check)

Probes every trained adapter of the studies given at every scale the study measures it at (cached in
OUT/budget_check/, a rerun resumes), measures drift in full on each (minutes: the study's drift prompts only, cached
under the study's own keys), then prints, as markdown, how often each candidate probe's budget holds on the full
measures and how much personalization it keeps; the cheapest probe that holds in at least 90% of the adapters the
budget binds is marked. TriviaQA and refusals are judged on the adapters whose full evaluation has finished
(the study's eval/results.json: at its end, or after `bapo study --so-far`).

    OMP_NUM_THREADS=2 python studies/budget_check.py studies/frontier_rivals.yaml [studies/feedback.yaml ...] \\
        --out budget_check.md

Run it at the thread count the study runs at (answers are cached by it on a CPU), and not beside the study.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bapo.options import load_yaml
from bapo.studies.budget_check import Point, hold_rows, markdown, probe_study, study_points, study_targets
from bapo.studies.config import StudyConfig

SIZES = {"drift": [10, 20, 40], "qa": [50, 100, 300], "refusal": [25, 50, 100], "qa_share": [50, 100, 300]}
# drift 0.5, 0.75 and 1 were added on 2026-12-06 after the first table: every DPO adapter drifted more than 0.2
# nats/token even at scale 0.25 on the study's prompts, so below 0.2 the probe and the full measure both chose the
# base model and the check tested nothing between scales; from 0.5 up their choices fall between 0.25 and 0.75.
# qa_share (a candidate, added 2026-12-06 after qa failed: the share of the base model's right answers lost) at budgets
# chosen, before reading it, to fall between DPO's full losses at scales 0.25 (~0.4) and 1 (~0.9).
BUDGETS = {"drift": [0.05, 0.1, 0.2, 0.5, 0.75, 1.0], "qa": [0.01, 0.02, 0.05], "refusal": [0.02, 0.05, 0.1],
           "qa_share": [0.2, 0.4, 0.6]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+", type=Path, help="study configs (their `out` folders hold the adapters)")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args()
    points, probes = [], {}
    for path in args.configs:  # cell names prefixed by their study: several studies in one table
        cfg = load_yaml(path, StudyConfig)
        cfg.validate()
        study = Path(cfg.out)
        found = probe_study(study, max(SIZES["qa"]), max(SIZES["refusal"]), targets=study_targets(cfg))
        probes.update({f"{study.name}/{k}": v for k, v in found.items()})
        points += [Point(f"{study.name}/{p.cell}", p.scale, p.full, p.margin) for p in study_points(cfg)]
    text = markdown(hold_rows(points, probes, SIZES, BUDGETS))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
