"""A study's evaluation in one process (all threads) against ``--workers 2`` (two processes, half the threads each),
in the study's own dtype, on its own tasks and adapters.

    python benchmarks/bench_eval_workers.py studies/frontier.yaml CELL_A CELL_B [--repeats 2] [--items 100]

Two of the study's adapters are scored on every task of its suite, each task cut to ``--items`` items (drift to 20
prompts), from a cache that holds only what the reference prepares (as a study's cache does when its models are
scored): one process scoring both adapters one after the other, then two one-thread processes scoring one each side
by side (``bapo.runtime.workers``, what ``bapo study --workers 2`` runs), alternating. Prints each run's wall time,
the speed-up (min / median / max), and which (adapter, task) scores differ between the two: log-prob scores are the
same at any thread count, but in bfloat16 a greedy answer may change with it (then the cache keeps the two apart,
``bapo.evaluation.tasks.generation_key``, and a study must not switch half way).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from rich.console import Console

from common import print_header, print_speedups  # benchmarks/common.py, beside this script

from bapo.evaluation.config import EvalConfig
from bapo.evaluation.runner import candidates, eval_key, prepare, score_into_cache, suite_specs
from bapo.evaluation.tasks import KINDS, generates
from bapo.options import load_yaml
from bapo.runtime.models import cache_root, model_fingerprint, resolve_device, resolve_dtype, resolve_model
from bapo.runtime.reference import weights_cache_id
from bapo.runtime.store import Store
from bapo.runtime.workers import run_jobs, scoring_threads
from bapo.studies.config import StudyConfig
from bapo.studies.plan import eval_config


def trimmed_suite(study: Path, items: int, out: Path) -> Path:
    suite = yaml.safe_load((study / "suite.yaml").read_text())
    for t in suite["tasks"]:
        t["limit"] = min(t.get("limit") or items, 20 if t["kind"] == "drift" else items)
    out.write_text(yaml.safe_dump(suite))
    return out


def cached_scores(cfg: EvalConfig) -> dict:
    """Every adapter's cached scores on every task (None where missing), read with ``bapo eval``'s own keys."""
    cands, personal = candidates(cfg)
    cid = weights_cache_id(model_fingerprint(resolve_model(cfg.model, cfg.cache_dir)),
                           resolve_dtype(cfg.dtype, resolve_device(cfg.device)))
    store = Store(cache_root(cfg.cache_dir) / "reference.sqlite")
    try:
        out = {}
        for c in cands[1:]:
            for t in suite_specs(cfg):
                out[(c.label, t.name)] = store.get_eval(eval_key(cid, c, t.name, t.key(), cfg, KINDS[t.kind].generates))
            for n in c.personal:
                out[(c.label, n)] = store.get_eval(eval_key(cid, c, n, personal[n].key, cfg, generates(personal[n])))
        return out
    finally:
        store.close()


def run(cfg: EvalConfig, warm: Path, tmp: Path, name: str, workers: int) -> tuple[float, dict]:
    cache = tmp / name
    shutil.copytree(warm, cache, symlinks=True)
    cfg = replace(cfg, cache_dir=str(cache))
    labels = [c.label for c in candidates(cfg)[0][1:]]
    with scoring_threads(workers):  # as bapo study does: the cache read at the workers' thread count
        t0 = time.perf_counter()
        if workers == 1:
            score_into_cache(cfg, labels)
        else:
            run_jobs(score_into_cache, [(cfg, [label]) for label in labels], workers, tmp / f"{name}-logs", name,
                     False, threads=torch.get_num_threads())
        wall = time.perf_counter() - t0
        return wall, cached_scores(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="the study's YAML config (its out folder holds the adapters)")
    ap.add_argument("cells", nargs=2, help="two of the study's cells (folder names under OUT/cells)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--items", type=int, default=100, help="items per task (drift: 20 prompts)")
    a = ap.parse_args()
    print_header()
    study = load_yaml(a.config, StudyConfig)
    out = Path(study.out)
    ratios = []
    with tempfile.TemporaryDirectory(prefix="bench_eval_workers.") as t:
        tmp = Path(t)
        ev = eval_config(study, [], trimmed_suite(out, a.items, tmp / "suite.yaml"), tmp)
        ev = replace(ev, adapters=[str(out / "cells" / c) for c in a.cells])
        warm = tmp / "warm"
        warm.mkdir()
        (warm / "models").symlink_to(cache_root(ev.cache_dir) / "models")
        prepare(replace(ev, cache_dir=str(warm)), Console(quiet=True))  # what the reference prepares, once
        print(f"study {out} ({ev.dtype}), adapters {', '.join(a.cells)}; tasks: "
              f"{', '.join(f'{s.name} {s.limit}' for s in suite_specs(ev))}")
        for rep in range(a.repeats):
            one, one_scores = run(ev, warm, tmp, f"one-{rep}", 1)
            two, two_scores = run(ev, warm, tmp, f"two-{rep}", 2)
            missing = [k for k, v in {**one_scores, **two_scores}.items() if v is None]
            if missing:
                sys.exit(f"not scored: {missing}")
            differ = [f"{label}: {task}" for label, task in one_scores
                      if one_scores[label, task] != two_scores[label, task]]
            ratios.append(one / two)
            print(f"repeat {rep + 1}: 1 process x {torch.get_num_threads()} threads {one:6.1f} s, 2 processes x "
                  f"{max(1, torch.get_num_threads() // 2)} thread {two:6.1f} s, speed-up {ratios[-1]:.2f}x; of "
                  f"{len(one_scores)} (adapter, task) scores, differing: {', '.join(differ) or 'none'}")
    print_speedups(ratios)


if __name__ == "__main__":
    main()
