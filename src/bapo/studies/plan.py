"""A study's plan: its cells (user x method [x balance strategy] x seed), where each keeps its outputs, and what the
study evaluates (its suite, and the evaluation config of its models). What it costs: :mod:`bapo.studies.estimate`."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from bapo.data.users import user_name
from bapo.errors import ConfigError
from bapo.evaluation.config import EvalConfig
from bapo.io import atomic_write_text
from bapo.core.methods import method_losses, split_method
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
    def loss(self) -> str:
        """The training loss (``bapo`` for the arms ``bapo:0.1`` and ``bapo/kto``)."""
        return method_losses(split_method(self.method)[0])[0]

    @property
    def pref_loss(self) -> str | None:
        """The preference loss under the base-response term, where the arm names one (``kto`` for ``bapo/kto``)."""
        return method_losses(split_method(self.method)[0])[1]

    @property
    def unpaired(self) -> bool:
        """Whether the cell trains on the user's pairs as thumbs up and down (KTO): twice the examples."""
        return "kto" in (self.loss, self.pref_loss)

    @property
    def name(self) -> str:
        # file-safe: bapo:0.1 -> bapo-l0.1, bapo/kto -> bapo-kto
        return f"{self.user}__{self.arm.replace(':', '-l').replace('/', '-')}__s{self.seed}"


def plan(cfg: StudyConfig) -> list[Cell]:
    return [Cell(user_name(u), u, m, s, b) for u in cfg.users for m in cfg.methods for b in cfg.balance or [""]
            for s in range(cfg.seeds_of(m))]


def study_suite(cfg: StudyConfig, path: Path) -> Path:
    """The evaluation suite as a YAML file: ARC-Easy and PIQA (knowledge), HH harmless pairs (alignment) and drift on
    AlpacaEval instructions, from ``sources.data_dir``; ``eval_items`` per task (0 = every item)."""
    d = cfg.sources.folder().resolve()
    tasks = [{"name": "arc_easy", "kind": "mc", "path": str(d / "knowledge/arc_easy.jsonl")},
             {"name": "piqa", "kind": "mc", "path": str(d / "knowledge/piqa.jsonl")},
             {"name": "hh_harmless", "kind": "general_pairs", "path": str(d / "general/hh_harmless_base_test.jsonl.gz")}]
    for t in tasks:
        if not Path(t["path"]).exists():
            raise ConfigError(f"sources.data_dir: {t['path']} not found (the study's evaluation data; run "
                              f"`bapo data fetch`, or give --data-dir)")
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
            raise ConfigError(f"sources.data_dir: {t['path']} not found (the study's evaluation data; run "
                              f"`bapo data fetch`, or give --data-dir)")
    return tasks


def frontier_scales(cfg: StudyConfig) -> list[float]:
    """The scales the DPO adapters are evaluated at again (1.0 is the adapter itself, already evaluated)."""
    return [s for s in cfg.frontier_scales if s != 1.0]


def frontier_models(cfg: StudyConfig, cells: list[Cell]) -> int:
    """How many scaled DPO adapters the frontier evaluates (each DPO cell at each scale below 1)."""
    return sum(c.method == "dpo" for c in cells) * len(frontier_scales(cfg))


def cell_dir(out: Path, cell: Cell) -> Path:
    """Where a cell's adapter is written (``run.json`` there marks it done)."""
    return out / "cells" / cell.name


def balance_dir(out: Path, cell: Cell) -> Path:
    """Where a balance study keeps a cell's built pairs and the report of how they were chosen."""
    return out / "balance" / f"{cell.user}__{cell.balance}__s{cell.seed}"


def eval_config(cfg: StudyConfig, cells: list[Cell], suite: Path, out: Path) -> EvalConfig:
    """The study's evaluation config for these cells: its own scoring settings, the study's model, lengths, cache
    and device."""
    t = cfg.train
    return replace(cfg.eval, model=t.model, adapters=[str(cell_dir(out, c)) for c in cells], suite=str(suite),
                   out=str(out / "eval"), max_length=t.data.max_length, max_prompt_length=t.data.max_prompt_length,
                   cache_dir=t.cache_dir, device=t.device, dtype=t.dtype, cluster=cfg.cluster)


def frontier_config(cfg: StudyConfig, cells: list[Cell], suite: Path, out: Path) -> EvalConfig | None:
    """The evaluation config of the DPO adapters at ``frontier_scales`` (in ``OUT/eval_frontier``); None without."""
    dpo = [c for c in cells if c.method == "dpo"]
    if not dpo or not frontier_scales(cfg):
        return None
    return replace(eval_config(cfg, dpo, suite, out), adapter_scales=frontier_scales(cfg), out=str(out / "eval_frontier"))


def print_plan(cfg: StudyConfig, cells: list[Cell], n_eval: int, console: Console) -> None:
    t = Table(title=f"study plan: {len(cells)} adapters", show_lines=False)
    for col in ("user", "methods", *(["balance"] if cfg.balance else []), "seeds"):
        t.add_column(col)
    for u in cfg.users:
        seeds = ", ".join(f"{m} {cfg.seeds_of(m)}" for m in cfg.methods) if cfg.more_seeds else str(cfg.seeds)
        t.add_row(u, ", ".join(cfg.methods), *([", ".join(cfg.balance)] if cfg.balance else []), seeds)
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
