"""A study's plan: its cells (user x method [x balance strategy] x seed), its evaluation suite, and an estimate of its
run time."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from bapo.data.users import user_name
from bapo.errors import ConfigError
from bapo.evaluation.tasks import KINDS, load_suite, spec_items
from bapo.io import atomic_write_text
from bapo.runtime.config import DEFAULT_MODEL
from bapo.runtime.models import resolve_model
from bapo.studies.config import StudyConfig


@dataclass
class Cell:
    """One adapter of the study: a user, a method, the strategy that built its training pairs (``bapo balance``;
    empty = the user's pairs as sampled) and a seed."""

    user: str  # user name (file-safe)
    spec: str
    method: str
    seed: int
    balance: str = ""

    @property
    def arm(self) -> str:
        """What the study compares: the method, and with a balance strategy ``method+strategy``."""
        return f"{self.method}+{self.balance}" if self.balance else self.method

    @property
    def name(self) -> str:
        return f"{self.user}__{self.arm}__s{self.seed}"


def plan(cfg: StudyConfig) -> list[Cell]:
    return [Cell(user_name(u), u, m, s, b) for u in cfg.users for m in cfg.methods for b in cfg.balance or [""]
            for s in range(cfg.seeds)]


def study_suite(cfg: StudyConfig, path: Path) -> Path:
    """The evaluation suite as a YAML file: ARC-Easy and PIQA (knowledge), HH harmless pairs (alignment) and drift on
    AlpacaEval instructions, from ``sources.data_dir``; ``eval_items`` per task (0 = every item)."""
    d = Path(cfg.sources.data_dir).resolve()
    tasks = [{"name": "arc_easy", "kind": "mc", "path": str(d / "knowledge/arc_easy.jsonl")},
             {"name": "piqa", "kind": "mc", "path": str(d / "knowledge/piqa.jsonl")},
             {"name": "hh_harmless", "kind": "general_pairs", "path": str(d / "general/hh_harmless_base_test.jsonl.gz")}]
    for t in tasks:
        if not Path(t["path"]).exists():
            raise ConfigError(f"sources.data_dir: {t['path']} not found (the study's evaluation data)")
        t["limit"] = cfg.eval_items if t["kind"] == "mc" else cfg.alignment_items
    if cfg.drift_prompts:
        tasks.append({"name": "alpaca_drift", "kind": "drift", "path": cfg.sources.path("prompts"),
                      "limit": cfg.drift_prompts, "max_new_tokens": cfg.train.base.max_new_tokens})
    tasks += generative_tasks(cfg, d)
    atomic_write_text(path, yaml.safe_dump({"tasks": tasks}, sort_keys=False))
    return path


def generative_tasks(cfg: StudyConfig, d: Path) -> list[dict]:
    """TriviaQA (16-token answers) and refusal on harmful and on harmless requests (32-token replies), when asked."""
    tasks = []
    if cfg.qa_items:
        tasks.append({"name": "triviaqa", "kind": "qa", "path": str(d / "knowledge/triviaqa_sm_sub.jsonl"),
                      "limit": cfg.qa_items, "max_new_tokens": 16})
    if cfg.refusal_items:
        tasks.append({"name": "refusal_harmful", "kind": "refusal", "path": str(d / "general/hh_harmless_base_test.jsonl.gz"),
                      "limit": cfg.refusal_items, "max_new_tokens": 32})
        tasks.append({"name": "refusal_harmless", "kind": "refusal", "path": cfg.sources.path("prompts"),
                      "limit": cfg.refusal_items, "seed": 1, "max_new_tokens": 32})
    for t in tasks:
        if not Path(t["path"]).exists():
            raise ConfigError(f"sources.data_dir: {t['path']} not found (the study's evaluation data)")
    return tasks


# Seconds on this project's 2-core CPU with SmolLM2-135M, for --dry-run. Training and generation from the default
# study's own run (2026-11-23: 8 adapters trained in 29 min). Scoring is priced per character read, because items
# differ fivefold in length: the decisive study (2026-11-23) scored ARC-Easy's 527k characters in 201 s, PIQA's
# 462k in 236 s and 500 HH pairs' 391k in 174 s (2.0-2.6k characters/s), 40 drift prompts in 9 s and 64 held-out
# pairs in 23-27 s per model.
SECONDS_PER_PAIR_EPOCH = {"bapo": 1.9, "other": 1.5}  # replay as bapo (1.65 measured); kl x 1.3 for its extra
# forward pass (2.4 s measured: studies/compare.yaml, 2026-11-24, 2 threads, 9.5 s per step of 4 pairs)
SECONDS_PER_SCORED_CHAR = 4.5e-4
SECONDS_PER_DRIFT_PROMPT = 0.25
SECONDS_PER_HOLDOUT_PAIR = 0.4
SECONDS_PER_GENERATED_ANSWER = 0.6


def estimate_seconds(cfg: StudyConfig, eval_seconds_per_model: float) -> float:
    """A rough wall-time estimate: training pairs x epochs, base responses, and every model's evaluation. ``workers``
    is not counted: on the 2-core CPU these prices come from, 2 workers gave 0.95-1.16x (docs/PERFORMANCE.md)."""
    cells = plan(cfg)
    per_pair = {m: SECONDS_PER_PAIR_EPOCH["bapo" if m in ("bapo", "replay", "kl") else "other"] * (1.3 if m == "kl" else 1)
                for m in cfg.methods}
    pairs = cfg.pair_budget if cfg.balance else cfg.pairs_per_user
    train = sum(pairs * cfg.train.epochs * per_pair[c.method] for c in cells)
    gen_users = {c.user for c in cells if c.method in ("bapo", "replay", "kl")}
    simulated = sum(u.startswith("psoups") for u in cfg.users)
    gen = (len(gen_users) * cfg.pairs_per_user + (3 + cfg.candidate_samples) * cfg.pairs_per_user * simulated
           + cfg.drift_prompts) * SECONDS_PER_GENERATED_ANSWER
    gen += balance_seconds(cfg, simulated)
    scaled = frontier_models(cfg, cells)
    evals = ((len(cells) + 1 + scaled) * eval_seconds_per_model
             + (len(cells) + scaled) * cfg.holdout_pairs * SECONDS_PER_HOLDOUT_PAIR)
    return (train + gen + evals) * model_scale(cfg.train.model)


def frontier_scales(cfg: StudyConfig) -> list[float]:
    """The scales the DPO adapters are evaluated at again (1.0 is the adapter itself, already evaluated)."""
    return [s for s in cfg.frontier_scales if s != 1.0]


def frontier_models(cfg: StudyConfig, cells: list[Cell]) -> int:
    """How many scaled DPO adapters the frontier evaluates (each DPO cell at each scale below 1)."""
    return sum(c.method == "dpo" for c in cells) * len(frontier_scales(cfg))


def balance_seconds(cfg: StudyConfig, simulated: int) -> float:
    """Candidate answers for simulated users' balanced pairs (none: B prompts; uniform and bpo: about sqrt(B)),
    plus bpo's per-pair gradients (about one forward-backward of a pair each), per seed."""
    if not cfg.balance:
        return 0.0
    k, b = cfg.balance_responses, cfg.pair_budget
    prompts = {"none": b, "uniform": math.isqrt(b), "bpo": math.isqrt(b)}
    per_seed = sum(prompts[s] * k * SECONDS_PER_GENERATED_ANSWER for s in cfg.balance)
    grads = math.isqrt(b) * k * (k - 1) / 2 * SECONDS_PER_PAIR_EPOCH["other"] if "bpo" in cfg.balance else 0.0
    return simulated * cfg.seeds * (per_seed + grads)


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


def eval_size(suite_path: Path) -> tuple[int, float]:
    """Scored sequences per model, and the seconds their scoring takes on the project's CPU."""
    n, seconds = 0, 0.0
    for t in load_suite(str(suite_path)).tasks:
        items, kind = spec_items(t), KINDS[t.kind]
        n += kind.sequences(items)
        seconds += kind.chars(items) * SECONDS_PER_SCORED_CHAR
        seconds += len(items) * SECONDS_PER_DRIFT_PROMPT if t.kind == "drift" else 0.0
        if t.kind in ("qa", "refusal", "reward"):  # each model writes its own answers
            seconds += len(items) * SECONDS_PER_GENERATED_ANSWER * t.max_new_tokens / 64
    return n, seconds


def print_plan(cfg: StudyConfig, cells: list[Cell], n_eval: int, est: float, console: Console) -> None:
    t = Table(title=f"study plan: {len(cells)} adapters", show_lines=False)
    for col in ("user", "methods", *(["balance"] if cfg.balance else []), "seeds"):
        t.add_column(col)
    for u in cfg.users:
        t.add_row(u, ", ".join(cfg.methods), *([", ".join(cfg.balance)] if cfg.balance else []), str(cfg.seeds))
    console.print(t)
    tc = cfg.train
    pairs = cfg.pair_budget if cfg.balance else cfg.pairs_per_user
    steps = math.ceil(pairs / tc.batch_size) * tc.epochs
    console.print(f"sizes: {pairs}{' balanced' if cfg.balance else ''} training + {cfg.holdout_pairs} held-out pairs per user; {tc.epochs:g} "
                  f"epochs, batch {tc.batch_size} = {steps:g} steps per adapter; evaluation: "
                  f"{cfg.eval_items or 'all'} items per knowledge task, {cfg.alignment_items or 'all'} alignment pairs, "
                  f"{cfg.drift_prompts} drift prompts = {n_eval} scored sequences per model ({len(cells) + 1} models"
                  f"{f' + {frontier_models(cfg, cells)} scaled DPO adapters' if frontier_models(cfg, cells) else ''}); "
                  f"max length {tc.data.max_length} tokens")
    console.print(f"estimated run time from nothing: ~{est / 60:.0f} min (2-core CPU timings; cached cells are free)")
