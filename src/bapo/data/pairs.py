"""Preference records in, validated :class:`PreferencePair` objects out.

Accepted: JSONL, JSON (a list of objects), CSV, Parquet, or a Hugging Face dataset id, in TRL's preference format:
``prompt``, ``chosen``, ``rejected`` as strings or chat-message lists, and an optional ``user_id``. Every problem is
collected and reported as ``FILE:LINE: field: what is wrong`` before any model work starts.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from bapo.errors import DataError, Problem

ROLES = ("system", "user", "assistant")
T = TypeVar("T")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class PromptedRecord:
    """What every validated record with a prompt has (pairs, and rated answers in bapo.data.feedback): its chat
    messages, the prompt's stable id, and TRL's record form with the prompt and optional user id around its own
    fields."""

    prompt: tuple[tuple[str, str], ...]
    user_id: str | None
    source: str

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.prompt]

    @property
    def prompt_key(self) -> str:
        """Stable id of the prompt (the conversation), shared by all records with the same prompt."""
        return prompt_key(self.prompt)

    def _record(self, **fields: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"prompt": prompt_record(self.prompt), **fields}
        if self.user_id is not None:
            rec["user_id"] = self.user_id
        return rec


@dataclass(frozen=True)
class PreferencePair(PromptedRecord):
    """One validated preference: for ``prompt`` (chat messages), the user prefers ``chosen`` over ``rejected``."""

    prompt: tuple[tuple[str, str], ...]  # ((role, content), ...), the conversation before the response
    chosen: str
    rejected: str
    user_id: str | None = None
    source: str = ""  # "FILE:LINE", for messages that point back at the input

    def to_record(self) -> dict[str, Any]:
        """TRL's format: a single user turn becomes a plain string prompt, anything else stays a message list."""
        return self._record(chosen=self.chosen, rejected=self.rejected)


def prompt_key(prompt: tuple[tuple[str, str], ...]) -> str:
    """Stable id of a prompt (the conversation), shared by every record with the same prompt."""
    return hashlib.sha256(json.dumps(prompt).encode()).hexdigest()[:16]


def prompt_record(prompt: tuple[tuple[str, str], ...]) -> Any:
    """A prompt as TRL writes it: a single user turn as plain text, anything else as a message list."""
    if len(prompt) == 1 and prompt[0][0] == "user":
        return prompt[0][1]
    return [{"role": r, "content": c} for r, c in prompt]


def prompt_messages(prompt: str | list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    if isinstance(prompt, str):
        return (("user", prompt),)
    return tuple((m["role"], m["content"]) for m in prompt)


# ---------------------------------------------------------------------------------------------------------------
# Reading


def iter_records(path: str, split: str) -> Iterator[tuple[int | str, Any]]:
    """Yield ``(line, record)`` pairs; ``record`` is a :class:`Problem` when the line itself cannot be parsed."""
    p = Path(path)
    kind = SUFFIXES.get(p.suffix.lower())
    if not p.exists():
        if kind is None and "/" in path and not path.startswith((".", "/")):
            yield from _iter_hub(path, split)
            return
        raise DataError(Problem(path, 0, "file", "not found"))
    if kind is None:
        raise DataError(Problem(path, 0, "file", f"unknown format '{p.suffix}'; use .jsonl, .json, .csv or .parquet"))
    if kind == "jsonl":
        with p.open(encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    yield i, Problem(path, i, "json", f"malformed JSON ({e.msg} at column {e.colno})")
                except RecursionError:
                    yield i, Problem(path, i, "json", "nested too deeply")
    elif kind == "json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(Problem(path, e.lineno, "json", f"malformed JSON ({e.msg} at column {e.colno})")) from None
        except UnicodeDecodeError as e:
            raise DataError(Problem(path, 0, "file", f"not UTF-8 text (byte {e.start})")) from None
        except RecursionError:
            raise DataError(Problem(path, 0, "json", "nested too deeply")) from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(Problem(path, 1, "json", "expected a list of records"))
        for i, rec in enumerate(data, 1):
            yield f"record {i}", rec
    elif kind == "csv":
        with p.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            try:
                for rec in reader:
                    yield reader.line_num, {k: v for k, v in rec.items() if k is not None}
            except UnicodeDecodeError as e:
                raise DataError(Problem(path, reader.line_num + 1, "file", f"not UTF-8 text (byte {e.start})")) from None
            except csv.Error as e:
                raise DataError(Problem(path, reader.line_num, "csv", str(e))) from None
    else:
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as e:  # pyarrow raises several unrelated types for a damaged file
            raise DataError(Problem(path, 0, "file", f"unreadable Parquet ({e})")) from None
        for i, rec in enumerate(rows, 1):
            yield f"row {i}", rec


def _iter_hub(name: str, split: str) -> Iterator[tuple[int | str, Any]]:
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown id, unknown split: all one actionable message
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(Problem(name, 0, "file", f"not a local file, and loading it from the Hugging Face hub failed: {msg}")) from None
    for i, rec in enumerate(ds, 1):
        yield f"row {i}", rec


# ---------------------------------------------------------------------------------------------------------------
# Validation


def _check_messages(value: list[Any], field: str, where: tuple[str, int | str], problems: list[Problem]) -> bool:
    ok = True
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            problems.append(Problem(*where, f"{field}[{j}]", "expected a message {role, content}"))
            ok = False
        elif m["role"] not in ROLES:
            problems.append(Problem(*where, f"{field}[{j}].role", f"unknown role '{m['role']}'; use {', '.join(ROLES)}"))
            ok = False
        elif not isinstance(m["content"], str):
            problems.append(Problem(*where, f"{field}[{j}].content", f"expected text, got {type(m['content']).__name__}"))
            ok = False
        elif not m["content"].strip():
            problems.append(Problem(*where, f"{field}[{j}].content", "empty"))
            ok = False
    return ok


def read_prompt(rec: dict[str, Any], where: tuple[str, int | str], problems: list[Problem]) -> tuple | None:
    value = rec.get("prompt")
    if value is None:
        problems.append(Problem(*where, "prompt", "missing"))
    elif isinstance(value, str):
        if value.strip():
            return (("user", value),)
        problems.append(Problem(*where, "prompt", "empty"))
    elif isinstance(value, list):
        if not value:
            problems.append(Problem(*where, "prompt", "empty message list"))
        elif _check_messages(value, "prompt", where, problems):
            return prompt_messages(value)
    else:
        problems.append(Problem(*where, "prompt", f"expected text or a list of messages, got {type(value).__name__}"))
    return None


def read_response(rec: dict[str, Any], field: str, where: tuple[str, int | str], problems: list[Problem]) -> str | None:
    value = rec.get(field)
    if value is None:
        problems.append(Problem(*where, field, "missing"))
    elif isinstance(value, str):
        if value.strip():
            return value
        problems.append(Problem(*where, field, "empty"))
    elif isinstance(value, list):
        if len(value) != 1:
            problems.append(Problem(*where, field, f"expected one assistant message, got {len(value)} messages"))
        elif _check_messages(value, field, where, problems):
            if value[0]["role"] != "assistant":
                problems.append(Problem(*where, f"{field}[0].role", f"expected 'assistant', got '{value[0]['role']}'"))
            else:
                return value[0]["content"]
    else:
        problems.append(Problem(*where, field, f"expected text or a list of messages, got {type(value).__name__}"))
    return None


def validate_record(rec: Any, source: str, line: int | str, problems: list[Problem]) -> PreferencePair | None:
    """Check one raw record, appending every problem found; return the pair when it has none."""
    where = (source, line)
    if not isinstance(rec, dict):
        problems.append(Problem(*where, "record", f"expected an object with prompt/chosen/rejected, got {type(rec).__name__}"))
        return None
    before = len(problems)
    prompt = read_prompt(rec, where, problems)
    chosen = read_response(rec, "chosen", where, problems)
    rejected = read_response(rec, "rejected", where, problems)
    user = rec.get("user_id")
    if user is not None and (isinstance(user, bool) or not isinstance(user, (str, int))):
        problems.append(Problem(*where, "user_id", f"expected text or an integer, got {type(user).__name__}"))
    if chosen is not None and rejected is not None and chosen.strip() == rejected.strip():
        problems.append(Problem(*where, "rejected", "identical to chosen"))
    if len(problems) > before or prompt is None or chosen is None or rejected is None:
        return None
    return PreferencePair(prompt, chosen, rejected, None if user in (None, "") else str(user), f"{source}:{line}")


def load_validated(path: str, split: str, validate: Callable[..., T | None]) -> list[T]:
    """Every record of ``path`` through ``validate(rec, source, line, problems)``; a :class:`DataError` listing every
    problem (unparseable lines included) when there is any."""
    problems: list[Problem] = []
    out: list[T] = []
    for line, rec in iter_records(path, split):
        if isinstance(rec, Problem):
            problems.append(rec)
            continue
        item = validate(rec, path, line, problems)
        if item is not None:
            out.append(item)
    if problems:
        raise DataError(problems)
    return out


def load_pairs(path: str, split: str = "train", user: str = "") -> list[PreferencePair]:
    """Read and validate every record of ``path``; raise :class:`DataError` listing all problems, if any.

    With ``user``, keep only records whose ``user_id`` equals it (an unknown id is an error naming the known ones).
    """
    pairs = load_validated(path, split, validate_record)
    if not pairs:
        raise DataError(Problem(path, 0, "file", "no records"))
    if user:
        known = sorted({p.user_id for p in pairs if p.user_id is not None})
        pairs = [p for p in pairs if p.user_id == user]
        if not pairs:
            hint = f"known user ids: {', '.join(known[:20])}" if known else "the data has no user_id field"
            raise DataError(Problem(path, 0, "user_id", f"no records for user '{user}'; {hint}"))
    return pairs


# A user id names the folder of that user's adapter, so it must be a plain folder name.
USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def load_pairs_by_user(path: str, split: str = "train", validate: Callable[..., Any] = validate_record
                       ) -> tuple[dict[str, list], dict[str, list[Problem]]]:
    """Every record of ``path`` validated (as pairs, or by ``validate``: unpaired feedback) and grouped by
    ``user_id``: ``(records per user, problems per user)``; a problem that belongs to no user (an unparseable line, a
    record without a usable ``user_id``) is filed under "".

    A folder stands for one user per file (the file's name without its suffix is the user id).
    """
    p = Path(path)
    if p.is_dir():
        return _load_folder(p, split, validate)
    pairs: dict[str, list] = {}
    problems: dict[str, list[Problem]] = {}
    for line, rec in iter_records(path, split):
        user = str(rec.get("user_id", "")) if isinstance(rec, dict) and rec.get("user_id") is not None else ""
        found: list[Problem] = [rec] if isinstance(rec, Problem) else []
        pair = None if found else validate(rec, path, line, found)
        if not found and not user:
            found.append(Problem(path, line, "user_id", "missing (one adapter per user needs each record's user)"))
        elif not found and not USER_ID.match(user):
            found.append(Problem(path, line, "user_id", f"'{user}' cannot name a folder (letters, digits, . _ -)"))
        if found:
            problems.setdefault(user if USER_ID.match(user) else "", []).extend(found)
        elif pair is not None:
            pairs.setdefault(user, []).append(pair)
    return pairs, problems


def _load_folder(folder: Path, split: str, validate: Callable[..., Any]) -> tuple[dict[str, list], dict[str, list[Problem]]]:
    pairs: dict[str, list] = {}
    problems: dict[str, list[Problem]] = {}
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError(Problem(str(folder), 0, "file", f"no pair files ({', '.join(SUFFIXES)}) in this folder"))
    for f in files:
        user = f.stem
        if not USER_ID.match(user):
            problems.setdefault("", []).append(Problem(str(f), 0, "file", "its name cannot name a user's folder"))
            continue
        try:
            items = load_validated(str(f), split, validate)
        except DataError as e:
            problems[user] = e.problems
            continue
        if not items:
            problems[user] = [Problem(str(f), 0, "file", "no records")]
        else:
            pairs[user] = [dataclasses.replace(p, user_id=user) for p in items]
    return pairs, problems


P = TypeVar("P", bound=PromptedRecord)


def split_holdout(pairs: list[P], fraction: float, seed: int) -> tuple[list[P], list[P]]:
    """Seeded split *by prompt*, so no held-out prompt was ever seen in training. Returns ``(train, held_out)``."""
    if fraction <= 0:
        return list(pairs), []
    keys = sorted({p.prompt_key for p in pairs})
    if len(keys) < 2:
        raise DataError(Problem(pairs[0].source.rsplit(":", 1)[0], 0, "prompt", "a holdout split needs at least 2 distinct prompts; use --holdout 0 or --eval-data"))
    random.Random(seed).shuffle(keys)
    n_held = min(len(keys) - 1, max(1, math.ceil(fraction * len(keys))))
    held = set(keys[:n_held])
    return [p for p in pairs if p.prompt_key not in held], [p for p in pairs if p.prompt_key in held]
