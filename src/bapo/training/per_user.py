"""``bapo train --per-user``: one adapter per user, in one process over one loaded model.

Users are trained one after another over the same base model (one user's adapter is taken off before the next one's
is put on), but what the reference computes is computed for all users together first: the base responses and
reference log-probs of every user's pairs go through generation and scoring in full batches, even when each user has
few prompts. Each user gets what ``bapo train`` alone would write, in ``OUT/<user_id>/``, from the same seed. A rerun
skips the users whose ``run.json`` exists and resumes an interrupted one from its checkpoints.
"""

from __future__ import annotations

import copy
import warnings
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from bapo.data.config import renderer
from bapo.data.feedback import validate_feedback
from bapo.data.pairs import load_pairs_by_user, split_holdout, validate_record
from bapo.errors import BapoError, DataError, Problem
from bapo.io import atomic_write_text, csv_text
from bapo.runtime import distributed
from bapo.runtime.cluster import run_in_tasks
from bapo.runtime.models import cache_root, load_tokenizer, resolve_model
from bapo.runtime.reference import build_examples, load_reference
from bapo.training.config import TrainConfig
from bapo.training.items import Item, as_trained, check_encodable, encode_items, is_feedback_data, thumbs_balance
from bapo.training.run import fit, reference_in_batch


@dataclass
class UserRun:
    """One user's adapter: where, from how many pairs, in how many steps, and how training ended."""

    user: str
    pairs: int
    holdout_pairs: int
    steps: int
    final_loss: float | None
    margin: float | None
    anchor_gap: float | None
    seconds: float
    out: str
    budget_scale: float | None = None  # the scale a forgetting budget built in (bapo.budget); None without one
    method: str = ""  # the loss that trained it (with several methods: the one the forgetting budget chose)


@dataclass
class PerUserResult:
    users: list[UserRun]
    skipped: dict[str, str] = field(default_factory=dict)  # user -> the first problem of their data
    out: Path = Path(".")
    seconds: float = 0.0


def user_data(cfg: TrainConfig) -> tuple[dict[str, list[Item]], dict[str, str]]:
    """Every user's validated pairs (or rated answers), and the users skipped for bad data (with ``skip_bad_users``); without it any
    problem is a :class:`DataError` listing them all, before any model is loaded."""
    rated = is_feedback_data(cfg.data.path, cfg.data.split, cfg.loss.unpaired)
    pairs, problems = load_pairs_by_user(cfg.data.path, cfg.data.split, validate_feedback if rated else validate_record)
    loose = problems.pop("", [])
    if problems and not cfg.skip_bad_users or loose:
        raise DataError([*loose, *(p for ps in problems.values() for p in ps)])
    skipped = {u: str(ps[0]) for u, ps in problems.items()}
    pairs = {u: ps for u, ps in pairs.items() if u not in skipped}
    if not pairs:
        raise DataError(Problem(cfg.data.path, 0, "user_id", "no user with valid pairs"))
    return pairs, skipped


def user_config(cfg: TrainConfig, user: str) -> TrainConfig:
    """The config of one user's run: ``OUT/<user>``, resuming its checkpoints if there are any."""
    ucfg = copy.deepcopy(cfg)
    ucfg.out, ucfg.per_user, ucfg.data.user = str(Path(cfg.out) / user), False, user
    ucfg.resume = (Path(ucfg.out) / "checkpoints").exists()
    return ucfg


def train_per_user(cfg: TrainConfig) -> PerUserResult:
    """Train every user's adapter of ``cfg.data.path``; the Python twin of ``bapo train --per-user``."""
    t0 = time.time()
    cfg.validate()
    out = Path(cfg.out)
    by_user, skipped = user_data(cfg)
    splits = {}
    for u, items in by_user.items():
        train, held = split_holdout(items, cfg.data.holdout, cfg.seed)
        splits[u] = as_trained(train, cfg.loss.unpaired), held
        if cfg.loss.unpaired and (warning := thumbs_balance(splits[u][0], cfg.loss.desirable_weight,
                                                            cfg.loss.undesirable_weight)):
            warnings.warn(f"user {u}: {warning}", stacklevel=2)
    model_path = resolve_model(cfg.model, cfg.cache_dir)
    render = renderer(load_tokenizer(model_path), cfg.data)
    encoded, problems = {}, []
    for u, (train_items, held) in splits.items():
        try:
            encoded[u] = encode_items(train_items, render, cfg.seed)
            check_encodable(held, render)
        except DataError as e:
            problems += e.problems
    if problems:
        raise DataError(problems)
    todo = distributed.agreed([u for u in splits if not (out / u / "run.json").exists()])
    failed: dict[str, str] = {}
    if todo and cfg.cluster.executor == "ray":
        failed = train_on_ray(cfg, todo, {u: splits[u] for u in todo}, {u: encoded[u] for u in todo})
    elif todo:
        ref = load_reference(model_path, render, cfg.cache_dir, cfg.device, cfg.dtype, cfg.engine)
        every = [p for u in todo for p in splits[u][0]]  # all users' pairs: full batches for the reference
        examples = build_examples(ref, every, [e for u in todo for e in encoded[u]], cfg.base, cfg.loss.uses_anchor,
                                  batch_size=cfg.batch_size * 2, base_logps=not reference_in_batch(cfg))
        start = 0
        for u in todo:
            n = len(splits[u][0])
            fit(user_config(cfg, u), ref, splits[u][0], splits[u][1], examples[start:start + n], time.time())
            start += n
    distributed.barrier()  # every run.json written (by the main process) before anyone reads them
    runs = [user_run(out / u, u) for u in splits if u not in failed]
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "users.csv", csv_text(runs))
        if skipped:
            atomic_write_text(out / "skipped.txt", "".join(f"{u}: {why}\n" for u, why in skipped.items()))
    if failed:
        raise TrainingFailed(failed, out)
    return PerUserResult(runs, skipped, out, time.time() - t0)


class TrainingFailed(BapoError):
    """Users whose training failed on a cluster (each alone: the others finished and are in users.csv)."""

    def __init__(self, failed: dict[str, str], out: Path):
        self.failed = failed
        lines = [f"user {u}: {why}" for u, why in failed.items()]
        super().__init__(f"{len(failed)} user(s) failed; the others are in {out / 'users.csv'} (a rerun trains only "
                         f"what is missing):\n" + "\n".join(lines))


def train_on_ray(cfg: TrainConfig, users: list[str], splits: dict, encoded: dict) -> dict[str, str]:
    """``--executor ray``: the reference's work for every user at once as one task (full batches, the same batches
    as a local run, so the same numbers; ``--generate-with`` spreads its generation over a server), then each user's
    training as its own task, reading the reference's results from the driver's cache. Returns the users that failed
    on their own input, with why."""
    cache = cache_root(cfg.cache_dir) / "reference.sqlite"
    every = [p for u in users for p in splits[u][0]]
    step = run_in_tasks(_reference_task, [("reference", (cfg, every, [e for u in users for e in encoded[u]]))],
                        cfg.cluster, cache, "reference step")
    if step.failed:
        raise BapoError(f"the reference step failed on the cluster: {step.failed['reference']}")
    return run_in_tasks(_user_task, [(u, (cfg, u, *splits[u], encoded[u])) for u in users], cfg.cluster, cache,
                        f"{len(users)} users").failed


def _task_reference(cfg: TrainConfig):
    path = resolve_model(cfg.model, cfg.cache_dir)
    return load_reference(path, renderer(load_tokenizer(path), cfg.data), cfg.cache_dir, cfg.device, cfg.dtype,
                          cfg.engine)


def _reference_task(cfg: TrainConfig, items: list[Item], encoded: list) -> None:
    """A Ray task: base responses and reference log-probs of every user's pairs, into the driver's cache."""
    build_examples(_task_reference(cfg), items, encoded, cfg.base, cfg.loss.uses_anchor,
                   batch_size=cfg.batch_size * 2, show=False, base_logps=not reference_in_batch(cfg))


def _user_task(cfg: TrainConfig, user: str, train: list[Item], held: list[Item], encoded: list) -> None:
    """A Ray task: one user's adapter into ``OUT/<user>`` (resuming its checkpoints where a first try left some)."""
    ref = _task_reference(cfg)
    examples = build_examples(ref, train, encoded, cfg.base, cfg.loss.uses_anchor, batch_size=cfg.batch_size * 2,
                              show=False, base_logps=not reference_in_batch(cfg))  # from the reference step's cache
    fit(user_config(cfg, user), ref, train, held, examples, time.time())


def user_run(folder: Path, user: str) -> UserRun:
    """One finished user's summary, read from its ``run.json`` and ``metrics.jsonl``."""
    run = json.loads((folder / "run.json").read_text())
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = next((r for r in reversed(rows) if "loss" in r), {})
    return UserRun(user, run["train_pairs"], run["holdout_pairs"], run["steps"], last.get("loss"),
                   last.get("rewards/margins"), last.get("anchor/gap"), run["seconds"], str(folder),
                   run.get("forgetting_budget", {}).get("scale"),
                   run.get("method_choice", {}).get("chosen", run.get("method", "")))
