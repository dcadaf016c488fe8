"""``bapo study``: does forgetting grow with a user's heterogeneity, and does BAPO hold it down?

One adapter per (user, method, seed), trained on the user's pairs with everything else equal; then every adapter and
the base model are evaluated on the same items (global knowledge, general alignment, and each user's own held-out
pairs). Every step is cached: users' pairs and heterogeneity in ``OUT/users``, adapters in ``OUT/cells`` (a cell with
``run.json`` is done; an interrupted one resumes from its checkpoint), per-item evaluation scores in the bapo cache.
So an interrupted study, rerun with the same command, continues where it stopped.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console

from bapo.balancing.config import BalanceConfig
from bapo.balancing.run import balance
from bapo.data.pairs import split_holdout
from bapo.data.readers import load_prompts
from bapo.data.users import parse_spec, sample, user_name
from bapo.errors import BapoError, ConfigError
from bapo.evaluation.config import EvalConfig
from bapo.evaluation.runner import EvalResult, evaluate, prepare, score_into_cache, unscored
from bapo.io import as_dicts, atomic_write_text, csv_text, write_json, write_jsonl
from bapo.runtime import distributed
from bapo.runtime.cluster import run_in_tasks
from bapo.runtime.models import cache_root, load_reward_model
from bapo.runtime.reference import LazyReference, open_reference
from bapo.runtime.workers import run_jobs, scoring_threads
from bapo.studies.config import StudyConfig
from bapo.studies.contrasts import Contrast, contrasts, contrasts_markdown
from bapo.studies.figures import study_figures
from bapo.studies.matched import ItemScores, base_key, matched_markdown, matched_rows, retention_items
from bapo.studies.estimate import Estimate, estimate, eval_size, prices, print_estimate, scored_cells
from bapo.studies.plan import (Cell, balance_dir, cell_dir, eval_config, frontier_config, frontier_scales, plan,
                               print_plan, study_suite)
from bapo.studies.tables import BalanceWork, StudyRow, cost_markdown, markdown, study_rows
from bapo.studies.trend import trend_markdown, trend_rows
from bapo.studies.users import heterogeneity, make_user
from bapo.training.config import TrainConfig
from bapo.training.run import reference_step, train


@dataclass
class StudyResult:
    """What a study produced (also in ``OUT/study.json``); after ``dry_run``, only the plan and the estimate."""

    cells: list[Cell]
    estimate: Estimate
    rows: list[StudyRow]
    contrasts: list[Contrast]
    out: Path
    seconds: float = 0.0
    frontier: dict[float, list[StudyRow]] = field(default_factory=dict)  # DPO adapters' rows at each LoRA scale
    items: ItemScores = field(default_factory=dict)  # each model's per-item retention scores (matched readings)
    planned: int = 0  # the study's adapters; more than ``cells`` when read part way (``so_far``)

    @property
    def estimated_seconds(self) -> float:
        """The estimated wall time of the whole study from nothing."""
        return self.estimate.from_nothing


def prepare_users(cfg: StudyConfig, out: Path, console: Console) -> dict[str, dict]:
    """Every user's training and held-out pairs, and their measured heterogeneity (cached in ``OUT/users``)."""
    t = cfg.train  # the base model, loaded only if a simulated user or the base-model judge needs it
    reference = LazyReference(lambda: open_reference(t.model, t.data.max_length, t.data.max_prompt_length,
                                                     t.cache_dir, t.device, t.dtype))
    reward = load_reward_model(cfg.reward_model, cfg.train.device) if cfg.reward_model else None
    users: dict[str, dict] = {}
    built = distributed.agreed([s for s in cfg.users if (out / "users" / f"{user_name(s)}.json").exists()])
    for spec in cfg.users:
        name = user_name(spec)
        meta_path = out / "users" / f"{name}.json"
        if spec in built:
            users[name] = json.loads(meta_path.read_text())
            continue
        kind, _ = parse_spec(spec)
        console.rule(f"user {spec}")
        # A balance study builds psoups users' training pairs itself (bapo balance): only held-out pairs here.
        if cfg.balance and kind == "psoups":
            wanted = cfg.holdout_pairs + 4
        else:  # pairs_per_user 0: all of them
            wanted = cfg.pairs_per_user + cfg.holdout_pairs if cfg.pairs_per_user else 0
        user = make_user(spec, cfg.sources, wanted, 0,
                         reference() if kind == "psoups" else None, cfg.train.base.max_new_tokens,
                         cfg.candidate_samples)
        if len(user.pairs) < cfg.holdout_pairs + 4:
            raise ConfigError(f"users: {spec} has only {len(user.pairs)} pairs; lower holdout_pairs or pairs_per_user")
        train_pairs, held = split_holdout(user.pairs, cfg.holdout_pairs / len(user.pairs), 0)
        if cfg.balance and kind == "psoups" and distributed.is_main():
            write_jsonl(out / "users" / f"{name}.prompts.jsonl", pool_prompts(cfg, held))
        needs_base = cfg.judge == "base" or (cfg.judge == "auto" and reward is None and user.general_agree is None)
        judged = replace(user, pairs=sample(user.pairs, cfg.judge_pairs, random.Random("judge")),
                         general_agree=None if user.general_agree is None else
                         sample(user.general_agree, cfg.judge_pairs, random.Random("judge")))
        h = heterogeneity(judged, cfg.judge, reference() if needs_base else None, reward)
        users[name] = {"spec": spec, "source": user.source, "train_pairs": len(train_pairs),
                       "holdout_pairs": len(held), "heterogeneity": asdict(h)}
        if distributed.is_main():  # every process built the same user (their reference work split between them)
            write_jsonl(out / "users" / f"{name}.train.jsonl", [p.to_record() for p in train_pairs])
            write_jsonl(out / "users" / f"{name}.holdout.jsonl", [p.to_record() for p in held])
            write_json(meta_path, users[name])
        console.print(f"{spec}: {len(train_pairs)} training / {len(held)} held-out pairs; heterogeneity "
                      f"{h.value:.2f} ± {h.stderr:.2f} ({h.judge})")
    distributed.barrier()  # the users' files written before any process reads them
    return users


def pool_prompts(cfg: StudyConfig, held: list) -> list[dict]:
    """A simulated user's prompts to balance from: the prompt set without the held-out prompts (``pairs_per_user``
    of them, a seeded sample; 0 = all)."""
    held_out = {p.messages[-1]["content"] for p in held}
    prompts = [m[-1]["content"] for m in load_prompts(cfg.sources.path("prompts"))]
    pool = [{"prompt": p} for p in dict.fromkeys(prompts) if p not in held_out]
    return sample(pool, cfg.pairs_per_user, random.Random("balance-pool"))


def balanced_pairs(cfg: StudyConfig, cell: Cell, out: Path, console: Console) -> Path:
    """The cell's training pairs, built by its balance strategy at the study's budget (cached: a finished
    ``pairs.jsonl`` is reused); the strategy's randomness follows the cell's seed."""
    target = balance_dir(out, cell)
    if distributed.agreed((target / "pairs.jsonl").exists()):
        return target / "pairs.jsonl"
    psoups = cell.spec.startswith("psoups:")
    t = cfg.train
    bc = BalanceConfig(data=replace(t.data, path=str(out / "users" / f"{cell.user}.{'prompts' if psoups else 'train'}"
                                                    f".jsonl"), eval_path="", user=""),
                       out=str(target), budget=cfg.pair_budget, strategy=cell.balance,
                       judge=cell.spec if psoups else "labels", responses=cfg.balance_responses,
                       max_new_tokens=t.base.max_new_tokens, seed=cell.seed, model=t.model, cache_dir=t.cache_dir,
                       device=t.device, dtype=t.dtype, lora=t.lora, beta=t.loss.beta)
    balance(bc, console)
    return target / "pairs.jsonl"


def train_cell(cfg: StudyConfig, cell: Cell, out: Path, console: Console) -> None:
    """Train one cell's adapter (its balanced pairs first, in a balance study); resumes from its checkpoint."""
    tc = train_config(cfg, cell, out)
    if cell.balance:
        tc.data.path = str(balanced_pairs(cfg, cell, out, console))
    train(tc)


def score_cell(cfg: StudyConfig, cell: Cell, suite: Path, out: Path, console: Console) -> None:
    """Score one trained cell into the cache (a DPO cell at its frontier scales too), and the base model with the
    first; what is cached already is not scored again, and nothing is loaded when all of it is."""
    for ev in (eval_config(cfg, [cell], suite, out), frontier_config(cfg, [cell], suite, out)):
        labels = unscored(ev) if ev is not None else []
        if labels:
            console.print(f"scoring {', '.join(labels)}")
            score_into_cache(ev, labels)


def train_cells_on_ray(cfg: StudyConfig, cells: list[Cell], out: Path) -> None:
    """``--executor ray``: first one task does the reference's work for every cell (base responses and reference
    log-probs), cell after cell as a local run does, so the same batches and the same numbers; then each cell is
    trained by its own Ray task (its balanced pairs first, in a balance study), at the tasks' thread count, reading
    the reference's results from the cache. A cell that fails fails alone, and the study stops after the others,
    naming it."""
    cache = cache_root(cfg.train.cache_dir) / "reference.sqlite"
    step = run_in_tasks(_reference_task, [("reference", (cfg, cells, out))], cfg.cluster, cache, "reference step")
    if step.failed:
        raise BapoError(f"the reference step failed on the cluster: {step.failed['reference']}")
    done = run_in_tasks(_train_cell_task, [(c.name, (cfg, c, out)) for c in cells], cfg.cluster, cache,
                        f"{len(cells)} cells trained")
    if done.failed:
        raise BapoError(f"{len(done.failed)} cell(s) failed to train (the others are trained; a rerun trains only what "
                        "is missing):\n" + "\n".join(f"{c}: {why}" for c, why in done.failed.items()))


def _reference_task(cfg: StudyConfig, cells: list[Cell], out: Path) -> None:
    """A Ray task: every cell's base responses and reference log-probs, into the driver's cache. Without it, cells
    training side by side would compute the ones they share at once, each in its own batches, and the cache would
    keep whichever came last (in float32 they differ in the 7th digit)."""
    ref = None
    for cell in cells:
        tc = train_config(cfg, cell, out)
        if cell.balance:
            tc.data.path = str(balanced_pairs(cfg, cell, out, Console(quiet=True)))
        ref = reference_step(tc, ref)[0]


def _train_cell_task(cfg: StudyConfig, cell: Cell, out: Path) -> None:
    train_cell(cfg, cell, out, Console(quiet=True))


def evaluate_models(cfg: StudyConfig, ev: EvalConfig, console: Console) -> EvalResult:
    """``bapo eval`` of the study's models; with several workers, the models are first scored into the cache side by
    side (one job per model), then read back in this process; on Ray (``ev.cluster``), each model a task."""
    if cfg.workers == 1 or distributed.world_size() > 1 or ev.cluster.executor == "ray":
        return evaluate(ev, console)
    with scoring_threads(cfg.workers):  # every model at the workers' thread count, this process's reading included
        labels = unscored(ev)
        if labels:
            prepare(ev, Console(quiet=True))  # what the reference prepares (drift answers, held-out log-probs), once
            run_jobs(score_into_cache, [(ev, [label]) for label in labels], cfg.workers, Path(cfg.out) / "logs",
                     "models scored", threads=torch.get_num_threads())
        return evaluate(ev, console)


def train_config(cfg: StudyConfig, cell: Cell, out: Path) -> TrainConfig:
    """The study's training config with this cell's output, data, method and seed."""
    tc = copy.deepcopy(cfg.train)
    tc.out = str(cell_dir(out, cell))
    tc.data.path = str(out / "users" / f"{cell.user}.train.jsonl")
    tc.data.eval_path = str(out / "users" / f"{cell.user}.holdout.jsonl")
    tc.loss.method = cell.loss
    tc.loss.pref_loss = cell.pref_loss or tc.loss.pref_loss
    tc.loss.anchor_lambda = cfg.lambdas().get(cell.method, tc.loss.anchor_lambda)
    tc.seed = cell.seed
    tc.resume = (Path(tc.out) / "checkpoints").exists()
    tc.validate()
    return tc


def run_study(cfg: StudyConfig, dry_run: bool = False, console: Console | None = None,
              so_far: bool = False) -> StudyResult:
    """Build users, train every cell, evaluate all, write the table and figures. ``so_far``: the tables and figures
    of the cells the cache already holds every score of, training and scoring nothing (a long study read part way)."""
    console = console or Console()
    t0 = time.time()
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = plan(cfg)
    suite = study_suite(cfg, out / "suite.yaml")
    n_eval, eval_seconds = eval_size(suite, prices(cfg))
    est = estimate(cfg, cells, suite, out, eval_seconds)
    print_plan(cfg, cells, n_eval, console)
    print_estimate(cfg, cells, est, console)
    if dry_run:
        return StudyResult(cells, est, [], [], out)
    planned = len(cells)
    if so_far:
        cells = scored_cells(cfg, cells, suite, out)
        if not cells:
            raise ConfigError(f"--so-far: {out} has no scored adapter yet (nor, perhaps, the base model); run the "
                              "study first, at the thread count it runs at (answers are cached by it on a CPU)")
        console.print(f"so far: the {len(cells)} of {planned} adapters whose every score is cached; nothing is "
                      "trained or scored")

    users = prepare_users(cfg, out, console)
    # Cells train one after another in this process even with several workers: training is not bit-identical across
    # thread counts (a bapo cell's gradient norm differed in its 7th digit from the second step), scoring is.
    todo = distributed.agreed([c.name for c in cells if not (cell_dir(out, c) / "run.json").exists()])
    if todo and cfg.cluster.executor == "ray":
        train_cells_on_ray(cfg, [c for c in cells if c.name in todo], out)
    # In one process, each adapter is scored as soon as it is trained (the base model with the first): a study
    # stopped part way, or carried to another machine (studies/carry.py), keeps every adapter it scored. Workers
    # and a cluster score side by side once every cell is trained.
    as_trained = cfg.workers == 1 and cfg.cluster.executor == "local" and distributed.world_size() == 1 and not so_far
    for i, cell in enumerate(cells, 1):
        if cell.name in todo and cfg.cluster.executor == "local":
            console.rule(f"cell {i}/{len(cells)}: {cell.spec}, {cell.arm}, seed {cell.seed}")
            train_cell(cfg, cell, out, console)
        if as_trained:
            score_cell(cfg, cell, suite, out, console)

    dpo = [c for c in cells if c.method == "dpo"]
    scaled = None
    if frontier_config(cfg, cells, suite, out) is not None and len(dpo) < len(cells):
        # DPO's adapters and their frontier first: every matched reading rests on them, so an evaluation stopped
        # part way (they take sessions) has them before the other arms; what they score is cached for the rest.
        console.rule("evaluation, first the DPO adapters and their frontier")
        evaluate_models(cfg, eval_config(cfg, dpo, suite, out), console)
        scaled = frontier(cfg, cells, suite, out, console)
    console.rule("evaluation: the base model and every adapter on the same items")
    evaluation = evaluate_models(cfg, eval_config(cfg, cells, suite, out), console)
    result = StudyResult(cells, est, with_costs(study_rows(cells, users, evaluation.records), cells, out),
                         versus_baselines(cfg, cells, evaluation), out, planned=planned)
    scaled = scaled or frontier(cfg, cells, suite, out, console)
    if scaled is not None:
        result.frontier = {s: study_rows(dpo, users, scaled.records, s) for s in frontier_scales(cfg)}
        result.contrasts += versus_scaled_dpo(cfg, cells, evaluation, scaled)
    result.items = model_items(cfg, cells, evaluation, scaled)
    result.seconds = round(time.time() - t0, 1)
    if distributed.is_main():
        write_outputs(cfg, result, users, n_eval, console)
    return result


def with_costs(rows: list[StudyRow], cells: list[Cell], out: Path) -> list[StudyRow]:
    """Each row with its cell's training seconds (run.json) and pair-building seconds (bapo balance's report)."""
    for row, cell in zip(rows, cells):
        run = cell_dir(out, cell) / "run.json"
        row.train_seconds = json.loads(run.read_text()).get("seconds") if run.exists() else None
        report = balance_dir(out, cell) / "report.json"
        if cell.balance and report.exists():
            built = json.loads(report.read_text())
            row.balance_seconds, row.balance_work = built.get("seconds"), BalanceWork.of(built)
    return rows


def frontier(cfg: StudyConfig, cells: list[Cell], suite: Path, out: Path, console: Console) -> EvalResult | None:
    """Every DPO adapter evaluated again at ``frontier_scales`` (in ``OUT/eval_frontier``); None without any."""
    ev = frontier_config(cfg, cells, suite, out)
    if ev is None:
        return None
    console.rule(f"the DPO adapters' frontier: scales {', '.join(f'{s:g}' for s in frontier_scales(cfg))}")
    return evaluate_models(cfg, ev, console)


def versus_scaled_dpo(cfg: StudyConfig, cells: list[Cell], evaluation: EvalResult,
                      scaled: EvalResult) -> list[Contrast]:
    """Every other method against each DPO adapter at a frontier scale (arm ``dpo@s``, seed matched): weakening DPO
    by its scale is the cheapest way to forget less, so a method should beat DPO at the scale where its
    personalization is the same, not only full DPO. The personalization row of the same contrast says how equal
    that is."""
    dpo, others = [c for c in cells if c.method == "dpo"], [c for c in cells if c.method != "dpo"]
    out = []
    for s in frontier_scales(cfg):
        weakened = {c.name: replace(c, method=f"dpo@{s:g}") for c in dpo}
        scores = {**evaluation.item_scores,
                  **{w.name: scaled.item_scores[f"{name}@{s:g}"] for name, w in weakened.items()}}
        out += contrasts(others + list(weakened.values()), evaluation.records, scores, f"dpo@{s:g}")
    return out


def model_items(cfg: StudyConfig, cells: list[Cell], evaluation: EvalResult,
                scaled: EvalResult | None = None) -> ItemScores:
    """Every adapter's per-item retention scores, every DPO adapter's at each frontier scale (``scaled``, where the
    study has a frontier), and the base model's (DPO's frontier at scale 0): the items' part of the matched readings'
    and the trend's intervals."""
    if cfg.balance:  # keyed by method, not arm: a balance study's strategies would collide
        return {}
    kinds = {r.task: r.kind for r in evaluation.records}
    items = {(c.spec, c.method, c.seed, 1.0): retention_items(evaluation.item_scores[c.name], kinds) for c in cells}
    items.update({(c.spec, c.method, c.seed, s): retention_items(scaled.item_scores[f"{c.name}@{s:g}"], kinds)
                  for c in cells if c.method == "dpo" for s in frontier_scales(cfg) if scaled is not None})
    if "base" in evaluation.item_scores:  # DPO's frontier at scale 0
        items.update({base_key(spec): retention_items(evaluation.item_scores["base"], kinds)
                      for spec in {c.spec for c in cells}})
    return items


def versus_baselines(cfg: StudyConfig, cells: list[Cell], evaluation: EvalResult) -> list[Contrast]:
    """Every arm against the base model (seeds pooled), then against DPO (or the first method) and the config's
    ``baselines``; in a balance study, every strategy against none and against uniform (those in the study) instead."""
    versus = contrasts(cells, evaluation.records, evaluation.item_scores, "base")
    if cfg.balance:
        for b in ("none", "uniform"):
            if b in cfg.balance and len(cfg.balance) > 1:
                versus += contrasts(cells, evaluation.records, evaluation.item_scores, f"{cfg.methods[0]}+{b}")
    elif len(cfg.methods) > 1:
        baseline = "dpo" if "dpo" in cfg.methods else cfg.methods[0]
        for b in dict.fromkeys([baseline, *cfg.baselines]):
            versus += contrasts(cells, evaluation.records, evaluation.item_scores, b)
    return versus


def write_outputs(cfg: StudyConfig, result: StudyResult, users: dict, n_eval: int, console: Console) -> None:
    """study.json, table.md / table.csv, contrasts.csv and the figures."""
    out = result.out
    figures = study_figures(result.rows, out / "figures", result.frontier, cfg.lambdas())
    rows = [r.to_dict() for r in result.rows]
    readings = matched_rows(result.rows, result.frontier, result.items) if result.frontier else []  # issue 29's headline reading
    trend = trend_rows(result.rows, result.items)  # with users of several heterogeneities: does forgetting grow?
    summary = {"config": asdict(cfg), "users": users, "rows": rows, "contrasts": as_dicts(result.contrasts),
               "frontier": {f"{s:g}": [r.to_dict() for r in rs] for s, rs in result.frontier.items()},
               "matched": as_dicts(readings), "trend": as_dicts(trend), "figures": [str(f) for f in figures],
               "eval_sequences_per_model": n_eval, "adapters": len(result.cells), "planned": result.planned,
               "estimated_seconds": round(result.estimated_seconds), "seconds": result.seconds,
               "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(out / "study.json", summary)
    atomic_write_text(out / "table.csv", csv_text(rows))
    if result.contrasts:
        atomic_write_text(out / "contrasts.csv", csv_text(result.contrasts))
    scaled = [replace(r, method=f"dpo@{s:g}") for s, rs in result.frontier.items() for r in rs]
    md = markdown(result.rows + scaled) + (("\n" + contrasts_markdown(result.contrasts)) if result.contrasts else "")
    md += ("\n" + matched_markdown(readings)) if readings else ""
    md += ("\n" + trend_markdown(trend)) if trend else ""
    md += "\nWhat each arm cost:\n\n" + cost_markdown(result.rows)
    if len(result.cells) < result.planned:
        md = (f"**So far** (`bapo study --so-far`, {time.strftime('%Y-%m-%d %H:%M')}): the {len(result.cells)} of the "
              f"study's {result.planned} adapters whose every score was cached; the rest are not in these tables.\n\n"
              + md)
    atomic_write_text(out / "table.md", md)
    console.print(md)
    console.print(f"study: {out / 'study.json'}, {out / 'table.md'}, figures in {out / 'figures'} "
                  f"({result.seconds / 60:.1f} min)")
