"""The hinge against replay at matched personalization (issue 46 part 2): BAPO's lambda frontier minus replay's, seed
matched, on every retention measure, read at the held-out margin each one's default setting (lambda 1) reached, with
95% intervals over seeds and items (bapo.studies.matched.versus_rows); where neither frontier reaches the other's
margin, the table says "beyond reach" and the two are read against DPO's frontier instead (the study's own table.md:
"bapo's own", "replay's own"), as studies/frontier_flip1.yaml's reading rules say.

    python studies/hinge_reading.py study_frontier_flip1 [--first bapo --second replay] [--out hinge.md]

Reads only what the study wrote: study.json (its rows), eval/results.json and eval/item_scores.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bapo.io import atomic_write_text
from bapo.studies.finished import NotFinished, load
from bapo.studies.matched import family, matched_markdown, versus_rows


def margins(rows, fams: tuple[str, str]) -> str:
    """Each setting's held-out margin, seed by seed: where each frontier lies, so a reader sees why a level is out
    of reach."""
    lines = ["| user | method | held-out margin per seed (nats) |", "|---|---|---|"]
    for user, method in dict.fromkeys((r.user, r.method) for r in rows if family(r.method) in fams):
        got = sorted((r.seed, r.personal_margin) for r in rows if (r.user, r.method) == (user, method))
        lines.append(f"| {user} | {method} | " + ", ".join(f"s{s}: {m:.1f}" for s, m in got if m is not None) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="a finished study's output folder")
    ap.add_argument("--first", default="bapo", help="the family read minus the other (default bapo)")
    ap.add_argument("--second", default="replay", help="the family subtracted (default replay)")
    ap.add_argument("--out", type=Path, help="also write the tables here")
    args = ap.parse_args()
    try:
        rows, items = load(args.study)
    except NotFinished as e:
        raise SystemExit(str(e)) from None
    found = {family(r.method) for r in rows}
    for fam in (args.first, args.second):
        if fam not in found:
            raise SystemExit(f"{args.study}: no '{fam}' adapters (its methods: {', '.join(sorted(found))})")
    got = versus_rows(rows, args.first, args.second, items)
    intro = (f"{args.first} minus {args.second} at matched personalization: each family's frontier (its lambdas, LoRA "
             f"scale 1) read at the held-out margin each one's default setting reached (\"{args.first}'s own\", "
             f"\"{args.second}'s own\"), seed by seed (positive = {args.first} kept more); 95% t interval over the "
             "seeds in reach and the items (its standard error's two parts beside it); each seed's own difference last "
             "(- where the other frontier does not reach that margin).")
    text = margins(rows, (args.first, args.second)) + "\n" + (matched_markdown(got, intro) or "no measure to read\n")
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
