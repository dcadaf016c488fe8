"""Carry a long study's scores from one of this project's sessions to the next, through git.

This project's machines keep nothing between sessions but the repository: a new checkout has no study folder and
no bapo cache, and on 2026-12-06 the frontier study's eleven hours of scores were lost that way. A user's machine
keeps both (``out`` and ``cache_dir`` are where they put them), so this is a project script, not a ``bapo`` command.

    python studies/carry.py pack studies/frontier_rivals.yaml     # at the end of a session: then commit the file
    python studies/carry.py unpack studies/frontier_rivals.yaml   # first thing in the next one, then rerun the study

``pack`` writes ``studies/carried/<config name>.jsonl.gz``: every per-item evaluation score in the study's bapo cache
(its ``evals`` table: each model's scores on each task, keyed by the model's weights digest, scale, task, settings
and thread count, so they serve only the identical model and task); each finished adapter's record (its folder's
files, without the weights, and the weights' digest); the users' pairs; and the study's budget probes
(``OUT/budget_check/probes.json``, with the digests of the weights they probed). ``unpack`` adds them back, keeping
whatever the machine already holds: an adapter comes back as its record (``bapo.runtime.adapters.WEIGHTS_DIGEST`` in
place of its weights), which ``bapo study`` takes as trained and which finds its scores under its digest, so the
study goes on from the last adapter it scored. The weights themselves are not carried (19 MB each here): what needs
them (a budget probe, a score not cached) says so. Identical files (a cell's copy of its user's pairs) are stored
once. Before 2026-12-07 only the scores were carried, and a new machine lost a study's 30 scored adapters: it could
not tell which scores were whose, nor retrain weights with the same digest on another CPU.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import torch

from bapo.io import atomic_write_text, cache_root
from bapo.options import load_yaml
from bapo.runtime.adapters import WEIGHTS_DIGEST, read_adapter
from bapo.runtime.models import cpu_has_bf16, cpu_name
from bapo.runtime.store import Store
from bapo.studies.config import StudyConfig
from bapo.studies.estimate import scored_cells
from bapo.studies.plan import cell_dir, plan


def carried(config: Path) -> Path:
    return Path(__file__).parent / "carried" / f"{config.stem}.jsonl.gz"


def paths(config: Path) -> tuple[Path, list[Path]]:
    """The study's bapo cache database, and its budget probes with the digests of the weights they probed."""
    cfg = load_yaml(config, StudyConfig)
    check = Path(cfg.out) / "budget_check"
    return cache_root(cfg.train.cache_dir) / "reference.sqlite", [check / "probes.json", check / "digests.json"]


def scored_adapters(config: Path) -> list[Path]:
    """The study's adapters whose every score the cache holds (records included): a cell trained but not yet scored
    stays behind, to be trained again, since its weights are not carried. A full fine-tuning cell's weights are the
    model itself, so it is not carried either. Scores are keyed by thread count: pack at the study's."""
    cfg = load_yaml(config, StudyConfig)
    out = Path(cfg.out)
    if not (out / "suite.yaml").exists():
        return []
    cells = [cell_dir(out, c) for c in scored_cells(cfg, plan(cfg), out / "suite.yaml", out)]
    return sorted(d for d in cells if (d / "adapter_config.json").exists())


def users_files(config: Path) -> list[Path]:
    users = Path(load_yaml(config, StudyConfig).out) / "users"
    return sorted(f for f in users.glob("*") if f.is_file() and not f.name.startswith(".")) if users.is_dir() else []


def blob(text: str, blobs: dict[str, str]) -> str:
    """``text`` stored once in ``blobs``, under its digest."""
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    blobs[key] = text
    return key


def here() -> str:
    """``machine.json`` of an adapter trained and scored on this machine: a study carried between machines says which
    CPU made each of its adapters (a record carried in keeps its own)."""
    return json.dumps({"cpu": cpu_name(), "cpu_bf16_units": cpu_has_bf16(), "torch": torch.__version__}) + "\n"


def pack(config: Path) -> None:
    db_path, files = paths(config)
    db = sqlite3.connect(db_path)
    rows = db.execute("SELECT key, scores FROM evals ORDER BY key").fetchall()
    lines = [json.dumps({"eval": key, "scores": json.loads(scores)}) for key, scores in rows]
    lines += [json.dumps({"file": f.name, "content": json.loads(f.read_text())}) for f in files if f.exists()]
    blobs: dict[str, str] = {}
    cells = scored_adapters(config)
    for cell in cells:  # its text files: the weights, their checkpoints and the trainer's pickled arguments stay behind
        kept = {f.name: blob(f.read_text(), blobs) for f in sorted(cell.iterdir())
                if f.is_file() and f.suffix in (".json", ".jsonl", ".yaml", ".md") and not f.name.startswith(".")}
        kept.setdefault("machine.json", blob(here(), blobs))
        lines.append(json.dumps({"cell": cell.name, "digest": read_adapter(cell).digest, "files": kept}))
    lines += [json.dumps({"user_file": f.name, "blob": blob(f.read_text(), blobs)}) for f in users_files(config)]
    lines += [json.dumps({"blob": key, "text": text}) for key, text in sorted(blobs.items())]
    out = carried(config)
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:  # the same scores, the same bytes
        f.write("".join(line + "\n" for line in lines).encode())
    tmp.replace(out)
    print(f"{out}: {len(rows)} evaluation entries, {len(cells)} adapters' records, "
          f"{', '.join(f.name for f in files if f.exists()) or 'no probes'} ({out.stat().st_size / 1e6:.1f} MB)")


def unpack(config: Path) -> None:
    db_path, files = paths(config)
    src = carried(config)
    if not src.exists():
        raise SystemExit(f"{src}: nothing carried for this study")
    evals, found, cells, users, blobs = [], {}, [], [], {}
    with gzip.open(src, "rt") as f:
        for line in filter(str.strip, f):  # an empty carry (nothing scored yet) is an empty file
            entry = json.loads(line)
            if "eval" in entry:
                evals.append((entry["eval"], json.dumps(entry["scores"])))
            elif "cell" in entry:
                cells.append(entry)
            elif "user_file" in entry:
                users.append(entry)
            elif "blob" in entry:
                blobs[entry["blob"]] = entry["text"]
            else:
                found[entry["file"]] = entry["content"]
    store = Store(db_path)  # creates the cache and its tables where the machine is new
    with store.db:
        store.db.executemany("INSERT OR IGNORE INTO evals VALUES (?, ?)", evals)
    store.close()
    for f in files:
        if f.name in found:
            f.parent.mkdir(parents=True, exist_ok=True)
            held = json.loads(f.read_text()) if f.exists() else {}
            atomic_write_text(f, json.dumps({**found[f.name], **held}))
    out = Path(load_yaml(config, StudyConfig).out)
    for entry in users:
        target = out / "users" / entry["user_file"]
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, blobs[entry["blob"]])
    restored = [entry["cell"] for entry in cells if restore_cell(out / "cells" / entry["cell"], entry, blobs)]
    print(f"{db_path}: {len(evals)} evaluation entries carried in; {out / 'cells'}: {len(restored)} adapters' records "
          f"(of {len(cells)} carried; the rest were here); {files[0].parent}: {', '.join(found) or 'nothing'}")


def restore_cell(cell: Path, entry: dict, blobs: dict[str, str]) -> bool:
    """A carried adapter's record in its cell's folder, unless the cell is trained here already; a half-trained
    cell here gives way to it. Written beside, then renamed: a kill leaves no half-written record."""
    if (cell / "run.json").exists():
        return False
    tmp = cell.with_name(f".{cell.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, key in entry["files"].items():
        (tmp / name).write_text(blobs[key])
    (tmp / WEIGHTS_DIGEST).write_text(entry["digest"] + "\n")
    shutil.rmtree(cell, ignore_errors=True)
    tmp.rename(cell)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["pack", "unpack"])
    ap.add_argument("config", type=Path, help="the study's config")
    args = ap.parse_args()
    (pack if args.action == "pack" else unpack)(args.config)


if __name__ == "__main__":
    main()
