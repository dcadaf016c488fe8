"""A study's wall time in one process against ``--workers 2`` (two processes with half the threads each).

    python benchmarks/bench_study_workers.py [--repeats 2] [--pairs 32] [--eval-items 100]

A small study with the embedded model, the decisive study's shape at a fraction of its size (flip:1, dpo and bapo, one
seed, ARC-Easy + PIQA + HH harmless + drift), run from an empty cache each time, alternating one process and two.
Before any timing counts, the two must produce byte-identical adapters and identical per-item scores. Prints each
run's wall time split into training and evaluation, and the speed-up (min / median / max). Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import print_header, print_speedups  # benchmarks/common.py, beside this script

ROOT = Path(__file__).resolve().parent.parent


def study_yaml(out: Path, a, workers: int) -> Path:
    cfg = {"users": ["flip:1"], "methods": ["dpo", "bapo"], "seeds": 1, "out": str(out), "workers": workers,
           "pairs_per_user": a.pairs, "holdout_pairs": 16, "eval_items": a.eval_items,
           "alignment_items": a.eval_items // 2, "drift_prompts": 10, "sources": {"data_dir": a.data_dir},
           "train": {"epochs": 1, "lr": 0.0005}}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(a, tmp: Path, name: str, workers: int) -> dict:
    out = tmp / name
    cache = tmp / f"{name}-cache"
    env = {**os.environ, "BAPO_CACHE_DIR": str(cache), "TQDM_DISABLE": "1"}
    # an empty cache but the embedded model's safetensors conversion (done once, not part of a study's work)
    from bapo.runtime.models import cache_root, resolve_model

    resolve_model("smollm2-135m-instruct")
    cache.mkdir()
    (cache / "models").symlink_to(cache_root() / "models")
    t0 = time.perf_counter()
    p = subprocess.run([str(ROOT / ".venv/bin/bapo") if (ROOT / ".venv/bin/bapo").exists() else "bapo", "study",
                        "--config", str(study_yaml(out, a, workers))], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"study failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    trained = max((out / "cells" / c / "run.json").stat().st_mtime for c in os.listdir(out / "cells"))
    started = min((out / "cells" / c / "config.yaml").stat().st_mtime for c in os.listdir(out / "cells"))
    return {"wall": wall, "train": trained - started, "out": out}


def same(x: dict, y: dict) -> None:
    for cell in sorted(os.listdir(x["out"] / "cells")):
        a = (x["out"] / "cells" / cell / "adapter_model.safetensors").read_bytes()
        b = (y["out"] / "cells" / cell / "adapter_model.safetensors").read_bytes()
        if a != b:
            sys.exit(f"MISMATCH: adapter {cell} differs between one process and two")
    if json.loads((x["out"] / "eval/item_scores.json").read_text()) != \
            json.loads((y["out"] / "eval/item_scores.json").read_text()):
        sys.exit("MISMATCH: per-item scores differ between one process and two")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--eval-items", type=int, default=100)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    a = ap.parse_args()
    if not Path(a.data_dir, "knowledge").is_dir():
        sys.exit(f"needs the shared data sets in {a.data_dir} (--data-dir)")
    print_header()
    print(f"study: flip:1 x dpo, bapo x 1 seed, {a.pairs} training + 16 held-out pairs, 1 epoch; {a.eval_items} "
          f"ARC-Easy + {a.eval_items} PIQA items, {a.eval_items // 2} HH pairs, 10 drift prompts; 3 models")
    ratios = []
    with tempfile.TemporaryDirectory(prefix="bench_study_workers.") as t:
        tmp = Path(t)
        for rep in range(a.repeats):
            one = run(a, tmp, f"one-{rep}", 1)
            two = run(a, tmp, f"two-{rep}", 2)
            same(one, two)
            ratios.append(one["wall"] / two["wall"])
            for name, r in (("1 process ", one), ("2 workers ", two)):
                print(f"repeat {rep + 1} {name}: wall {r['wall']:6.1f} s (training {r['train']:5.1f} s, the rest "
                      f"{r['wall'] - r['train']:5.1f} s)")
            print(f"repeat {rep + 1}: identical adapters and per-item scores; speed-up {ratios[-1]:.2f}x")
    print_speedups(ratios)


if __name__ == "__main__":
    main()
