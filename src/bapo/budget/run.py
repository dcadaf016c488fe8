"""``bapo train --forgetting-budget``: train, probe the adapter at each scale, build in the largest scale within the
budget. The adapter as trained is kept in ``OUT/as_trained/``; ``OUT`` itself holds the standard PEFT adapter with the
chosen scale built in (:func:`bapo.runtime.export.write_scaled`), and ``run.json`` the probe's table and the choice.
A rerun with the same budget and scales leaves a probed adapter as it is.

With several methods (``--method dpo,replay,bapo``) the budget also chooses among them: each is trained into
``OUT/candidates/METHOD/`` (sharing the base responses and reference log-probs, which the cache holds once) and
probed, and ``OUT`` receives the one with the largest held-out margin at its chosen scale; ``run.json`` records every
candidate and why the winner won.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.table import Table

from bapo.budget.probe import Prober, ProbeRow, choose, validated
from bapo.core.tokens import encode_pairs
from bapo.data.config import renderer
from bapo.data.pairs import load_pairs
from bapo.errors import BapoError
from bapo.evaluation.metrics import as_scored, personal_scores
from bapo.io import atomic_write_text, csv_text, move_files_into, write_json
from bapo.runtime import distributed
from bapo.runtime.adapters import applied
from bapo.runtime.cluster import run_in_tasks
from bapo.runtime.export import write_scaled
from bapo.runtime.models import cache_root, load_tokenizer, resolve_model
from bapo.runtime.reference import build_examples, load_reference
from bapo.training.config import TrainConfig
from bapo.training.per_user import PerUserResult, train_per_user, user_run
from bapo.training.run import TrainResult, train as train_adapter

AS_TRAINED = "as_trained"  # OUT/as_trained/: the adapter as trained, before its scale was built in
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class BudgetChoice:
    """A probed adapter: the budget, the probe's table (largest scale first), the scale built in, the probe's time,
    and how many items each measure's probe had."""

    limits: dict[str, float]
    rows: list[ProbeRow]
    scale: float
    seconds: float
    items: dict[str, int] = field(default_factory=dict)

    @property
    def nothing_survives(self) -> bool:
        """Only the base model (scale 0) met the budget: none of the user's taste is left."""
        return self.scale == 0.0

    def record(self, scales: list[float]) -> dict:
        return {"limits": self.limits, "scales": scales, "scale": self.scale, "seconds": round(self.seconds, 1),
                "items": self.items, "probe": [asdict(r) for r in self.rows]}


def train(cfg: TrainConfig) -> TrainResult:
    """Train one adapter and, with a forgetting budget, build in its largest scale within it; the Python twin of
    ``bapo train`` (``TrainResult.budget_scale`` is the scale built in). With several methods, the budget chooses
    among them too (:func:`train_methods`)."""
    if len(cfg.methods) > 1:
        return train_methods(cfg)
    result = train_adapter(cfg)
    if cfg.budget.limits():
        result.budget_scale = probed(cfg, [result.out])[0].scale
    return result


def train_each_user(cfg: TrainConfig) -> PerUserResult:
    """``bapo train --per-user``, with each user's adapter probed and scaled when there is a budget; ``users.csv``
    then has each user's built-in scale."""
    if len(cfg.methods) > 1:
        return train_each_user_methods(cfg)
    done = train_per_user(cfg)
    if cfg.budget.limits():
        probed(cfg, [Path(r.out) for r in done.users])
        done.users = [user_run(Path(r.out), r.user) for r in done.users]
        if distributed.is_main():
            atomic_write_text(done.out / "users.csv", csv_text(done.users))
    return done


def probed(cfg: TrainConfig, adapters: list[Path]) -> list[BudgetChoice]:
    """Apply the budget to each adapter folder (one reference and one set of probes for all of them); a folder
    already probed under the same budget and scales is read back, not probed again."""
    choices: dict[Path, BudgetChoice] = {a: c for a in adapters if (c := _earlier(cfg, a)) is not None}
    todo = [a for a in adapters if a not in choices]
    if todo and cfg.cluster.executor == "ray":
        return _probed_on_ray(cfg, adapters, todo)
    if todo and distributed.is_main():
        path = resolve_model(cfg.model, cfg.cache_dir)
        ref = load_reference(path, renderer(load_tokenizer(path), cfg.data), cfg.cache_dir, cfg.device, cfg.dtype,
                             cfg.engine)
        prober = Prober(ref, cfg.budget)
        for a in todo:
            choices[a] = apply_budget(a, prober, cfg.budget.scales)
    distributed.barrier()
    return [choices.get(a) or _earlier(cfg, a) for a in adapters]


def _probed_on_ray(cfg: TrainConfig, adapters: list[Path], todo: list[Path]) -> list[BudgetChoice]:
    """``--executor ray``: the base model's probe scores first (one task), then each adapter probed by its own task;
    an adapter whose probe fails fails alone, named with the others in one error after the rest are done."""
    cache = cache_root(cfg.cache_dir) / "reference.sqlite"
    base = run_in_tasks(_base_probe, [("base model's probe", (cfg,))], cfg.cluster, cache, "the base model's probe")
    if base.failed:
        raise BapoError(f"the base model's probe failed on the cluster: {next(iter(base.failed.values()))}")
    done = run_in_tasks(_probe_task, [(a.name, (cfg, a)) for a in todo], cfg.cluster, cache,
                        f"{len(todo)} adapters probed")
    if done.failed:
        raise BapoError(f"{len(done.failed)} adapter(s) failed their probe (the others are scaled; a rerun probes only "
                        "what is missing):\n" + "\n".join(f"{a}: {why}" for a, why in done.failed.items()))
    return [_earlier(cfg, a) for a in adapters]


def _prober(cfg: TrainConfig) -> Prober:
    path = resolve_model(cfg.model, cfg.cache_dir)
    ref = load_reference(path, renderer(load_tokenizer(path), cfg.data), cfg.cache_dir, cfg.device, cfg.dtype,
                         cfg.engine)
    return Prober(ref, cfg.budget)


def _base_probe(cfg: TrainConfig) -> None:
    _prober(cfg)  # the base model's probe scores, into the cache for every adapter's task


def _probe_task(cfg: TrainConfig, adapter: Path) -> None:
    apply_budget(adapter, _prober(cfg), cfg.budget.scales)


def apply_budget(adapter: Path, prober: Prober, scales: list[float]) -> BudgetChoice:
    """Probe ``adapter`` (its ``as_trained`` copy) at every scale, build the chosen scale into ``adapter``, and record
    the table in its ``run.json``."""
    t0 = time.time()
    trained = adapter / AS_TRAINED
    if trained.exists() and not same_training(trained, adapter):
        shutil.rmtree(trained)  # OUT was trained again since (--resume with other settings): keep the new one
    if not trained.exists():  # the first probe: keep the adapter as trained, then scale the files in place
        staging = adapter / f".{AS_TRAINED}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for name in ADAPTER_FILES:
            shutil.copy2(adapter / name, staging / name)
        staging.rename(trained)
    served_as = ""
    if getattr(prober, "remote", False):  # the server reads OUT: it must hold the adapter as trained while probed
        served_as = adapter.name
        unscaled(adapter, trained)
    rows = prober.table(str(trained), served_as)
    choice = BudgetChoice(prober.limits, rows, choose(rows), time.time() - t0, prober.sizes())
    write_scaled(trained, adapter, choice.scale, {"source": AS_TRAINED, "scale": choice.scale,
                                                  "budget": prober.limits})
    run_file = adapter / "run.json"
    run = json.loads(run_file.read_text()) if run_file.exists() else {}
    write_json(run_file, {**run, "forgetting_budget": choice.record(scales)})
    return choice


def unscaled(adapter: Path, trained: Path) -> None:
    """Put the adapter as trained back into ``adapter`` (where an earlier budget scaled it), forgetting that budget's
    record first: a kill in between leaves an adapter that the next run probes again, never a record that lies."""
    if all((adapter / n).read_bytes() == (trained / n).read_bytes() for n in ADAPTER_FILES):
        return
    run_file = adapter / "run.json"
    if run_file.exists():
        write_json(run_file, {k: v for k, v in json.loads(run_file.read_text()).items() if k != "forgetting_budget"})
    staging = adapter / ".unscaled.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(trained, staging)
    move_files_into(staging, adapter)


def same_training(kept: Path, adapter: Path) -> bool:
    """Whether ``adapter`` is ``kept`` (the copy as trained) or a scaled form of it. A scale lives in the B matrices
    only (:func:`bapo.runtime.export.write_scaled`), so equal A matrices mean the same training run, however ``adapter``
    was scaled since, or whether a kill came half way through scaling it."""
    from safetensors.torch import load_file

    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (kept, adapter))
    lora_a = [k for k in a if ".lora_A." in k]
    return bool(lora_a) and set(lora_a) == {k for k in b if ".lora_A." in k} and all(a[k].equal(b[k]) for k in lora_a)


def _earlier(cfg: TrainConfig, adapter: Path) -> BudgetChoice | None:
    """The choice recorded in ``adapter``'s run.json under this very budget and these scales, if there is one."""
    run_file = adapter / "run.json"
    if not run_file.exists():
        return None
    rec = json.loads(run_file.read_text()).get("forgetting_budget")
    if not rec or rec.get("limits") != cfg.budget.limits() or rec.get("scales") != cfg.budget.scales:
        return None
    return BudgetChoice(rec["limits"], [ProbeRow(**r) for r in rec["probe"]], rec["scale"], rec["seconds"],
                        rec.get("items", {}))


CANDIDATES = "candidates"  # OUT/candidates/METHOD/: each method's adapter when the budget chooses among methods


def candidate_dir(out: Path, method: str) -> Path:
    """Where a candidate method trains: ``OUT/candidates/METHOD`` (``bapo:0.1`` -> ``bapo-l0.1``, file-safe as a
    study's cells are named)."""
    return out / CANDIDATES / method.replace(":", "-l")


@dataclass(frozen=True)
class Candidate:
    """One method's adapter under the budget: the scale built in, and its held-out personalization there."""

    method: str
    scale: float
    margin: float  # mean implicit-reward margin on the held-out pairs, nats
    reward_acc: float


def train_methods(cfg: TrainConfig) -> TrainResult:
    """Train each of ``cfg.methods``, build the budget's scale into each, and ship the one with the largest held-out
    margin within every limit (an adapter at scale 0 is the base model: it qualifies only when none other does)."""
    out, t0 = Path(cfg.out), time.time()
    runs = {}
    for method in cfg.methods:
        sub = cfg.for_method(method, str(candidate_dir(out, method)))
        runs[method] = _finished(Path(sub.out)) or train_adapter(sub)
    probed(cfg, [Path(r.out) for r in runs.values()])  # one reference and one set of probes for every candidate
    winner = ship_best(cfg, {m: Path(r.out) for m, r in runs.items()}, out)
    best = runs[winner.method]
    return TrainResult(out, best.train_examples, best.holdout_examples, best.steps, time.time() - t0, winner.scale)


def train_each_user_methods(cfg: TrainConfig) -> PerUserResult:
    """``--per-user`` with several methods: every method's per-user job into ``OUT/candidates/METHOD/``, each adapter
    probed, then for each user the method with the largest held-out margin within the budget shipped to
    ``OUT/USER``; ``users.csv`` names each user's method."""
    out, t0 = Path(cfg.out), time.time()
    jobs = {m: train_each_user(cfg.for_method(m, str(candidate_dir(out, m)))) for m in cfg.methods}
    first = jobs[cfg.methods[0]]
    path = resolve_model(cfg.model, cfg.cache_dir)
    ref = load_reference(path, renderer(load_tokenizer(path), cfg.data), cfg.cache_dir, cfg.device, cfg.dtype,
                         cfg.engine)
    for run in first.users:
        ship_best(cfg, {m: Path(job.out) / run.user for m, job in jobs.items()}, out / run.user, ref)
    distributed.barrier()
    runs = [user_run(out / r.user, r.user) for r in first.users]
    if distributed.is_main():
        atomic_write_text(out / "users.csv", csv_text(runs))
    return PerUserResult(runs, first.skipped, out, time.time() - t0)


def ship_best(cfg: TrainConfig, adapters: dict[str, Path], out: Path, ref=None) -> Candidate:
    """Of ``adapters`` (one per method, the budget's scale built in), ship to ``out`` the one with the largest
    held-out margin among those above scale 0 (the base model only when none is), with every candidate and why."""
    candidates = held_out(cfg, adapters, ref)
    winner = best(candidates)
    why = (f"the largest held-out margin ({winner.margin:.2f} nats) among the methods within the budget"
           if winner.scale > 0 else "no method met the budget above scale 0: the base model")
    if distributed.is_main():
        _ship(adapters[winner.method], out, {"chosen": winner.method, "why": why,
                                             "candidates": [asdict(c) for c in candidates]})
    distributed.barrier()
    return winner


def best(candidates: list[Candidate]) -> Candidate:
    """The candidate to ship: the largest held-out margin among those above scale 0; the base model (scale 0) only
    when none is. Ties go to the first, in the order the methods were given."""
    return max(candidates, key=lambda c: (c.scale > 0, c.margin))


def _finished(adapter: Path) -> TrainResult | None:
    """A candidate trained by an earlier run (its run.json is written last), read back instead of trained again."""
    run_file = adapter / "run.json"
    if not run_file.exists():
        return None
    run = json.loads(run_file.read_text())
    return TrainResult(adapter, run["train_pairs"], run["holdout_pairs"], run["steps"], run["seconds"])


def held_out(cfg: TrainConfig, adapters: dict[str, Path], ref=None) -> list[Candidate]:
    """Each adapter (its chosen scale built in) on the held-out pairs they share (one seed, one split); ``ref``: the
    reference, when the caller has it loaded."""
    if ref is None:
        path = resolve_model(cfg.model, cfg.cache_dir)
        ref = load_reference(path, renderer(load_tokenizer(path), cfg.data), cfg.cache_dir, cfg.device, cfg.dtype,
                             cfg.engine)
    held = load_pairs(str(next(iter(adapters.values())) / "holdout.jsonl"))
    examples = as_scored(ref, build_examples(ref, held, encode_pairs(held, ref.renderer), cfg.base, False))
    out = []
    for method, adapter in adapters.items():
        with applied(ref.model, adapter, 1.0, merge=False) as policy:
            s = personal_scores(policy, examples, ref.pad_id)
        scale = json.loads((adapter / "run.json").read_text())["forgetting_budget"]["scale"]
        out.append(Candidate(method, scale, statistics.fmean(s["margin"]), statistics.fmean(s["reward_acc"])))
    return out


def _ship(winner: Path, out: Path, choice: dict) -> None:
    """The winner's adapter, split and run files into ``out`` (each file renamed in whole), ``run.json`` last."""
    staging = out / ".shipping"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for f in winner.iterdir():
        if f.is_file() and f.name != "run.json":
            shutil.copy2(f, staging / f.name)
    move_files_into(staging, out)
    run = json.loads((winner / "run.json").read_text())
    write_json(out / "run.json", {**run, "method_choice": choice})


def describe(adapter: Path) -> list:
    """What ``bapo train`` prints after a budget: the budget, the probe's table, and the scale built in (or the
    warning that only the base model met it), from the adapter's ``run.json``; with a choice among methods, each
    candidate's scale and held-out margin first."""
    run = json.loads((adapter / "run.json").read_text())
    if "method_choice" in run:
        choice = run["method_choice"]
        table = Table(title="methods within the forgetting budget")
        for col in ("method", "scale built in", "held-out margin (nats)", "reward acc"):
            table.add_column(col, justify="right")
        for c in choice["candidates"]:
            table.add_row(c["method"], f"{c['scale']:g}", f"{c['margin']:.2f}", f"{c['reward_acc']:.3f}")
        chosen = candidate_dir(adapter, choice["chosen"])
        return [table, f"[green]{choice['chosen']} shipped to[/] {adapter}: {choice['why']}", *describe(chosen)]
    rec = run["forgetting_budget"]
    limits = rec["limits"]
    table = Table()
    for col in ("scale", *limits, "within"):
        table.add_column(col, justify="right")
    for row in rec["probe"]:
        table.add_row(f"{row['scale']:g}", *(f"{row['losses'][m]:+.3f}" for m in limits),
                      "yes" if row["within"] else "no")
    head = (f"forgetting budget: {', '.join(f'{m} <= {v:g}' for m, v in limits.items())} (losses against the base "
            f"model; positive = lost)")
    unchecked = [m for m, b in limits.items() if not validated(m, rec.get("items", {}).get(m, 0), b)]
    if unchecked:
        many = len(unchecked) > 1
        names = " and ".join([", ".join(unchecked[:-1]), unchecked[-1]] if many else unchecked)
        head += (f"\n[yellow]note:[/] the {names} probe{'s are' if many else ' is'} not validated "
                 f"against the full measure{'s' if many else ''} at {'these' if many else 'this'} size and budget "
                 "(docs/budget.md): within the budget on the probe's own items, the adapter may lose more elsewhere")
    if rec["scale"] == 0.0:
        tail = ("[yellow]warning:[/] only the base model (scale 0) met the forgetting budget: nothing of the user's "
                "taste survives; the adapter written is the base model's")
    else:
        tail = (f"[green]scale {rec['scale']:g} built into[/] {adapter} (as trained: {adapter / AS_TRAINED}; probe "
                f"{rec['seconds']:.0f} s)")
    return [head, table, tail]
