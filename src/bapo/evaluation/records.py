"""Typed result rows shared by ``bapo eval``, ``bapo study`` and ``bapo report``, and their CSV and markdown forms.

On disk a :class:`Record` is a flat JSON object with exactly these fields, in this order (``results.json``'s
``records``), as it always was.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass
class Record:
    """One metric of one model on one task: its mean over ``n`` items with its standard error and, for an adapter,
    the paired change against the base model on the same items with its 95% interval."""

    model: str  # the label: "base", an adapter's directory name, or "name@scale"
    adapter: str  # the adapter's directory ("" for the base model)
    scale: float
    method: str  # the loss that trained it ("base" for the base model)
    task: str
    kind: str  # the task kind (bapo.evaluation.tasks.KINDS), or "lm_eval"
    metric: str
    n: int
    value: float
    stderr: float
    delta: float | None = None
    delta_stderr: float | None = None
    delta_lo: float | None = None
    delta_hi: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def cell(self) -> str:
        """``value ± stderr (Δ delta [lo, hi])``: one table cell."""
        text = f"{self.value:.3f} ± {self.stderr:.3f}"
        if self.delta is not None:
            text += f" (Δ {self.delta:+.3f} [{self.delta_lo:+.3f}, {self.delta_hi:+.3f}])"
        return text


def markdown_table(records: Sequence[Record]) -> str:
    """One markdown table per task: a row per model, a column per metric; Δ is the paired change against base."""
    parts = []
    for task in dict.fromkeys(r.task for r in records):
        rows = [r for r in records if r.task == task]
        metrics = list(dict.fromkeys(r.metric for r in rows))
        n = max(r.n for r in rows)
        parts.append(f"### {task} (n = {n})\n")
        parts.append("| model | method | " + " | ".join(metrics) + " |")
        parts.append("|---|---|" + "---|" * len(metrics))
        for model in dict.fromkeys(r.model for r in rows):
            by = {r.metric: r for r in rows if r.model == model}
            method = next(iter(by.values())).method
            parts.append(f"| {model} | {method} | " + " | ".join(by[m].cell() if m in by else "" for m in metrics)
                         + " |")
        parts.append("")
    return "\n".join(parts)
