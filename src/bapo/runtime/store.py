"""A keyed on-disk cache of base responses, reference log-probs, per-item evaluation scores and prompt vectors.

SQLite rather than a directory of files: every batch is one transaction, so a killed job leaves only whole entries
(a reader sees an entry whole or not at all) and a rerun resumes at the first missing key; any number of processes
(one per GPU under torchrun or accelerate, a study's scoring workers) can open and share it at once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from filelock import FileLock


def make_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


TABLES = ("generations (key TEXT PRIMARY KEY, responses TEXT NOT NULL)",
          "logps (key TEXT PRIMARY KEY, logp REAL NOT NULL, n INTEGER NOT NULL)",
          "evals (key TEXT PRIMARY KEY, scores TEXT NOT NULL)",
          "vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Opening is serialized by a lock file beside the database. Switching a new file to WAL needs an exclusive
        # lock, and SQLite answers "database is locked" at once there, without waiting out its busy timeout, when
        # another process holds the file (8 ranks opening a new cache together failed 1 time in 10). A lock file
        # rather than "rank 0 first, then a barrier": it covers every way processes meet here (torchrun ranks,
        # a study's workers, two unrelated jobs sharing ~/.cache/bapo) and needs no process group. After opening,
        # WAL lets readers run beside the one writer, and writers wait their turn on the busy timeout.
        with FileLock(f"{self.path}.lock"):
            self.db = sqlite3.connect(self.path, timeout=120)
            self.db.execute("PRAGMA journal_mode=WAL")
            with self.db:
                for table in TABLES:
                    self.db.execute(f"CREATE TABLE IF NOT EXISTS {table}")

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
