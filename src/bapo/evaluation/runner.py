"""``bapo eval``: the base model and any number of adapters, side by side, on the same items.

For every (model, adapter scale) it computes each task as per-item scores (cached on disk by model and adapter
fingerprint, so the base model is computed once and a rerun is instant), then reports each metric's mean with its
standard error and, for adapters, the paired change against the base model with a 95% interval.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bapo import progress
from bapo.data.feedback import holds_feedback, load_feedback
from bapo.data.pairs import PreferencePair, load_pairs
from bapo.errors import BapoError, ConfigError
from bapo.evaluation.config import EvalConfig
from bapo.evaluation.lm_eval import lm_eval_scores
from bapo.evaluation.metrics import TIE_NATS, Stat, paired_delta
from bapo.evaluation.records import Record, markdown_table
from bapo.evaluation.samples import Asked, Samples, take_answers, write_samples
from bapo.evaluation.tasks import (KINDS, Scorer, Task, TaskSpec, generates, generation_key, load_suite, load_task,
                                   personal_task)
from bapo.io import as_dicts, atomic_write_text, csv_text, write_json
from bapo.runtime import distributed
from bapo.runtime.adapters import AdapterInfo, applied, check_same_model, read_adapter
from bapo.runtime.cluster import run_in_tasks, task_threads
from bapo.runtime.models import (cache_root, cpu_has_bf16, cpu_name, dtype_name, load_reward_model, model_fingerprint,
                                 resolve_device, resolve_dtype, resolve_model)
from bapo.runtime.reference import Reference, open_reference, weights_cache_id
from bapo.runtime.remote import RemoteModel
from bapo.runtime.store import Store, make_key

Scores = dict[str, dict[str, dict[str, list[float]]]]  # model label -> task -> metric -> per-item values


@dataclass
class Candidate:
    """One model to score: the base model, or an adapter at one scale, with the personal tasks that are its own."""

    label: str
    adapter: AdapterInfo | None = None
    scale: float = 1.0
    personal: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.adapter.method if self.adapter else "base"

    @property
    def digest(self) -> str:
        return self.adapter.digest if self.adapter else "base"


@dataclass
class EvalResult:
    """What ``bapo eval`` measured: the records (also in ``results.json``) and every per-item score behind them."""

    records: list[Record]
    item_scores: Scores
    out: Path
    seconds: float
    samples: Samples = field(default_factory=lambda: Samples([], []))  # what the models wrote (generative tasks)


def _personal_who(adapter: Path, pairs: list[PreferencePair]) -> str:
    users = {p.user_id for p in pairs}
    return users.pop() if len(users) == 1 and None not in users else adapter.name


def candidates(cfg: EvalConfig) -> tuple[list[Candidate], dict[str, Task]]:
    """The base model and every adapter at every scale, and the personal tasks (one per distinct holdout file)."""
    out = [Candidate("base")]
    personal: dict[str, Task] = {}
    by_digest: dict[str, str] = {}  # holdout file digest -> personal task name
    for a in cfg.adapters:
        info = read_adapter(a)
        own = []
        holdout = info.path / "holdout.jsonl"
        if holdout.exists() and holdout.stat().st_size:
            key = hashlib.sha256(holdout.read_bytes()).hexdigest()
            if key not in by_digest:
                pairs = load_feedback(str(holdout)) if holds_feedback(str(holdout)) else load_pairs(str(holdout))
                who = _personal_who(info.path, pairs)
                name = f"personal:{who}"
                if name in personal:  # the same user's other held-out pairs (another split): named by this adapter
                    name = f"personal:{who}@{info.path.name}"
                by_digest[key] = name
                personal[name] = personal_task(name, pairs, who, TIE_NATS)
            own = [by_digest[key]]
        for s in cfg.adapter_scales:
            label = info.path.name if cfg.adapter_scales == [1.0] else f"{info.path.name}@{s:g}"
            out.append(Candidate(label, info, s, own))
    if len({c.label for c in out}) != len(out):
        raise ConfigError("--adapters: two adapters share a directory name; give them distinct names")
    return out, personal


def suite_specs(cfg: EvalConfig) -> list[TaskSpec]:
    """The suite's task specs, with the general reward task when a reward model is given."""
    specs = load_suite(cfg.suite).tasks
    if cfg.reward_model and not any(t.kind == "reward" for t in specs):
        specs.append(TaskSpec("general_reward", "reward", "package:general_prompts.jsonl"))
    if any(t.kind == "reward" for t in specs) and not cfg.reward_model:
        raise ConfigError("suite: a reward task needs --reward-model")
    return specs


def suite_tasks(cfg: EvalConfig, console: Console) -> list[Task]:
    """The suite's tasks, loaded and validated before any model work."""
    tasks = [load_task(t) for t in suite_specs(cfg)]
    for t in tasks:
        console.print(f"task [bold]{t.spec.name}[/] ({t.spec.kind}): {len(t.items)} items from {t.spec.path}")
    return tasks


def eval_key(cache_id: str, cand: Candidate, task_name: str, task_key: str, cfg: EvalConfig,
             generated: bool = False) -> str:
    """Where one candidate's scores on one task are cached: the reference's weights and dtype, the adapter's
    weights, its scale, the task and what it reads, and the settings that change a score: the scoring batch (in
    bfloat16 a log-prob depends on its batch; left out at the default, 16, so caches from before it was keyed stay
    valid) and, for a task that generates, what its greedy answers depend on besides the weights
    (:func:`~bapo.evaluation.tasks.generation_key`: the generation batch, and on a CPU the thread count)."""
    batch = [("scoring batch", cfg.batch_size)] if cfg.batch_size != 16 else []
    gen = generation_key(generated, cfg.generate_batch_size, str(resolve_device(cfg.device)))
    return make_key("eval", cache_id, cand.digest, cand.scale, task_name, task_key, cfg.max_length,
                    cfg.max_prompt_length, cfg.reward_model, *batch, *gen)


def unscored(cfg: EvalConfig) -> list[str]:
    """The labels of the candidates ``bapo eval`` with this config would still score: those with any task of the
    suite, or of their own held-out pairs, not in the cache yet. Loads no model (what a dry run can afford)."""
    tasks = [(t.name, t.key(), KINDS[t.kind].generates) for t in suite_specs(cfg)]
    cands, personal = candidates(cfg)
    path = resolve_model(cfg.model, cfg.cache_dir)
    cid = weights_cache_id(model_fingerprint(path), resolve_dtype(cfg.dtype, resolve_device(cfg.device)))
    store = Store(cache_root(cfg.cache_dir) / "reference.sqlite")
    try:
        return [c.label for c in cands
                if any(store.get_eval(eval_key(cid, c, name, key, cfg, gen)) is None
                       for name, key, gen in tasks + [(n, personal[n].key, generates(personal[n]))
                                                      for n in c.personal])]
    finally:
        store.close()


def cached_scores(cand: Candidate, tasks: list[Task], scorer: Scorer, cfg: EvalConfig) -> dict[str, dict | None]:
    """What the cache holds of one candidate's scores, by task (None where a task is not cached); keyed by model,
    adapter, scale and task."""
    ref = scorer.ref
    return {task.spec.name: ref.store.get_eval(eval_key(ref.cache_id, cand, task.spec.name, task.key, cfg,
                                                        generates(task))) for task in tasks}


def score_candidate(model, cand: Candidate, tasks: list[Task], scorer: Scorer, cfg: EvalConfig, title: str = "",
                    found: dict[str, dict | None] | None = None) -> dict:
    """Every task of one candidate, each from the cache when it is there (``found``: :func:`cached_scores`, when
    read already); ``title`` heads its progress bars (default: its label)."""
    ref = scorer.ref
    found = found if found is not None else cached_scores(cand, tasks, scorer, cfg)
    out = {}
    for task in tasks:
        cached = found[task.spec.name]
        if cached is None:
            with progress.bar(f"{title or cand.label}: {task.spec.name}", task.kind.sequences(task.items)) as advance:
                cached = task.kind.score(model, task, scorer, advance)
            ref.store.put_eval(eval_key(ref.cache_id, cand, task.spec.name, task.key, cfg, generates(task)), cached)
        out[task.spec.name] = cached
    return out


def score_one(cfg: EvalConfig, cand: Candidate, tasks: list[Task], personal: dict[str, Task], scorer: Scorer,
              console: Console, title: str = "") -> dict:
    """One candidate's scores on the suite and on its own personal tasks, with its adapter applied (not applied
    where every score is cached: an adapter's record without its weights is read so)."""
    mine = [personal[n] for n in personal if cand.adapter is None or n in cand.personal]
    found = cached_scores(cand, tasks + mine, scorer, cfg)
    if not cfg.lm_eval_tasks and all(v is not None for v in found.values()):
        return found
    with applied(scorer.ref.model, cand.adapter.path if cand.adapter else None, cand.scale,
                 cfg.merge_adapters) as model:
        scores = score_candidate(model, cand, tasks + mine, on_server(scorer, cand, model), cfg, title, found)
        if cfg.lm_eval_tasks:
            scores.update(lm_eval_scores(model, scorer.ref.tokenizer, cfg.lm_eval_tasks, cfg.batch_size, cand.label,
                                         console))
    return scores


def on_server(scorer: Scorer, cand: Candidate, model) -> Scorer:
    """``scorer`` with the candidate's answers generated on the server of ``--generate-with`` where there is one: an
    adapter under its folder's name (bapo serve --adapters PARENT serves it so; vLLM --lora-modules NAME=PATH), at
    its scale through bapo serve's ``adapter_scale``; the base model under the server's base model id. The server
    is checked against ``model`` (the same adapter applied here) before its first answer."""
    engine = scorer.ref.remote_engine()
    if engine is None:
        return scorer
    name = Path(cand.adapter.path).name if cand.adapter is not None else engine.model
    scale = cand.scale if cand.adapter is not None else 1.0
    return replace(scorer, generate_on=RemoteModel(engine, name, model, scale))


def score_all(cfg: EvalConfig, cands: list[Candidate], tasks: list[Task], personal: dict[str, Task], scorer: Scorer,
              console: Console) -> tuple[Scores, list[int]]:
    """Every (candidate, task) score. With several processes each scores every N-th candidate's tasks (the unit an
    adapter is applied for) and all receive the merged scores; returns them and the units each process scored."""
    computed: dict[str, dict] = {}
    mine = distributed.shard(cands)
    for i, cand in enumerate(mine, 1):  # "model 3/44" on every bar: a study's evaluation runs for hours
        computed[cand.label] = score_one(cfg, cand, tasks, personal, scorer, console,
                                         f"model {i}/{len(mine)} {cand.label}")
    parts = distributed.gather(computed)
    merged = {label: s for part in parts for label, s in part.items()}
    return {c.label: merged[c.label] for c in cands}, [len(p) for p in parts]


def prepare(cfg: EvalConfig, console: Console) -> tuple[list[Task], list[Candidate], dict[str, Task], Scorer]:
    """Everything scoring needs: the suite's tasks, the candidates and their personal tasks, what the reference
    prepares for them (cached), and the scorer."""
    cfg.validate()
    tasks = suite_tasks(cfg, console)
    cands, personal = candidates(cfg)
    ref = open_reference(cfg.model, cfg.max_length, cfg.max_prompt_length, cfg.cache_dir, cfg.device, cfg.dtype,
                         cfg.engine)
    for c in cands:
        if c.adapter is not None:
            check_same_model(c.adapter, ref.fingerprint)
    scorer = Scorer(ref, cfg.batch_size, load_reward_model(cfg.reward_model, cfg.device) if cfg.reward_model else None,
                    cfg.generate_batch_size)
    for t in [*tasks, *personal.values()]:
        if t.kind.prepare is not None:
            t.prepared = t.kind.prepare(t, scorer)
    return tasks, cands, personal, scorer


def score_into_cache(cfg: EvalConfig, labels: list[str]) -> None:
    """Score the candidates named ``labels`` (``base``, an adapter's directory name, ``NAME@SCALE``) into the cache:
    one worker's share when a study evaluates its models in several processes (:mod:`bapo.runtime.workers`)."""
    console = Console(quiet=True)
    tasks, cands, personal, scorer = prepare(cfg, console)
    for cand in (c for c in cands if c.label in labels):
        score_one(replace(cfg, lm_eval_tasks=[]), cand, tasks, personal, scorer, console)  # the harness: not cached


def candidate_labels(cfg: EvalConfig) -> list[str]:
    """The label of every model ``bapo eval`` scores with this config (the base model first)."""
    return [c.label for c in candidates(cfg)[0]]


def score_on_cluster(cfg: EvalConfig) -> None:
    """``--executor ray``: every model whose scores are not all cached is scored by its own Ray task into the driver's
    cache, after what the reference prepares for them (drift's answers, held-out log-probs) in one task first. Every
    task, and the driver's reading after, run at the tasks' thread count: on a CPU greedy answers are keyed by it."""
    labels = unscored(cfg)
    if not labels:
        return
    cache = cache_root(cfg.cache_dir) / "reference.sqlite"
    first = run_in_tasks(_prepare_task, [("prepare", (cfg,))], cfg.cluster, cache, "the reference's preparation")
    if first.failed:
        raise BapoError(f"the reference's preparation failed on the cluster: {first.failed['prepare']}")
    done = run_in_tasks(score_into_cache, [(label, (cfg, [label])) for label in labels], cfg.cluster, cache,
                        f"{len(labels)} models scored")
    if done.failed:
        raise BapoError(f"{len(done.failed)} model(s) failed to score (the others are cached; a rerun scores only "
                        "what is missing):\n" + "\n".join(f"{m}: {why}" for m, why in done.failed.items()))


def _prepare_task(cfg: EvalConfig) -> None:
    prepare(cfg, Console(quiet=True))


def evaluate(cfg: EvalConfig, console: Console | None = None) -> EvalResult:
    """Evaluate the base model and every adapter (at every scale); write results and return them."""
    if cfg.cluster.executor == "ray":
        cfg.validate()
        with task_threads(cfg.cluster.task_cpus):
            score_on_cluster(cfg)
            return _evaluate(cfg, console)
    return _evaluate(cfg, console)


def _evaluate(cfg: EvalConfig, console: Console | None = None) -> EvalResult:
    console = console or Console()
    t0 = time.time()
    tasks, cands, personal, scorer = prepare(cfg, console)
    ref = scorer.ref

    scores, by_rank = score_all(cfg, cands, tasks, personal, scorer, console)
    every = [*tasks, *personal.values()]
    samples = take_answers(scores, {t.spec.name: Asked(t.kind.prompts(t), t.kind.answered) for t in every})
    kinds = {t.spec.name: t.spec.kind for t in every}
    records = make_records(cands, scores, kinds)
    result = EvalResult(records, scores, Path(cfg.out), round(time.time() - t0, 1), samples)
    if distributed.is_main():
        write_results(cfg, ref, result, console, by_rank)
    return result


def make_records(cands: list[Candidate], scores: Scores, kinds: dict[str, str]) -> list[Record]:
    """A record per (model, task, metric); adapters' records carry the paired change against the base model."""
    base = scores["base"]
    records = []
    for c in cands:
        for task, metrics in scores[c.label].items():
            for metric, xs in metrics.items():
                if not xs:  # undefined on these items (an AUC of held-out thumbs that are all up, or all down)
                    continue
                s = Stat.of(xs)
                rec = Record(c.label, str(c.adapter.path) if c.adapter else "", c.scale if c.adapter else 0.0,
                             c.method, task, kinds.get(task, "lm_eval"), metric, s.n, s.value, s.stderr)
                if c.adapter is not None and task in base and len(base[task][metric]) == len(xs) and s.n > 1:
                    rec.delta, rec.delta_stderr, rec.delta_lo, rec.delta_hi = paired_delta(xs, base[task][metric])
                records.append(rec)
    return records


def write_results(cfg: EvalConfig, ref: Reference, result: EvalResult, console: Console,
                  by_rank: list[int] | None = None) -> None:
    """results.json (with what ran, where and how long), item_scores.json, results.csv, results.md and, when a task
    generates answers, samples.jsonl and samples.md (:mod:`bapo.evaluation.samples`)."""
    out = result.out
    meta = {"model": cfg.model, "model_fingerprint": ref.fingerprint, "suite": cfg.suite,
            "adapters": cfg.adapters, "adapter_scales": cfg.adapter_scales, "machine": machine(),
            "seconds": result.seconds, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "processes": distributed.world_size(), "models_scored_by_rank": by_rank or [len(result.item_scores)],
            "dtype": dtype_name(ref.model.dtype), "dtype_asked": cfg.dtype}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {**meta, "records": as_dicts(result.records)})
    write_json(out / "item_scores.json", result.item_scores)  # for paired statistics elsewhere (the study)
    atomic_write_text(out / "results.csv", csv_text(result.records))
    md = markdown_table(result.records)
    atomic_write_text(out / "results.md", md)
    if result.samples.samples or result.samples.unrecorded:
        write_samples(out, result.samples, cfg.samples)
    console.print(md)
    console.print(f"results: {out / 'results.json'} ({result.seconds:.0f} s)")


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu_name(), "cpu_bf16_units": cpu_has_bf16(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads()}
