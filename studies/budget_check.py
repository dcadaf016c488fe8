"""Issue 30: which forgetting-budget probe holds on the full measures? (bapo.studies.budget_check)

Probes every adapter of the studies given at every scale they measured in full (cached in STUDY/budget_check/, a
rerun resumes), then prints, as markdown, how often each candidate probe's budget holds on the full measures and how
much personalization it keeps; the cheapest probe that holds in at least 90% of the adapters is marked.

    OMP_NUM_THREADS=2 python studies/budget_check.py study_frontier [study_feedback ...] --out docs/budget_check.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bapo.studies.budget_check import full_points, hold_rows, markdown, probe_study

SIZES = {"drift": [10, 20, 40], "qa": [50, 100, 300], "refusal": [25, 50, 100]}
BUDGETS = {"drift": [0.05, 0.1, 0.2], "qa": [0.01, 0.02, 0.05], "refusal": [0.02, 0.05, 0.1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args()
    points, probes = [], {}
    for study in args.studies:  # cell names prefixed by their study: several studies in one table
        found = probe_study(study, max(SIZES["qa"]), max(SIZES["refusal"]))
        probes.update({f"{study.name}/{k}": v for k, v in found.items()})
        points += [p.__class__(f"{study.name}/{p.cell}", p.scale, p.full, p.margin) for p in full_points(study)]
    text = markdown(hold_rows(points, probes, SIZES, BUDGETS))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
