"""A keyed on-disk cache of base responses, reference log-probs, per-item evaluation scores and prompt vectors.

SQLite rather than a directory of files: every batch is one transaction, so a killed job leaves only whole entries
and a rerun resumes at the first missing key; several processes (one per GPU under accelerate) can share it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

import numpy as np


def make_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=120)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, responses TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS logps (key TEXT PRIMARY KEY, logp REAL NOT NULL, n INTEGER NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS evals (key TEXT PRIMARY KEY, scores TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self.db.commit()

    def _get(self, table: str, cols: str, keys: Iterable[str]) -> dict[str, tuple]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, tuple] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT key, {cols} FROM {table} WHERE key IN ({','.join('?' * len(chunk))})"
            for row in self.db.execute(q, chunk):
                out[row[0]] = row[1:]
        return out

    def get_generations(self, keys: Iterable[str]) -> dict[str, list[str]]:
        return {k: json.loads(v[0]) for k, v in self._get("generations", "responses", keys).items()}

    def put_generations(self, items: dict[str, list[str]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO generations VALUES (?, ?)",
                                [(k, json.dumps(v, ensure_ascii=False)) for k, v in items.items()])

    def get_logps(self, keys: Iterable[str]) -> dict[str, tuple[float, int]]:
        return {k: (v[0], v[1]) for k, v in self._get("logps", "logp, n", keys).items()}

    def put_logps(self, items: dict[str, tuple[float, int]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO logps VALUES (?, ?, ?)",
                                [(k, v[0], v[1]) for k, v in items.items()])

    def get_eval(self, key: str) -> dict[str, list[float]] | None:
        row = self._get("evals", "scores", [key]).get(key)
        return json.loads(row[0]) if row else None

    def put_eval(self, key: str, scores: dict[str, list[float]]) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO evals VALUES (?, ?)", (key, json.dumps(scores)))

    def get_vectors(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        return {k: np.frombuffer(v[0], dtype=np.float32) for k, v in self._get("vectors", "vector", keys).items()}

    def put_vectors(self, items: dict[str, np.ndarray]) -> None:
        """Float32 vectors, stored as their raw bytes (exact: a vector read back equals the one put)."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                                [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()])

    def close(self) -> None:
        self.db.close()
