"""Small file helpers: where bapo keeps its caches, and outputs written to a temporary file beside their target and
renamed into place, so a killed job leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence


def cache_root(cache_dir: str = "") -> Path:
    """``cache_dir``, else ``$BAPO_CACHE_DIR``, else ``$XDG_CACHE_HOME/bapo`` (``~/.cache/bapo``)."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("BAPO_CACHE_DIR"):
        return Path(os.environ["BAPO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bapo"


def _temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, named after its writer (host and process id), after removing those a
    killed writer of ``path`` on this host left behind. Only dead writers' files go: another process writing the same
    path at this moment (two ranks, two workers) keeps its file, so both renames succeed and the last one wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}-*.tmp"):
        pid = stale.name[len(f".{path.name}.{host}-"):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{host}-{os.getpid()}.", suffix=".tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def as_dicts(rows: Sequence[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r) for r in rows]


def csv_text(rows: Sequence[Any]) -> str:
    """CSV of dataclass rows (or dicts); columns are every field seen, in order of first appearance."""
    dicts = as_dicts(rows)
    buf = io.StringIO()
    cols = list(dict.fromkeys(k for r in dicts for k in r)) or ["model"]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(dicts)
    return buf.getvalue()


def atomic_save_figure(fig: Any, path: str | Path, **kwargs: Any) -> None:
    """``fig.savefig`` into a temporary file beside ``path``, renamed into place (the format from ``path``'s suffix)."""
    path = Path(path)
    fd, tmp = _temporary(path)
    os.close(fd)
    try:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def move_files_into(src: str | Path, dst: str | Path) -> None:
    """Rename every file of folder ``src`` into ``dst`` (each rename atomic: a reader sees the old file or the new
    one), then remove ``src``. For outputs a library writes in place (the Trainer's ``save_model``): written to a
    temporary folder beside ``dst`` first, then moved."""
    src, dst = Path(src), Path(dst)
    for f in sorted(src.iterdir()):
        os.replace(f, dst / f.name)
    src.rmdir()
