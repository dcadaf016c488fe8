"""Unpaired feedback in, validated :class:`Feedback` objects out: the thumbs up or down a product collects on one
answer, in TRL's unpaired format (what its KTOTrainer reads): ``prompt``, ``completion`` and ``label`` (true = liked),
prompt and completion as text or chat messages, an optional ``user_id``. The same files as pairs (JSONL, JSON, CSV,
Parquet, a hub id) and the same one-line ``FILE:LINE: field: what is wrong`` for every problem, before any model work.
"""

from __future__ import annotations

import random
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from bapo.data.pairs import (SUFFIXES, PreferencePair, PromptedRecord, iter_records, load_validated, read_prompt,
                             read_response)
from bapo.errors import DataError, Problem

# CSV has no booleans: these spellings of a label are accepted there (and anywhere)
TRUE, FALSE = ("true", "1", "yes", "up", "liked"), ("false", "0", "no", "down", "disliked")


@dataclass(frozen=True)
class Feedback(PromptedRecord):
    """One rated answer: for ``prompt`` (chat messages), ``completion`` was liked (True) or not."""

    prompt: tuple[tuple[str, str], ...]
    completion: str
    liked: bool
    user_id: str | None = None
    source: str = ""  # "FILE:LINE"

    def to_record(self) -> dict[str, Any]:
        """TRL's unpaired format."""
        return self._record(completion=self.completion, label=self.liked)


def is_feedback(rec: Any) -> bool:
    """Whether a raw record is unpaired feedback (it has ``completion`` and ``label``) rather than a pair."""
    return isinstance(rec, dict) and "completion" in rec and "label" in rec and "chosen" not in rec


def holds_feedback(path: str, split: str = "train") -> bool:
    """Whether a data file (or a folder's first data file) holds unpaired feedback rather than pairs, judged by its
    first record."""
    if Path(path).is_dir():
        files = sorted(f for f in Path(path).iterdir() if f.suffix.lower() in SUFFIXES)
        return bool(files) and holds_feedback(str(files[0]), split)
    first = next((rec for _, rec in iter_records(path, split) if isinstance(rec, dict)), None)
    return is_feedback(first)


def unpair(pairs: list[PreferencePair]) -> list[Feedback]:
    """Pairs as thumbs: each chosen answer liked, each rejected one disliked, under the same prompt (what TRL's
    ``unpair_preference_dataset`` does, so a pairwise user's data trains KTO)."""
    return [Feedback(p.prompt, text, liked, p.user_id, p.source)
            for p in pairs for text, liked in ((p.chosen, True), (p.rejected, False))]


def mismatched(items: list[Feedback], seed: int) -> list[int]:
    """For each rated answer, the index of another one whose answer it is paired with for KTO's KL estimate: a
    seeded shuffle of the items, each taking the next item's answer whose prompt differs from its own (TRL rotates
    answers within a batch; here across the whole set, so a prompt's own answers are never its mismatch unless
    every item shares one prompt)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    partner = [0] * len(items)
    for k, i in enumerate(order):
        step = next((d for d in range(1, len(order)) if items[order[(k + d) % len(order)]].prompt_key
                     != items[i].prompt_key), 1)
        partner[i] = order[(k + step) % len(order)]
    return partner


def read_label(rec: dict[str, Any], where: tuple[str, int | str], problems: list[Problem]) -> bool | None:
    value = rec.get("label")
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    shown = "missing" if value is None else f"expected true or false (thumbs up or down), got {value!r}"[:120]
    problems.append(Problem(*where, "label", shown))
    return None


def validate_feedback(rec: Any, source: str, line: int | str, problems: list[Problem]) -> Feedback | None:
    """Check one raw record, appending every problem found; return the feedback when it has none."""
    where = (source, line)
    if not isinstance(rec, dict):
        problems.append(Problem(*where, "record", f"expected an object with prompt/completion/label, got "
                                                  f"{type(rec).__name__}"))
        return None
    before = len(problems)
    prompt = read_prompt(rec, where, problems)
    completion = read_response(rec, "completion", where, problems)
    liked = read_label(rec, where, problems)
    user = rec.get("user_id")
    if user is not None and (isinstance(user, bool) or not isinstance(user, (str, int))):
        problems.append(Problem(*where, "user_id", f"expected text or an integer, got {type(user).__name__}"))
    if len(problems) > before or prompt is None or completion is None or liked is None:
        return None
    return Feedback(prompt, completion, liked, None if user in (None, "") else str(user), f"{source}:{line}")


def load_feedback(path: str, split: str = "train", user: str = "") -> list[Feedback]:
    """Read and validate every record of ``path``; raise :class:`DataError` listing all problems, if any. With
    ``user``, keep that user's records only."""
    out = load_validated(path, split, validate_feedback)
    if user:
        out = [f for f in out if f.user_id == user]
    if not out:
        raise DataError(Problem(path, 0, "file", "no records" + (f" for user '{user}'" if user else "")))
    return out
