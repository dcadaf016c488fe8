"""Readers of the public data sets bapo evaluates and builds users from, each into a small typed item.

- multiple choice (:func:`load_mc`): llm-foundry JSONL (``query``/``choices``/``gold``, as ``../shared/data/knowledge``),
  ARC and OpenBookQA in the hub layouts (``question``/``question_stem`` + ``choices`` + ``answerKey``), and MMLU CSV
  (question, A, B, C, D, answer);
- general preference pairs (:func:`load_general_pairs`): Anthropic HH transcripts (``chosen``/``rejected``) and
  DSP-style ``{"text": [a, b], "score": [1, 0]}``;
- prompts (:func:`load_prompts`): JSONL with ``prompt``, ``instruction`` or MT-Bench ``turns``, or HH transcripts
  (their first human turn);
- short-answer questions (:func:`load_qa`): llm-foundry's TriviaQA (``context`` "Question: ...\nAnswer:", ``answer``,
  ``aliases``).

``path`` may be ``package:NAME`` for a file shipped in ``bapo/resources``; ``limit`` keeps a seeded random subset.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bapo.errors import DataError, Problem


@dataclass
class McItem:
    """A multiple-choice question: the context to continue, the choices, and the index of the right one."""

    context: str
    choices: list[str]
    gold: int


@dataclass
class QaItem:
    """A question with a short free-form answer, and every answer accepted for it."""

    question: str
    aliases: list[str]


@dataclass
class PairItem:
    """A general preference pair: the conversation, the generally preferred reply and the other one."""

    messages: list[dict[str, str]]
    chosen: str
    rejected: str



def _open_text(path: str) -> str:
    if path.startswith("package:"):
        return resources.files("bapo").joinpath("resources", path.split(":", 1)[1]).read_text(encoding="utf-8")
    p = Path(path)
    if not p.exists():
        raise DataError(Problem(path, 0, "file", "not found"))
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rt", encoding="utf-8") as f:
                return f.read()
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(Problem(path, 0, "file", f"not UTF-8 text (byte {e.start})")) from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise DataError(Problem(path, 0, "file", f"unreadable gzip ({e})")) from None


def _records(path: str) -> list[tuple[int | str, Any]]:
    text = _open_text(path)
    name = path.removesuffix(".gz")
    if name.endswith(".json"):
        data = _json(path, 0, text)  # the text is read once for all formats
        return [(f"record {i}", r) for i, r in enumerate(data if isinstance(data, list) else [data], 1)]
    if name.endswith(".csv"):
        try:
            return [(i, row) for i, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1) if row]
        except csv.Error as e:
            raise DataError(Problem(path, "", "csv", str(e))) from None
    # JSONL lines end at "\n" only: str.splitlines would also cut at U+2028 and friends, which JSON strings may hold
    return [(i, _json(path, i, line)) for i, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_json(path: str) -> Any:
    """A whole JSON file (``.gz`` too); a missing, non-UTF-8, malformed or too deeply nested file is one
    :class:`DataError` naming it."""
    return _json(path, 0, _open_text(path))


def _json(path: str, line: int, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(Problem(path, line or e.lineno, "json", f"malformed JSON ({e.msg})")) from None
    except RecursionError:
        raise DataError(Problem(path, line, "json", "nested too deeply")) from None


def _subset(items: list, limit: int, seed: int) -> list:
    if limit and len(items) > limit:
        idx = sorted(random.Random(seed).sample(range(len(items)), limit))
        return [items[i] for i in idx]
    return items


LETTERS = "ABCDEFGHIJ"


def _mc_record(rec: Any, where: tuple[str, int | str]) -> McItem:
    item = _mc_fields(rec, where)
    if not isinstance(item.context, str) or len(item.choices) < 2 or not all(isinstance(c, str) for c in item.choices):
        raise DataError(Problem(*where, "choices", "expected a question and at least two choices, all text"))
    return item


def _mc_fields(rec: Any, where: tuple[str, int | str]) -> McItem:
    if isinstance(rec, list):  # MMLU CSV: question, A, B, C, D, answer letter
        if len(rec) < 4 or not isinstance(rec[-1], str) or rec[-1].strip() not in LETTERS[: len(rec) - 2]:
            raise DataError(Problem(*where, "answer", "expected question, choices..., answer letter"))
        return McItem(f"Question: {rec[0]}\nAnswer:", rec[1:-1], LETTERS.index(rec[-1].strip()))
    if not isinstance(rec, dict):
        raise DataError(Problem(*where, "record", "expected an object"))
    if "query" in rec:  # llm-foundry
        choices, gold, q = rec.get("choices"), rec.get("gold"), rec["query"]
        if not isinstance(choices, list) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise DataError(Problem(*where, "gold", "expected choices (a list) and gold (an index into it)"))
        if not isinstance(q, str):
            raise DataError(Problem(*where, "query", "expected text"))
        return McItem(q + "\nAnswer:" if q.startswith("Question:") else q, choices, gold)
    q = rec.get("question", rec.get("question_stem"))
    ch = rec.get("choices")
    if isinstance(q, dict):  # original ARC / OpenBookQA JSONL: {"question": {"stem", "choices": [...]}}
        ch, q = q.get("choices"), q.get("stem")
    if isinstance(ch, dict) and isinstance(ch.get("text", []), list) and isinstance(ch.get("label", []), list):
        texts, labels = ch.get("text", []), ch.get("label", [])  # hub layout: {"text": [...], "label": [...]}
    elif isinstance(ch, list) and all(isinstance(c, dict) for c in ch):
        texts, labels = [c.get("text") for c in ch], [c.get("label") for c in ch]
    else:
        raise DataError(Problem(*where, "choices", "missing"))
    key = str(rec.get("answerKey", "")).strip()
    if not isinstance(q, str) or key not in labels:
        raise DataError(Problem(*where, "answerKey", f"'{key}' is not one of the choice labels {labels}"[:300]))
    return McItem(f"Question: {q}\nAnswer:", texts, labels.index(key))


def load_mc(path: str, limit: int = 0, seed: int = 0) -> list[McItem]:
    return _subset([_mc_record(r, (path, line)) for line, r in _records(path)], limit, seed)


def hh_messages(transcript: str) -> tuple[list[dict[str, str]], str]:
    """Split an HH transcript into the conversation before the last assistant turn, and that turn."""
    turns: list[dict[str, str]] = []
    for chunk in transcript.split("\n\n"):
        if chunk.startswith("Human:"):
            turns.append({"role": "user", "content": chunk[6:].strip()})
        elif chunk.startswith("Assistant:"):
            turns.append({"role": "assistant", "content": chunk[10:].strip()})
        elif turns:
            turns[-1]["content"] += "\n\n" + chunk
    if not turns or turns[-1]["role"] != "assistant":
        raise ValueError("transcript does not end with an assistant turn")
    return turns[:-1], turns[-1]["content"]


def load_general_pairs(path: str, limit: int = 0, seed: int = 0) -> list[PairItem]:
    items = []
    for line, rec in _records(path):
        where = (path, line)
        texts, scores = (rec.get("text"), rec.get("score")) if isinstance(rec, dict) else (None, None)
        if isinstance(texts, list) and isinstance(scores, list) and len(texts) == len(scores) >= 2 and \
                all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores):  # DSP
            best, worst = texts[scores.index(max(scores))], texts[scores.index(min(scores))]
        elif isinstance(rec, dict) and "chosen" in rec and "rejected" in rec:
            best, worst = rec["chosen"], rec["rejected"]
        else:
            raise DataError(Problem(*where, "record", "expected chosen/rejected transcripts or text/score"))
        if not isinstance(best, str) or not isinstance(worst, str):
            raise DataError(Problem(*where, "chosen", "expected transcripts as strings"))
        try:
            msgs, c = hh_messages(best)
            msgs_r, r = hh_messages(worst)
        except ValueError as e:
            raise DataError(Problem(*where, "chosen", str(e))) from None
        if msgs == msgs_r and c.strip() != r.strip() and c.strip() and r.strip() and msgs:
            items.append(PairItem(msgs, c, r))  # pairs that differ only in the final reply
    return _subset(items, limit, seed)


def load_prompts(path: str, limit: int = 0, seed: int = 0) -> list[list[dict[str, str]]]:
    """Prompts from JSONL with ``prompt`` / ``instruction`` / ``turns`` (MT-Bench: the first turn) fields, or the
    first human turn of HH transcripts (``chosen``)."""
    out = []
    for line, rec in _records(path):
        text = None
        if isinstance(rec, dict):
            text = rec.get("prompt") or rec.get("instruction")
            if text is None and isinstance(rec.get("turns"), list) and rec["turns"]:
                text = rec["turns"][0]
            if text is None and isinstance(rec.get("chosen"), str) and "Human:" in rec["chosen"]:
                text = rec["chosen"].split("Human:", 1)[1].split("\n\nAssistant:", 1)[0].strip()
        if not isinstance(text, str) or not text.strip():
            raise DataError(Problem(path, line, "prompt", "expected a prompt, instruction or turns field"))
        out.append([{"role": "user", "content": text}])
    return _subset(out, limit, seed)


def load_qa(path: str, limit: int = 0, seed: int = 0) -> list[QaItem]:
    """Short-answer questions: llm-foundry's ``context`` / ``answer`` / ``aliases`` (TriviaQA), or ``question`` with
    ``answer`` (a string or a list of accepted strings)."""
    items = []
    for line, rec in _records(path):
        q = rec.get("context", rec.get("question")) if isinstance(rec, dict) else None
        aliases = rec.get("aliases") or rec.get("answer") if isinstance(rec, dict) else None
        aliases = [aliases] if isinstance(aliases, str) else aliases
        if not isinstance(q, str) or not q.strip():
            raise DataError(Problem(path, line, "context", "expected the question (context or question)"))
        if not isinstance(aliases, list) or not aliases or not all(isinstance(a, str) and a.strip() for a in aliases):
            raise DataError(Problem(path, line, "aliases", "expected the accepted answers (aliases or answer)"))
        q = q.strip().removeprefix("Question:").removesuffix("Answer:").strip()
        items.append(QaItem(q, list(aliases)))
    return _subset(items, limit, seed)
