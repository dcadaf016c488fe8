"""What the models wrote: every generated answer of a ``bapo eval`` beside its prompt and its per-item scores
(``samples.jsonl``, as lm-evaluation-harness's ``--log_samples``), and the first few prompts of every generative task
with each model's answer side by side (``samples.md``), for a reader who wants to see what a number means.

The answers cost nothing extra: the generative task kinds (``qa``, ``refusal``, ``reward``, a profile user's
``personal``) return the answers they judged under :data:`bapo.evaluation.metrics.ANSWERS`, and the cache keeps them
with the scores. Scores cached by a bapo that did not keep answers have none; such models are named, not invented.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from bapo.errors import DataError, Problem
from bapo.evaluation.metrics import ANSWERS
from bapo.io import atomic_write_text

MAX_CHARS = 400  # an answer longer than this is cut in samples.md (never in samples.jsonl)


@dataclass(frozen=True)
class Sample:
    """One model's answer to one prompt of one task, with the item's scores on that task."""

    model: str
    task: str
    item: int
    prompt: str
    answer: str
    scores: dict[str, float]


@dataclass(frozen=True)
class Asked:
    """What a generative task asked, per answer, and which of its metrics judge those answers (one value each)."""

    prompts: list[str]
    metrics: tuple[str, ...]


@dataclass
class Samples:
    """Every answer of an evaluation, and the models whose answers the cache did not keep."""

    samples: list[Sample]
    unrecorded: list[str]  # models with a generative task scored (cached) before answers were kept


def take_answers(scores: dict[str, dict[str, dict[str, list]]], asked: dict[str, Asked]) -> Samples:
    """Remove the answers from ``scores`` (model -> task -> metric -> per item; afterwards it holds only metrics)
    and pair each with its prompt and its scores (``asked``: what each generative task asked)."""
    out, unrecorded = [], []
    for model, tasks in scores.items():
        for task, metrics in tasks.items():
            answers = metrics.pop(ANSWERS, None)
            if task not in asked or not asked[task].prompts:
                continue
            if answers is None:
                unrecorded += [model] * (model not in unrecorded)
                continue
            judged = [m for m in asked[task].metrics if m in metrics]
            for i, (prompt, answer) in enumerate(zip(asked[task].prompts, answers, strict=True)):
                out.append(Sample(model, task, i, prompt, answer, {m: metrics[m][i] for m in judged}))
    return Samples(out, unrecorded)


def _cell(text: str) -> str:
    """Text inside one markdown table cell: cut, pipes escaped, line breaks kept as <br>."""
    text = text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + " …"
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "*(empty)*"


@dataclass(frozen=True)
class Shown:
    """One prompt of one task as a reader sees it: every model's answer to it, and the metrics that judged them."""

    task: str
    item: int
    prompt: str
    metrics: list[str]
    rows: list[Sample]


def side_by_side(samples: Sequence[Sample], first: int) -> list[Shown]:
    """The first ``first`` prompts of every task, in order, each with every model's answer."""
    out = []
    for task in dict.fromkeys(s.task for s in samples):
        mine = [s for s in samples if s.task == task and s.item < first]
        for item in dict.fromkeys(s.item for s in mine):
            rows = [s for s in mine if s.item == item]
            out.append(Shown(task, item, rows[0].prompt, list(dict.fromkeys(m for s in rows for m in s.scores)), rows))
    return out


def samples_markdown(samples: Samples, first: int) -> str:
    """The first ``first`` prompts of every task, each with a row per model: its answer and its scores."""
    parts = ["# What the models wrote\n",
             f"The first {first} prompts of every task whose answers are generated (greedy); every answer is in "
             "samples.jsonl.\n"]
    if samples.unrecorded:
        parts.append("Not recorded (scored into the cache before bapo kept answers): "
                     f"{', '.join(samples.unrecorded)}.\n")
    task = None
    for shown in side_by_side(samples.samples, first):
        if shown.task != task:
            task = shown.task
            parts.append(f"## {task}\n")
        parts.append(f"### {shown.item + 1}. {_cell(shown.prompt)}\n")
        parts.append("| model | answer | " + " | ".join(shown.metrics) + " |")
        parts.append("|---|---|" + "---|" * len(shown.metrics))
        for s in shown.rows:
            values = [f"{s.scores[m]:.3g}" if m in s.scores else "" for m in shown.metrics]
            parts.append(f"| {s.model} | {_cell(s.answer)} | " + " | ".join(values) + " |")
        parts.append("")
    return "\n".join(parts)


def read_samples(path: Path) -> list[Sample]:
    """``samples.jsonl`` as written by :func:`write_samples`; a malformed line is a one-line error naming it."""
    out = []
    for i, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            sample = Sample(**json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
            raise DataError(Problem(str(path), i, "sample", f"not a bapo eval sample ({e})")) from None
        types = {"model": str, "task": str, "item": int, "prompt": str, "answer": str, "scores": dict}
        wrong = [name for name, kind in types.items() if not isinstance(getattr(sample, name), kind)]
        if not wrong and not all(isinstance(v, (int, float)) for v in sample.scores.values()):
            wrong = ["scores"]
        if wrong:
            raise DataError(Problem(str(path), i, wrong[0], "wrong type (not written by bapo eval?)"))
        out.append(sample)
    return out


def write_samples(out: Path, samples: Samples, first: int) -> None:
    """samples.jsonl (every answer, one JSON object per line) and samples.md (the first prompts side by side)."""
    lines = (json.dumps(asdict(s), ensure_ascii=False) + "\n" for s in samples.samples)
    atomic_write_text(out / "samples.jsonl", "".join(lines))
    atomic_write_text(out / "samples.md", samples_markdown(samples, first))
