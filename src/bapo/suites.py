"""What ``bapo eval`` measures: evaluation tasks, their data loaders, and suites (lists of tasks) in YAML.

Task kinds:

- ``mc``: zero-shot multiple choice by log-likelihood of each choice (global knowledge). Loads llm-foundry JSONL
  (``query``/``choices``/``gold``, as ``../shared/data/knowledge``), ARC and OpenBookQA in the hub layouts
  (``question``/``question_stem`` + ``choices`` + ``answerKey``), and MMLU CSV (question, A, B, C, D, answer).
- ``general_pairs``: general-population preference pairs (general alignment): Anthropic HH transcripts
  (``chosen``/``rejected``) and DSP-style ``{"text": [a, b], "score": [1, 0]}``.
- ``drift``: prompts the reference model answers; measures how far a model moved from those answers.
- ``reward``: prompts a model answers; a reward model (``--reward-model``) scores the answers.

The ``default`` suite uses only data shipped in the package, so it runs anywhere.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bapo.errors import ConfigError, DataError, Problem

KINDS = ("mc", "general_pairs", "drift", "reward")


@dataclass
class TaskSpec:
    """One evaluation task. ``path`` may be ``package:NAME`` for a file shipped in ``bapo/resources``."""

    name: str
    kind: str
    path: str
    limit: int = 0  # 0 = every item; otherwise a seeded random subset of this size
    seed: int = 0
    max_new_tokens: int = 64  # drift / reward: length of generated answers

    def key(self) -> str:
        return hashlib.sha256(json.dumps([self.kind, self.path, self.limit, self.seed, self.max_new_tokens]).encode()
                              ).hexdigest()[:16]


@dataclass
class McItem:
    context: str
    choices: list[str]
    gold: int


@dataclass
class PairItem:
    messages: list[dict[str, str]]
    chosen: str
    rejected: str


@dataclass
class Suite:
    tasks: list[TaskSpec] = field(default_factory=list)


def default_suite() -> Suite:
    return Suite([
        TaskSpec("knowledge_mc", "mc", "package:knowledge_mc.jsonl"),
        TaskSpec("general_drift", "drift", "package:general_prompts.jsonl"),
    ])


def load_suite(name_or_path: str) -> Suite:
    if name_or_path == "default":
        return default_suite()
    p = Path(name_or_path)
    if not p.exists():
        raise ConfigError(f"--suite {name_or_path}: not 'default' and no such file")
    raw = yaml.safe_load(p.read_text()) or {}
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(f"{p}: expected 'tasks:' with a list of {{name, kind, path}}")
    out = []
    for i, t in enumerate(tasks):
        if not isinstance(t, dict) or not {"name", "kind", "path"} <= set(t):
            raise ConfigError(f"{p}: tasks[{i}]: needs name, kind and path")
        if t["kind"] not in KINDS:
            raise ConfigError(f"{p}: tasks[{i}].kind: unknown '{t['kind']}'; choose one of {', '.join(KINDS)}")
        unknown = set(t) - {"name", "kind", "path", "limit", "seed", "max_new_tokens"}
        if unknown:
            raise ConfigError(f"{p}: tasks[{i}]: unknown option(s) {', '.join(sorted(unknown))}")
        path = t["path"]
        if not path.startswith("package:") and not Path(path).is_absolute():
            path = str((p.parent / path).resolve())  # relative to the suite file
        out.append(TaskSpec(**{**t, "path": path}))
    return Suite(out)


# ---------------------------------------------------------------------------------------------------------------
# Loaders


def _open_text(path: str) -> str:
    if path.startswith("package:"):
        return resources.files("bapo").joinpath("resources", path.split(":", 1)[1]).read_text(encoding="utf-8")
    p = Path(path)
    if not p.exists():
        raise DataError(Problem(path, 0, "file", "not found"))
    if p.suffix == ".gz":
        with gzip.open(p, "rt", encoding="utf-8") as f:
            return f.read()
    return p.read_text(encoding="utf-8")


def _records(path: str) -> list[tuple[int | str, Any]]:
    text = _open_text(path)
    name = path.removesuffix(".gz")
    if name.endswith(".json"):
        data = json.loads(text)
        return [(f"record {i}", r) for i, r in enumerate(data if isinstance(data, list) else [data], 1)]
    if name.endswith(".csv"):
        return [(i, row) for i, row in enumerate(csv.reader(text.splitlines()), 1) if row]
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(Problem(path, i, "json", f"malformed JSON ({e.msg})")) from None
    return out


def _subset(items: list, spec: TaskSpec) -> list:
    if spec.limit and len(items) > spec.limit:
        idx = sorted(random.Random(spec.seed).sample(range(len(items)), spec.limit))
        return [items[i] for i in idx]
    return items


LETTERS = "ABCDEFGHIJ"


def _mc_record(rec: Any, where: tuple[str, int | str]) -> McItem:
    if isinstance(rec, list):  # MMLU CSV: question, A, B, C, D, answer letter
        if len(rec) < 4 or rec[-1].strip() not in LETTERS[: len(rec) - 2]:
            raise DataError(Problem(*where, "answer", "expected question, choices..., answer letter"))
        return McItem(f"Question: {rec[0]}\nAnswer:", rec[1:-1], LETTERS.index(rec[-1].strip()))
    if not isinstance(rec, dict):
        raise DataError(Problem(*where, "record", "expected an object"))
    if "query" in rec:  # llm-foundry
        choices, gold = rec.get("choices"), rec.get("gold")
        if not isinstance(choices, list) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise DataError(Problem(*where, "gold", "expected choices (a list) and gold (an index into it)"))
        q = rec["query"]
        return McItem(q + "\nAnswer:" if q.startswith("Question:") else q, choices, gold)
    q = rec.get("question", rec.get("question_stem"))
    ch = rec.get("choices")
    if isinstance(q, dict):  # original ARC / OpenBookQA JSONL: {"question": {"stem", "choices": [...]}}
        ch, q = q.get("choices"), q.get("stem")
    if isinstance(ch, dict):  # hub layout: {"text": [...], "label": [...]}
        texts, labels = ch.get("text", []), ch.get("label", [])
    elif isinstance(ch, list):
        texts, labels = [c.get("text") for c in ch], [c.get("label") for c in ch]
    else:
        raise DataError(Problem(*where, "choices", "missing"))
    key = str(rec.get("answerKey", "")).strip()
    if not isinstance(q, str) or key not in labels:
        raise DataError(Problem(*where, "answerKey", f"'{key}' is not one of the choice labels {labels}"))
    return McItem(f"Question: {q}\nAnswer:", texts, labels.index(key))


def load_mc(spec: TaskSpec) -> list[McItem]:
    return _subset([_mc_record(r, (spec.path, line)) for line, r in _records(spec.path)], spec)


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


def load_general_pairs(spec: TaskSpec) -> list[PairItem]:
    items = []
    for line, rec in _records(spec.path):
        where = (spec.path, line)
        if isinstance(rec, dict) and "text" in rec and "score" in rec:  # DSP
            texts, scores = rec["text"], rec["score"]
            best, worst = texts[scores.index(max(scores))], texts[scores.index(min(scores))]
        elif isinstance(rec, dict) and "chosen" in rec and "rejected" in rec:
            best, worst = rec["chosen"], rec["rejected"]
        else:
            raise DataError(Problem(*where, "record", "expected chosen/rejected transcripts or text/score"))
        try:
            msgs, c = hh_messages(best)
            msgs_r, r = hh_messages(worst)
        except ValueError as e:
            raise DataError(Problem(*where, "chosen", str(e))) from None
        if msgs == msgs_r and c.strip() != r.strip() and c.strip() and r.strip() and msgs:
            items.append(PairItem(msgs, c, r))  # pairs that differ only in the final reply
    return _subset(items, spec)


def load_prompts(spec: TaskSpec) -> list[list[dict[str, str]]]:
    """Prompts from JSONL with ``prompt`` / ``instruction`` / ``turns`` (MT-Bench: the first turn) fields."""
    out = []
    for line, rec in _records(spec.path):
        text = None
        if isinstance(rec, dict):
            text = rec.get("prompt") or rec.get("instruction")
            if text is None and isinstance(rec.get("turns"), list) and rec["turns"]:
                text = rec["turns"][0]
        if not isinstance(text, str) or not text.strip():
            raise DataError(Problem(spec.path, line, "prompt", "expected a prompt, instruction or turns field"))
        out.append([{"role": "user", "content": text}])
    return _subset(out, spec)


LOADERS = {"mc": load_mc, "general_pairs": load_general_pairs, "drift": load_prompts, "reward": load_prompts}


def scored_sequences(kind: str, items: list) -> int:
    """How many sequences a model scores (or, for drift/reward, prompts it meets) for one task's items."""
    if kind == "mc":
        return sum(len(i.choices) for i in items)
    if kind == "general_pairs":
        return 2 * len(items)
    return len(items)


def scored_chars(kind: str, items: list) -> int:
    """Characters of text a model reads to score one task's items, each prompt counted once (``logprobs.score``
    packs a prompt's responses into one row); 0 for drift and reward tasks, which are priced per prompt."""
    if kind == "mc":
        return sum(len(i.context) + sum(map(len, i.choices)) for i in items)
    if kind == "general_pairs":
        return sum(sum(len(m["content"]) for m in i.messages) + len(i.chosen) + len(i.rejected) for i in items)
    return 0
