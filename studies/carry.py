"""Carry a long study's scores from one of this project's sessions to the next, through git.

This project's machines keep nothing between sessions but the repository: a new checkout has no study folder and
no bapo cache, and on 2026-12-06 the frontier study's eleven hours of scores were lost that way. A user's machine
keeps both (``out`` and ``cache_dir`` are where they put them), so this is a project script, not a ``bapo`` command.

    python studies/carry.py pack studies/frontier_rivals.yaml     # at the end of a session: then commit the file
    python studies/carry.py unpack studies/frontier_rivals.yaml   # first thing in the next one, then rerun the study

``pack`` writes ``studies/carried/<config name>.jsonl.gz``: every per-item evaluation score in the study's bapo cache
(its ``evals`` table: each model's scores on each task, keyed by the model's weights digest, scale, task, settings
and thread count, so they serve only the identical model and task), and the study's budget probes
(``OUT/budget_check/probes.json``, with the digests of the weights they probed: an adapter trained again with other
weights is probed again). ``unpack`` adds them back, keeping whatever the cache already holds. Adapters are
not carried (megabytes each): a rerun trains them again, and a retrained adapter whose weights differ in a single
bit has another digest, so it is scored afresh rather than paired with scores that are not its own. What is not
carried (generated answers, per-sequence log-probs) is computed again where needed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sqlite3
from pathlib import Path

from bapo.io import atomic_write_text, cache_root
from bapo.options import load_yaml
from bapo.runtime.store import Store
from bapo.studies.config import StudyConfig


def carried(config: Path) -> Path:
    return Path(__file__).parent / "carried" / f"{config.stem}.jsonl.gz"


def paths(config: Path) -> tuple[Path, list[Path]]:
    """The study's bapo cache database, and its budget probes with the digests of the weights they probed."""
    cfg = load_yaml(config, StudyConfig)
    check = Path(cfg.out) / "budget_check"
    return cache_root(cfg.train.cache_dir) / "reference.sqlite", [check / "probes.json", check / "digests.json"]


def pack(config: Path) -> None:
    db_path, files = paths(config)
    db = sqlite3.connect(db_path)
    rows = db.execute("SELECT key, scores FROM evals ORDER BY key").fetchall()
    lines = [json.dumps({"eval": key, "scores": json.loads(scores)}) for key, scores in rows]
    lines += [json.dumps({"file": f.name, "content": json.loads(f.read_text())}) for f in files if f.exists()]
    out = carried(config)
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:  # the same scores, the same bytes
        f.write("".join(line + "\n" for line in lines).encode())
    tmp.replace(out)
    print(f"{out}: {len(rows)} evaluation entries, {', '.join(f.name for f in files if f.exists()) or 'no probes'} "
          f"({out.stat().st_size / 1e6:.1f} MB)")


def unpack(config: Path) -> None:
    db_path, files = paths(config)
    src = carried(config)
    if not src.exists():
        raise SystemExit(f"{src}: nothing carried for this study")
    evals, found = [], {}
    with gzip.open(src, "rt") as f:
        for line in filter(str.strip, f):  # an empty carry (nothing scored yet) is an empty file
            entry = json.loads(line)
            if "eval" in entry:
                evals.append((entry["eval"], json.dumps(entry["scores"])))
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
    print(f"{db_path}: {len(evals)} evaluation entries carried in; {files[0].parent}: {', '.join(found) or 'nothing'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["pack", "unpack"])
    ap.add_argument("config", type=Path, help="the study's config")
    args = ap.parse_args()
    (pack if args.action == "pack" else unpack)(args.config)


if __name__ == "__main__":
    main()
