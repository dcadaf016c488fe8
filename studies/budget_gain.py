"""Issue 46, part 3: what the forgetting budget gains by choosing among methods (bapo.studies.budget_gain).

For each user and seed of a study with DPO, replay and BAPO cells, replays what
`bapo train --method dpo,replay,bapo --forgetting-budget SPEC` ships (each method at the largest scale its probe keeps
within the budget, then the largest held-out margin) and compares it with DPO alone under the same budget; prints, as
markdown, the gain in held-out margin per budget with its interval over seeds and held-out pairs. Probes and margins
are cached in the study's folder (a rerun resumes; the probes are carried by studies/carry.py).

    OMP_NUM_THREADS=2 python studies/budget_gain.py studies/frontier_flip1.yaml --out budget_gain.md

With `--methods dpo,replay,bapo,bapo:0.1,bapo:0.01` it replays the budget choosing the anchor's weight too (the
study's arms of those names; `bapo train` takes the same list).

Run it at the thread count the study runs at (answers are cached by it on a CPU), and not beside the study.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bapo.io import atomic_write_text
from bapo.options import load_yaml
from bapo.studies.budget_gain import BUDGETS, SCALES, gain_rows, markdown
from bapo.studies.config import StudyConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="a study config (its `out` folder holds the adapters)")
    ap.add_argument("--methods", default="dpo,replay,bapo", help="the candidates, DPO first (default: %(default)s)")
    ap.add_argument("--budget", action="append", help=f"a budget SPEC, repeatable (default: {'; '.join(BUDGETS)})")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args()
    cfg = load_yaml(args.config, StudyConfig)
    cfg.validate()
    methods = args.methods.split(",")
    if methods[0] != "dpo":
        raise SystemExit(f"--methods {args.methods}: DPO first (what the others are measured against)")
    rows = gain_rows(cfg, methods, args.budget or BUDGETS, SCALES)
    if not rows:
        raise SystemExit(f"{cfg.out}: no seed has a trained cell of every method of {methods}")
    text = markdown(rows)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
