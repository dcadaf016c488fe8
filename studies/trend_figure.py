"""The first claim's figure from a finished study's table.csv: each retention measure against measured heterogeneity,
every adapter a point, each method's least-squares line with its slope and 95% interval (bapo.studies.figures.
trend_figure; studies run by a checkout older than it do not draw it themselves).

    python studies/trend_figure.py study_hash --out docs/figures/heterogeneity_hash_trend.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from bapo.studies.figures import trend_figure

MEASURES = {"generative_knowledge_delta": "TriviaQA answered: Δ acc vs base",
            "refusal_harmful_delta": "harmful requests refused: Δ vs base",
            "knowledge_delta": "ARC-Easy + PIQA: Δ acc_norm vs base",
            "alignment_delta": "HH harmless: Δ acc_norm vs base",
            "drift_delta": "drift: Δ log p(base answer)/token",
            "refusal_harmless_delta": "harmless requests refused: Δ vs base (over-refusal)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="a study's output folder (its table.csv)")
    ap.add_argument("--out", type=Path, required=True, help="the figure (PNG)")
    args = ap.parse_args()
    table = args.study / "table.csv"
    if not table.exists():
        raise SystemExit(f"{table}: not there (the study writes it when it finishes, or with --so-far)")
    rows = list(csv.DictReader(table.open()))  # a row per adapter as trained (scale 1)
    present = [m for m in MEASURES if any(r.get(m) for r in rows)]
    arms = list(dict.fromkeys(r["method"] for r in rows))
    points = {m: {a: [(float(r["heterogeneity"]), float(r[m]) if r[m] else None) for r in rows if r["method"] == a]
                  for a in arms} for m in present}
    print(trend_figure(points, {m: MEASURES[m] for m in present}, args.out))


if __name__ == "__main__":
    main()
