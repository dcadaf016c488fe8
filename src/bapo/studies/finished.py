"""A finished study's files read back: its rows (each adapter as trained, LoRA scale 1) and every model's per-item
retention scores, for readings made after the study by a newer checkout than the one that ran it
(studies/trend_reading.py, studies/hinge_reading.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bapo.evaluation.records import Record
from bapo.studies.matched import ItemScores, base_key, retention_items
from bapo.studies.tables import StudyRow


class NotFinished(Exception):
    """The folder holds no finished study (or no --so-far summary): the message names the missing file."""


def load(study: Path) -> tuple[list[StudyRow], ItemScores]:
    """``study``'s rows from study.json and each model's per-item retention scores from eval/item_scores.json and
    eval/results.json, keyed as :data:`bapo.studies.matched.ItemScores` (the base model's under :func:`base_key`)."""
    paths = [study / "study.json", study / "eval" / "results.json", study / "eval" / "item_scores.json"]
    for path in paths:
        if not path.exists():
            raise NotFinished(f"{path}: not there (a study writes it when it finishes, or with --so-far)")
    summary, results, scores = (json.loads(p.read_text()) for p in paths)
    names = {f.name for f in dataclasses.fields(StudyRow)}
    rows = [StudyRow(**{k: v for k, v in r.items() if k in names}) for r in summary["rows"]]
    kinds = {r.task: r.kind for r in (Record.from_dict(d) for d in results["records"])}
    items = {(r.user, r.method, r.seed, 1.0): retention_items(scores[Path(r.adapter).name], kinds) for r in rows
             if Path(r.adapter).name in scores}
    if "base" in scores:
        items.update({base_key(u): retention_items(scores["base"], kinds) for u in {r.user for r in rows}})
    return rows, items
