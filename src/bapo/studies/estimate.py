"""What a study costs on this project's 2-core CPU, for ``--dry-run``: from nothing, and what its caches still leave
(a rerun trains only cells without ``run.json`` and scores only models whose scores are not cached)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from bapo.data.users import user_name
from bapo.evaluation.runner import unscored
from bapo.evaluation.tasks import KINDS, load_suite, spec_items
from bapo.runtime.config import DEFAULT_MODEL
from bapo.runtime.models import dtype_name, resolve_device, resolve_dtype, resolve_model
from bapo.runtime.workers import scoring_threads
from bapo.studies.config import StudyConfig
from bapo.studies.plan import Cell, balance_dir, cell_dir, eval_config, frontier_config, frontier_models

@dataclass(frozen=True)
class Prices:
    """Seconds per unit of work on this project's 2-core CPU with SmolLM2-135M, in one dtype."""

    pair_epoch: float  # a training pair once, methods without base responses
    anchored_pair_epoch: float  # the same for bapo and replay (kl: x 1.3 for its extra forward pass)
    scored_char: float  # scoring is priced per character read: items differ fivefold in length
    drift_prompt: float
    holdout_pair: float
    generated_answer: float  # 64 new tokens


# float32: training and generation from the default study's own run (2026-11-23: 8 adapters trained in 29 min); the
# decisive study (2026-11-23) scored ARC-Easy's 527k characters in 201 s, PIQA's 462k in 236 s and 500 HH pairs' 391k
# in 174 s (2.0-2.6k characters/s), 40 drift prompts in 9 s and 64 held-out pairs in 23-27 s per model; replay trains
# as bapo (1.65 measured), kl at 2.4 s (studies/compare.yaml, 2026-11-24, 9.5 s per step of 4 pairs).
# bfloat16: float32's prices divided by bfloat16's measured speed-up, benchmarks/bench_dtype.py, 2026-12-05 (medians
# of 3 alternating fresh processes, docs/PERFORMANCE.md): a DPO step 1.65x, a BAPO step (its reference in the batch)
# 1.22x, scoring 1.51x, generation through an adapter 1.36x (17:55, after the contiguous head; most answers a study
# generates are adapters'; the base model's generation gained 1.8-2x).
PRICES = {
    "float32": Prices(1.5, 1.9, 4.5e-4, 0.25, 0.4, 0.6),
    "bfloat16": Prices(1.5 / 1.65, 1.9 / 1.22, 4.5e-4 / 1.51, 0.25 / 1.51, 0.4 / 1.51, 0.6 / 1.36),
}


def prices(cfg: StudyConfig) -> Prices:
    """The prices of the dtype the study computes in (``train.dtype``; auto as resolved on this machine); float16
    is priced as bfloat16."""
    name = dtype_name(resolve_dtype(cfg.train.dtype, resolve_device(cfg.train.device)))
    return PRICES["float32" if name == "float32" else "bfloat16"]


ANCHORED = ("bapo", "replay", "kl")  # the methods that train on base responses


@dataclass
class Work:
    """What a run of the study has to do."""

    train: list[Cell]  # cells to train
    base_users: set[str] = field(default_factory=set)  # users whose base responses are to be generated
    new_users: set[str] = field(default_factory=set)  # users whose pairs are to be built (simulated: answers too)
    balance: set[tuple[str, str, int]] = field(default_factory=set)  # (simulated user, strategy, seed) to build
    models: int = 0  # models to score on the suite: the base model, adapters, scaled DPO adapters
    base_model: bool = True  # the base model among them (its drift answers are generated once)


def work_from_nothing(cfg: StudyConfig, cells: list[Cell]) -> Work:
    return Work(list(cells), {c.user for c in cells if c.loss in ANCHORED}, {c.user for c in cells},
                {(c.user, c.balance, c.seed) for c in cells if c.balance and c.spec.startswith("psoups:")},
                len(cells) + 1 + frontier_models(cfg, cells))


def work_left(cfg: StudyConfig, cells: list[Cell], suite: Path, out: Path) -> Work:
    """What a rerun would still do. Scores are looked up in the cache by the keys ``bapo eval`` uses; a cell
    interrupted mid-training is priced whole (its checkpoint is not read)."""
    done = [c for c in cells if (cell_dir(out, c) / "run.json").exists()]
    todo = [c for c in cells if c not in done]
    anchored_done = {c.user for c in done if c.loss in ANCHORED}
    work = Work(todo, {c.user for c in todo if c.loss in ANCHORED} - anchored_done,
                {u for u in map(user_name, cfg.users) if not (out / "users" / f"{u}.json").exists()},
                {(c.user, c.balance, c.seed) for c in todo if c.balance and c.spec.startswith("psoups:")
                 and not (balance_dir(out, c) / "report.json").exists()})
    left, left_scaled = unscored_labels(cfg, done, suite, out)
    work.base_model = "base" in left
    work.models = len(left) + len(todo) + frontier_models(cfg, todo) + len(left_scaled)
    return work


def unscored_labels(cfg: StudyConfig, done: list[Cell], suite: Path, out: Path) -> tuple[list[str], list[str]]:
    """The models of these trained cells whose scores the cache does not hold yet: the base model and adapters
    (``base``, a cell's name), and the DPO adapters at the frontier's scales (``NAME@SCALE``)."""
    with scoring_threads(cfg.workers):  # the cache read as the study's run reads it (bapo.studies.run)
        left = unscored(eval_config(cfg, done, suite, out))
        scaled = frontier_config(cfg, done, suite, out)
        left_scaled = [label for label in unscored(scaled) if label != "base"] if scaled else []
    return left, left_scaled


def scored_cells(cfg: StudyConfig, cells: list[Cell], suite: Path, out: Path) -> list[Cell]:
    """The cells whose every model the cache holds (the adapter, and a DPO adapter at each frontier scale too), for
    ``bapo study --so-far``; none while the base model is not scored."""
    done = [c for c in cells if (cell_dir(out, c) / "run.json").exists()]
    left, left_scaled = unscored_labels(cfg, done, suite, out)
    if "base" in left:
        return []
    missing = set(left) | {label.rsplit("@", 1)[0] for label in left_scaled}
    return [c for c in done if c.name not in missing]


def price(cfg: StudyConfig, work: Work, eval_seconds_per_model: float) -> float:
    """A rough wall-time estimate of ``work``: training pairs x epochs, generation, every model's evaluation.
    ``workers`` is not counted: on the 2-core CPU these prices come from, 2 workers gave 0.95-1.16x
    (docs/PERFORMANCE.md)."""
    p = prices(cfg)
    pairs = cfg.pair_budget if cfg.balance else cfg.pairs_per_user
    train = sum(pairs * cfg.train.epochs * (p.anchored_pair_epoch if c.loss in ANCHORED else p.pair_epoch)
                * (1.3 if c.loss == "kl" else 1)
                * (2 if c.unpaired else 1)  # KTO: each pair as two rated answers, each a row like a pair's
                for c in work.train)
    simulated = sum(u.startswith("psoups") for u in cfg.users if user_name(u) in work.new_users)
    answers = (len(work.base_users) * cfg.pairs_per_user + (3 + cfg.candidate_samples) * cfg.pairs_per_user * simulated
               + cfg.drift_prompts * work.base_model)
    holdouts = work.models - work.base_model  # every adapter also scores its user's held-out pairs
    evals = work.models * eval_seconds_per_model + holdouts * cfg.holdout_pairs * p.holdout_pair
    return (train + answers * p.generated_answer + balance_seconds(cfg, work, p) + evals) * model_scale(cfg.train.model)


def balance_seconds(cfg: StudyConfig, work: Work, p: Prices) -> float:
    """Candidate answers for simulated users' balanced pairs (none: B prompts; uniform and bpo: about sqrt(B)),
    plus bpo's per-pair gradients (about one forward-backward of a pair each)."""
    k, b = cfg.balance_responses, cfg.pair_budget
    prompts = {"none": b, "uniform": math.isqrt(b), "bpo": math.isqrt(b)}
    grads = math.isqrt(b) * k * (k - 1) / 2 * p.pair_epoch
    return sum(prompts[s] * k * p.generated_answer + (grads if s == "bpo" else 0.0)
               for _, s, _ in work.balance)


def model_scale(model: str) -> float:
    """Time scales with parameters; 1.0 for the embedded model, else read from the model's config if we can."""
    if model == DEFAULT_MODEL:
        return 1.0
    from transformers import AutoConfig

    try:
        c = AutoConfig.from_pretrained(resolve_model(model))
        params = 12 * c.num_hidden_layers * c.hidden_size ** 2 + c.vocab_size * c.hidden_size
        return params / 135e6
    except Exception:  # an estimate only: any model we cannot read is priced as unknown
        return float("nan")


def eval_size(suite_path: Path, p: Prices = PRICES["float32"]) -> tuple[int, float]:
    """Scored sequences per model, and the seconds their scoring takes on the project's CPU."""
    n, seconds = 0, 0.0
    for t in load_suite(str(suite_path)).tasks:
        items, kind = spec_items(t), KINDS[t.kind]
        n += kind.sequences(items)
        seconds += kind.chars(items) * p.scored_char
        seconds += len(items) * p.drift_prompt if t.kind == "drift" else 0.0
        if t.kind in ("qa", "refusal", "reward"):  # each model writes its own answers
            seconds += len(items) * p.generated_answer * t.max_new_tokens / 64
    return n, seconds


@dataclass
class Estimate:
    """The study's estimated wall time from nothing and, when it has a cache, what a rerun would still take."""

    from_nothing: float
    left: float | None = None
    train_left: int = 0
    models_left: int = 0


def estimate(cfg: StudyConfig, cells: list[Cell], suite: Path, out: Path, eval_seconds_per_model: float) -> Estimate:
    est = Estimate(price(cfg, work_from_nothing(cfg, cells), eval_seconds_per_model))
    if (out / "cells").exists():
        left = work_left(cfg, cells, suite, out)
        est.left, est.train_left, est.models_left = price(cfg, left, eval_seconds_per_model), len(left.train), left.models
    return est


def print_estimate(cfg: StudyConfig, cells: list[Cell], est: Estimate, console: Console) -> None:
    dtype = "float32" if prices(cfg) is PRICES["float32"] else "bfloat16"
    console.print(f"estimated run time from nothing: ~{est.from_nothing / 60:.0f} min (2-core CPU timings in {dtype})")
    if est.left is not None:
        models = len(cells) + 1 + frontier_models(cfg, cells)
        console.print(f"left after what the cache holds: ~{est.left / 60:.0f} min ({est.train_left} of {len(cells)} "
                      f"adapters to train, {est.models_left} of {models} models to score)")
