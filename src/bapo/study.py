"""``bapo study``: does forgetting grow with a user's heterogeneity, and does BAPO hold it down?

One adapter per (user, method, seed), trained on the user's pairs with everything else equal; then every adapter and
the base model are evaluated on the same items (global knowledge, general alignment, and each user's own held-out
pairs). Every step is cached: users' pairs and heterogeneity in ``OUT/users``, adapters in ``OUT/cells`` (a cell with
``run.json`` is done; an interrupted one resumes from its checkpoint), per-item evaluation scores in the bapo cache.
So an interrupted study, rerun with the same command, continues where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bapo.config import DEFAULT_MODEL, BaseResponseConfig, DataConfig, LossConfig, TrainConfig, option
from bapo.data import split_holdout
from bapo.errors import ConfigError
from bapo.evaluation import paired_delta
from bapo.io import atomic_write_text, write_json, write_jsonl
from bapo.users import Sources, build_user, heterogeneity, parse_spec, user_name

DEFAULT_USERS = ["flip:0", "flip:0.5", "flip:1", "vpl:harmless"]


@dataclass
class StudyConfig:
    """A whole ``bapo study`` run. The defaults finish within an hour on a 2-core CPU with the embedded model."""

    model: str = option(DEFAULT_MODEL, "Base model every adapter is trained from.")
    users: list[str] = option(list(DEFAULT_USERS), "User specs (see bapo.users): dsp:DOMAIN, alpacaeval:concise|verbose, "
                                                   "vpl:helpful|harmless, flip:H[:length|hash], psoups:PROFILE.")
    methods: list[str] = option(["dpo", "bapo"], "Training losses to compare (bapo or any pairwise loss).")
    seeds: int = option(1, "Seeds per (user, method): LoRA initialisation and data order.")
    out: str = option("study", "Output directory.")
    pairs_per_user: int = option(64, "Training pairs per user (a seeded sample; 0 = all).")
    holdout_pairs: int = option(32, "Held-out pairs per user, on prompts never trained on (personalization).")
    epochs: float = option(2.0, "Passes over each user's training pairs.")
    batch_size: int = option(4, "Pairs per optimizer step.")
    lr: float = option(2e-4, "Learning rate.")
    beta: float = option(0.1, "DPO beta (all methods).")
    anchor_lambda: float = option(1.0, "BAPO's lambda.")
    base_tokens: int = option(64, "Longest base response (BAPO) and simulated users' candidate answers, in tokens.")
    candidate_samples: int = option(2, "Simulated users: sampled answers per prompt besides the 3 greedy (steered) ones.")
    max_length: int = option(256, "Longest prompt + response in tokens (training and evaluation).")
    max_prompt_length: int = option(160, "Longest prompt in tokens.")
    eval_items: int = option(200, "Items per knowledge task, ARC-Easy and PIQA (a seeded subset; 0 = the full sets).")
    alignment_items: int = option(200, "General preference pairs (HH harmless) for alignment (0 = all 2,312).")
    drift_prompts: int = option(40, "Prompts whose base answers measure drift (0 = none).")
    judge: str = option("auto", "Heterogeneity judge: auto, reward, labels or base (see bapo.users.heterogeneity).")
    reward_model: str = option("", "Reward model for the heterogeneity judge (optional).")
    cache_dir: str = option("", "Cache directory [~/.cache/bapo].")
    sources: Sources = field(default_factory=Sources)

    def validate(self) -> None:
        if not self.users:
            raise ConfigError("users: name at least one user")
        for u in self.users:
            parse_spec(u)
        if len({user_name(u) for u in self.users}) != len(self.users):
            raise ConfigError("users: a user is named twice")
        for m in self.methods:
            LossConfig(method=m).validate()
        if not self.methods or self.seeds < 1:
            raise ConfigError("methods and seeds: at least one method and one seed")
        if self.candidate_samples < 0:
            raise ConfigError("candidate_samples: 0 or more")
        if self.holdout_pairs < 2 or self.pairs_per_user < 0:
            raise ConfigError("holdout_pairs: at least 2; pairs_per_user: 0 (all) or more")
        DataConfig(max_length=self.max_length, max_prompt_length=self.max_prompt_length).validate()


@dataclass
class Cell:
    user: str  # user name (file-safe)
    spec: str
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.user}__{self.method}__s{self.seed}"


def plan(cfg: StudyConfig) -> list[Cell]:
    return [Cell(user_name(u), u, m, s) for u in cfg.users for m in cfg.methods for s in range(cfg.seeds)]


def study_suite(cfg: StudyConfig, path: Path) -> Path:
    """The evaluation suite as a YAML file: ARC-Easy and PIQA (knowledge), HH harmless pairs (alignment) and drift on
    AlpacaEval instructions, from ``sources.data_dir``; ``eval_items`` per task (0 = every item)."""
    import yaml

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
                      "limit": cfg.drift_prompts, "max_new_tokens": cfg.base_tokens})
    atomic_write_text(path, yaml.safe_dump({"tasks": tasks}, sort_keys=False))
    return path


# Seconds on this project's 2-core CPU with SmolLM2-135M, for --dry-run. Training and generation from the default
# study's own run (2026-11-23: 8 adapters trained in 29 min). Scoring is priced per character read, because items
# differ fivefold in length: the decisive study (2026-11-23) scored ARC-Easy's 527k characters in 201 s, PIQA's
# 462k in 236 s and 500 HH pairs' 391k in 174 s (2.0-2.6k characters/s), 40 drift prompts in 9 s and 64 held-out
# pairs in 23-27 s per model.
SECONDS_PER_PAIR_EPOCH = {"bapo": 1.9, "other": 1.5}
SECONDS_PER_SCORED_CHAR = 4.5e-4
SECONDS_PER_DRIFT_PROMPT = 0.25
SECONDS_PER_HOLDOUT_PAIR = 0.4
SECONDS_PER_GENERATED_ANSWER = 0.6


def estimate_seconds(cfg: StudyConfig, eval_seconds_per_model: float) -> float:
    """A rough wall-time estimate: training pairs x epochs, base responses, and every model's evaluation."""
    cells = plan(cfg)
    train = sum(cfg.pairs_per_user * cfg.epochs * SECONDS_PER_PAIR_EPOCH["bapo" if c.method == "bapo" else "other"]
                for c in cells)
    gen_users = {c.user for c in cells if c.method == "bapo"}
    simulated = sum(u.startswith("psoups") for u in cfg.users)
    gen = (len(gen_users) * cfg.pairs_per_user + (3 + cfg.candidate_samples) * cfg.pairs_per_user * simulated
           + cfg.drift_prompts) * SECONDS_PER_GENERATED_ANSWER
    evals = (len(cells) + 1) * eval_seconds_per_model + len(cells) * cfg.holdout_pairs * SECONDS_PER_HOLDOUT_PAIR
    return (train + gen + evals) * _model_scale(cfg.model)


def _model_scale(model: str) -> float:
    """Time scales with parameters; 1.0 for the embedded model, else read from the model's config if we can."""
    if model == DEFAULT_MODEL:
        return 1.0
    try:
        from transformers import AutoConfig

        from bapo.models import resolve_model

        c = AutoConfig.from_pretrained(resolve_model(model))
        params = 12 * c.num_hidden_layers * c.hidden_size ** 2 + c.vocab_size * c.hidden_size
        return params / 135e6
    except Exception:
        return float("nan")


def _eval_size(suite_path: Path) -> tuple[int, float]:
    """Scored sequences per model, and the seconds their scoring takes on the project's CPU."""
    from bapo.suites import LOADERS, load_suite, scored_chars, scored_sequences

    n, seconds = 0, 0.0
    for t in load_suite(str(suite_path)).tasks:
        items = LOADERS[t.kind](t)
        n += scored_sequences(t.kind, items)
        seconds += scored_chars(t.kind, items) * SECONDS_PER_SCORED_CHAR
        seconds += len(items) * SECONDS_PER_DRIFT_PROMPT if t.kind == "drift" else 0.0
    return n, seconds


def run_study(cfg: StudyConfig, dry_run: bool = False, console: Console | None = None) -> dict:
    """Build users, train every cell, evaluate all, write the table and figures. Returns the study summary."""
    console = console or Console()
    t0 = time.time()
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = plan(cfg)
    suite = study_suite(cfg, out / "suite.yaml")
    n_eval, eval_seconds = _eval_size(suite)
    est = estimate_seconds(cfg, eval_seconds)
    _print_plan(cfg, cells, n_eval, est, console)
    if dry_run:
        return {"cells": [c.name for c in cells], "estimated_seconds": est}

    from bapo.base import open_reference

    data_cfg = DataConfig(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
    ref = None

    def reference():  # loaded once, and only if a simulated user or the base-model judge needs it
        nonlocal ref
        if ref is None:
            ref = open_reference(cfg.model, data_cfg, cfg.cache_dir)
        return ref

    reward = None
    if cfg.reward_model:
        from bapo.compare import _load_reward_model

        reward = _load_reward_model(cfg.reward_model)
    users: dict[str, dict] = {}
    for spec in cfg.users:
        name = user_name(spec)
        meta_path = out / "users" / f"{name}.json"
        if meta_path.exists():
            users[name] = json.loads(meta_path.read_text())
            continue
        kind, _ = parse_spec(spec)
        console.rule(f"user {spec}")
        user = build_user(spec, cfg.sources, cfg.pairs_per_user + cfg.holdout_pairs, 0,
                          reference() if kind == "psoups" else None, cfg.base_tokens, cfg.candidate_samples)
        if len(user.pairs) < cfg.holdout_pairs + 4:
            raise ConfigError(f"users: {spec} has only {len(user.pairs)} pairs; lower holdout_pairs or pairs_per_user")
        train, held = split_holdout(user.pairs, cfg.holdout_pairs / len(user.pairs), 0)
        needs_base = cfg.judge == "base" or (cfg.judge == "auto" and reward is None and user.general_agree is None)
        h = heterogeneity(user, cfg.judge, reference() if needs_base else None, reward)
        write_jsonl(out / "users" / f"{name}.train.jsonl", [p.to_record() for p in train])
        write_jsonl(out / "users" / f"{name}.holdout.jsonl", [p.to_record() for p in held])
        users[name] = {"spec": spec, "source": user.source, "train_pairs": len(train), "holdout_pairs": len(held),
                       "heterogeneity": asdict(h)}
        write_json(meta_path, users[name])
        console.print(f"{spec}: {len(train)} training / {len(held)} held-out pairs; heterogeneity "
                      f"{h.value:.2f} ± {h.stderr:.2f} ({h.judge})")
    del ref

    from bapo.training import train as train_adapter

    for i, cell in enumerate(cells, 1):
        cell_dir = out / "cells" / cell.name
        if (cell_dir / "run.json").exists():
            continue
        console.rule(f"cell {i}/{len(cells)}: {cell.spec}, {cell.method}, seed {cell.seed}")
        tc = train_config(cfg, cell, out)
        tc.resume = (cell_dir / "checkpoints").exists()
        train_adapter(tc)

    console.rule("evaluation: the base model and every adapter on the same items")
    from bapo.compare import EvalConfig, run_eval

    records = run_eval(EvalConfig(model=cfg.model, adapters=[str(out / "cells" / c.name) for c in cells],
                                  suite=str(suite), out=str(out / "eval"), max_length=cfg.max_length,
                                  max_prompt_length=cfg.max_prompt_length, cache_dir=cfg.cache_dir), console)
    rows = study_rows(cells, users, records)
    item_scores = json.loads((out / "eval" / "item_scores.json").read_text())
    # every method against the base model, seeds pooled; then every method against DPO (or the first method)
    versus = contrasts(cells, records, item_scores, "base")
    if len(cfg.methods) > 1:
        versus += contrasts(cells, records, item_scores, "dpo" if "dpo" in cfg.methods else cfg.methods[0])
    from bapo.report import study_figures

    figures = study_figures(rows, out / "figures")
    summary = {"config": asdict(cfg), "users": users, "rows": rows, "contrasts": versus,
               "figures": [str(f) for f in figures],
               "eval_sequences_per_model": n_eval, "estimated_seconds": round(est),
               "seconds": round(time.time() - t0, 1), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(out / "study.json", summary)
    atomic_write_text(out / "table.csv", _csv(rows))
    if versus:
        atomic_write_text(out / "contrasts.csv", _csv(versus))
    md = markdown(rows) + (("\n" + contrasts_markdown(versus)) if versus else "")
    atomic_write_text(out / "table.md", md)
    console.print(md)
    console.print(f"study: {out / 'study.json'}, {out / 'table.md'}, figures in {out / 'figures'} "
                  f"({summary['seconds'] / 60:.1f} min)")
    return summary


def train_config(cfg: StudyConfig, cell: Cell, out: Path) -> TrainConfig:
    tc = TrainConfig(model=cfg.model, out=str(out / "cells" / cell.name), cache_dir=cfg.cache_dir,
                     data=DataConfig(path=str(out / "users" / f"{cell.user}.train.jsonl"),
                                     eval_path=str(out / "users" / f"{cell.user}.holdout.jsonl"),
                                     max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length),
                     loss=LossConfig(method=cell.method, beta=cfg.beta, anchor_lambda=cfg.anchor_lambda),
                     base=BaseResponseConfig(max_new_tokens=cfg.base_tokens), epochs=cfg.epochs,
                     batch_size=cfg.batch_size, lr=cfg.lr, seed=cell.seed, save_steps=10, logging_steps=1)
    tc.validate()
    return tc


def _print_plan(cfg: StudyConfig, cells: list[Cell], n_eval: int, est: float, console: Console) -> None:
    t = Table(title=f"study plan: {len(cells)} adapters", show_lines=False)
    for col in ("user", "methods", "seeds"):
        t.add_column(col)
    for u in cfg.users:
        t.add_row(u, ", ".join(cfg.methods), str(cfg.seeds))
    console.print(t)
    console.print(f"sizes: {cfg.pairs_per_user} training + {cfg.holdout_pairs} held-out pairs per user; {cfg.epochs:g} "
                  f"epochs, batch {cfg.batch_size} = {math.ceil(cfg.pairs_per_user / cfg.batch_size) * cfg.epochs:g} "
                  f"steps per adapter; evaluation: {cfg.eval_items or 'all'} items per knowledge task, "
                  f"{cfg.alignment_items or 'all'} alignment pairs, {cfg.drift_prompts} drift prompts = {n_eval} scored sequences "
                  f"per model ({len(cells) + 1} models); max length {cfg.max_length} tokens")
    console.print(f"estimated run time from nothing: ~{est / 60:.0f} min (2-core CPU timings; cached cells are free)")


# ---------------------------------------------------------------------------------------------------------------
# The table


KNOWLEDGE_METRIC = ("mc", "acc_norm")
ALIGNMENT_METRIC = ("general_pairs", "acc_norm")
DRIFT_METRIC = ("drift", "logp_change_per_token")


def _pooled(recs: list[dict]) -> tuple[float | None, float | None]:
    """Item-weighted mean of several tasks' paired deltas, with its standard error (tasks are independent)."""
    recs = [r for r in recs if r["delta"] is not None]
    if not recs:
        return None, None
    n = sum(r["n"] for r in recs)
    d = sum(r["delta"] * r["n"] for r in recs) / n
    se = math.sqrt(sum((r["delta_stderr"] * r["n"] / n) ** 2 for r in recs))
    return d, se


def study_rows(cells: list[Cell], users: dict[str, dict], records: list[dict]) -> list[dict]:
    """One row per cell, every number read from that cell's own adapter's evaluation records."""
    rows = []
    for c in cells:
        mine = [r for r in records if r["model"] == c.name]
        if not mine:
            raise ConfigError(f"study: no evaluation records for cell {c.name}")
        h = users[c.user]["heterogeneity"]
        row = {"user": c.spec, "method": c.method, "seed": c.seed, "adapter": mine[0]["adapter"],
               "heterogeneity": h["value"], "heterogeneity_stderr": h["stderr"], "judge": h["judge"]}
        pers = {r["metric"]: r for r in mine if r["kind"] == "personal"}
        row["personal_reward_acc"] = pers["reward_acc"]["value"]
        row["personal_reward_acc_stderr"] = pers["reward_acc"]["stderr"]
        row["personal_ll_acc_delta"] = pers["ll_acc"]["delta"]
        row["personal_ll_acc_delta_stderr"] = pers["ll_acc"]["delta_stderr"]
        for key, (kind, metric) in (("knowledge", KNOWLEDGE_METRIC), ("alignment", ALIGNMENT_METRIC),
                                    ("drift", DRIFT_METRIC)):
            recs = [r for r in mine if r["kind"] == kind and r["metric"] == metric]
            if kind == "drift":  # already a change against the base model's own answers
                recs = [{**r, "delta": r["value"], "delta_stderr": r["stderr"]} for r in recs]
            row[f"{key}_delta"], row[f"{key}_delta_stderr"] = _pooled(recs)
            for r in recs:
                row[f"{r['task']}_delta"] = r["delta"]
        rows.append(row)
    return rows


# (measure, task kind, metric): the study's measures first, then unnormalized accuracy beside them, because
# length normalization can hide a change that raw likelihood shows (and the other way round).
MEASURES = [("personalization", "personal", "reward_acc"),
            ("knowledge", *KNOWLEDGE_METRIC), ("knowledge", "mc", "acc"),
            ("alignment", *ALIGNMENT_METRIC), ("alignment", "general_pairs", "acc"),
            ("drift", *DRIFT_METRIC)]


def contrasts(cells: list[Cell], records: list[dict], item_scores: dict, baseline: str) -> list[dict]:
    """Each method against ``baseline`` for the same user, directly: per item, the method's score minus the
    baseline's, seed matched with seed (the same LoRA initialisation and data order), averaged over seeds.
    ``baseline`` is another method, or ``"base"``: the base model, the same for every seed.

    ``delta`` is the mean of those per-item differences and ``stderr`` its standard error over items (the
    comparison is paired on items, so the items' own difficulty cancels); ``per_seed`` gives the difference seed by
    seed, so a reader sees whether the seeds agree. ``clear`` marks a difference whose 95% interval excludes 0 *and*
    whose sign every seed shares: with 3 seeds the spread between seeds cannot be estimated well, so this asks both.
    Knowledge pools the ``mc`` tasks item by item, as the study table does.
    """
    kinds = {r["task"]: r["kind"] for r in records}
    names = {(c.user, c.method, c.seed): c.name for c in cells}

    def items(name: str, other: str, kind: str, metric: str) -> list[float]:
        """``name``'s scores on the tasks both models were scored on (the base model meets every user's pairs)."""
        return [x for task, ms in item_scores[name].items() if kinds.get(task) == kind and metric in ms
                and task in item_scores[other] for x in ms[metric]]

    out = []
    for user in dict.fromkeys(c.user for c in cells):
        spec = next(c.spec for c in cells if c.user == user)
        for method in dict.fromkeys(c.method for c in cells if c.user == user and c.method != baseline):
            seeds = sorted(s for (u, m, s) in names if (u, m) == (user, method)
                           and (baseline == "base" or (user, baseline, s) in names))
            if not seeds:
                continue
            pairs = [(names[user, method, s], "base" if baseline == "base" else names[user, baseline, s])
                     for s in seeds]
            for measure, kind, metric in MEASURES:
                mine = [items(a, b, kind, metric) for a, b in pairs]
                theirs = [items(b, a, kind, metric) for a, b in pairs]
                if any(len(x) != len(mine[0]) for x in mine + theirs):
                    raise ConfigError(f"study: {method} and {baseline} were scored on different {measure} items")
                n = len(mine[0])
                if not n:
                    continue
                delta, se, lo, hi = paired_delta([sum(col) / len(seeds) for col in zip(*mine)],
                                                 [sum(col) / len(seeds) for col in zip(*theirs)])
                per_seed = [(sum(x) - sum(y)) / n for x, y in zip(mine, theirs)]
                agree = all(v > 0 for v in per_seed) or all(v < 0 for v in per_seed)
                out.append({"user": spec, "method": method, "baseline": baseline, "measure": measure,
                            "metric": metric, "n": n, "seeds": len(seeds), "delta": delta, "stderr": se,
                            "lo": lo, "hi": hi, "per_seed": per_seed, "clear": bool((lo > 0 or hi < 0) and agree)})
    return out


def contrasts_markdown(rows: list[dict]) -> str:
    lines = []
    for baseline in dict.fromkeys(r["baseline"] for r in rows):
        lines += [f"Against {'the base model' if baseline == 'base' else baseline}:", "",
                  "| user | measure | method − baseline | 95% interval | per seed | clear |",
                  "|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["baseline"] == baseline):
            seeds = ", ".join(f"{v:+.3f}" for v in r["per_seed"])
            lines.append(f"| {r['user']} | {r['measure']} ({r['metric']}, n = {r['n']}) | {r['method']} − "
                         f"{r['baseline']}: {_pm(r['delta'], r['stderr'])} | [{r['lo']:+.3f}, {r['hi']:+.3f}] | "
                         f"{seeds} | {'yes' if r['clear'] else 'no'} |")
        lines.append("")
    lines.append("Paired on items, seed matched with seed, averaged over seeds; ± one standard error over items. "
                 "clear = the interval excludes 0 and every seed's difference has the same sign.")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    cols = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _pm(v, se, digits=3, signed=True) -> str:
    if v is None:
        return ""
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    return fmt.format(v) + (f" ± {se:.{digits}f}" if se is not None else "")


def markdown(rows: list[dict]) -> str:
    """The study table: a row per (user, method, seed); ± is one standard error, Δ is against the base model."""
    lines = ["| user | heterogeneity | method | seed | personal reward acc | knowledge Δ acc_norm | "
             "alignment Δ acc_norm | drift Δ log p/token |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["heterogeneity"], r["user"], r["method"], r["seed"])):
        lines.append(f"| {r['user']} | {_pm(r['heterogeneity'], r['heterogeneity_stderr'], 2, False)} | {r['method']} | "
                     f"{r['seed']} | {_pm(r['personal_reward_acc'], r['personal_reward_acc_stderr'], 3, False)} | "
                     f"{_pm(r['knowledge_delta'], r['knowledge_delta_stderr'])} | "
                     f"{_pm(r['alignment_delta'], r['alignment_delta_stderr'])} | "
                     f"{_pm(r['drift_delta'], r['drift_delta_stderr'])} |")
    judges = sorted({r["judge"] for r in rows})
    lines.append(f"\nHeterogeneity judge: {'; '.join(judges)}. ± = one standard error (items; heterogeneity: pairs).")
    return "\n".join(lines) + "\n"


def aggregate(rows: list[dict], metric: str) -> dict[str, list[tuple[float, float, float]]]:
    """Per method: (heterogeneity, mean over seeds, error) per user, sorted by heterogeneity. With several seeds the
    error combines the spread between seeds and the evaluation's own error; with one, it is the evaluation's."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = []
        for user in dict.fromkeys(r["user"] for r in rows):
            rs = [r for r in rows if r["method"] == method and r["user"] == user and r.get(metric) is not None]
            if not rs:
                continue
            k = len(rs)
            vals = [r[metric] for r in rs]
            mean = sum(vals) / k
            within = sum((r.get(f"{metric}_stderr") or 0.0) ** 2 for r in rs) / k
            between = sum((v - mean) ** 2 for v in vals) / (k - 1) if k > 1 else 0.0
            pts.append((rs[0]["heterogeneity"], mean, math.sqrt((between + within) / k)))
        out[method] = sorted(pts)
    return out
