"""The first claim's reading of a finished study: does forgetting grow with heterogeneity? Each retention measure's
least-squares slope on measured heterogeneity per method, and each method's minus DPO's, with 95% intervals over
seeds and items (bapo.studies.trend.trend_rows, from the study's per-item scores), as markdown; and the figure
(bapo.studies.figures.trend_figure): every adapter a point, each method's line. For studies run by a checkout older
than those (their table.md has the seed-level interval only).

    python studies/trend_reading.py study_hash --figure docs/figures/heterogeneity_hash_trend.png [--out trend.md]

Reads only what the study wrote: study.json (its rows), eval/results.json and eval/item_scores.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bapo.io import atomic_write_text
from bapo.studies.figures import trend_figure
from bapo.studies.finished import NotFinished, load
from bapo.studies.trend import trend_markdown, trend_rows

TITLES = {"generative_knowledge": "TriviaQA answered: Δ acc vs base",
          "refusal_harmful": "harmful requests refused: Δ vs base",
          "knowledge": "ARC-Easy + PIQA: Δ acc_norm vs base",
          "alignment": "HH harmless: Δ acc_norm vs base",
          "drift": "drift: Δ log p(base answer)/token",
          "refusal_harmless": "harmless requests refused: Δ vs base (over-refusal)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="a study's output folder")
    ap.add_argument("--figure", type=Path, help="draw the figure here (PNG)")
    ap.add_argument("--out", type=Path, help="also write the table here")
    args = ap.parse_args()
    try:
        rows, items = load(args.study)
    except NotFinished as e:
        raise SystemExit(str(e)) from None
    trends = trend_rows(rows, items)
    text = trend_markdown(trends)
    if not text:
        raise SystemExit(f"{args.study}: no arm has 3 adapters at 2 heterogeneities")
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    if args.figure:
        present = [m for m in TITLES if any(getattr(r, f"{m}_delta") is not None for r in rows)]
        arms = list(dict.fromkeys(r.arm for r in rows))
        points = {m: {a: [(r.heterogeneity, getattr(r, f"{m}_delta")) for r in rows if r.arm == a] for a in arms}
                  for m in present}
        # the legend shows the interval the reading decides by: over seeds and items where the study has them
        intervals = {(t.measure, t.method): (t.lo, t.hi) for t in trends if t.item_se is not None}
        print(trend_figure(points, {m: TITLES[m] for m in present}, args.figure, intervals))


if __name__ == "__main__":
    main()
