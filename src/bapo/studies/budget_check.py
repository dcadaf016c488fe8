"""Which forgetting-budget probe can be trusted (``bapo train --forgetting-budget``, :mod:`bapo.budget`)?

A study's adapters, at every scale the study measured in full (1 for every arm; DPO's ``frontier_scales`` too), are
probed again the way a budget probes them, on items the full measures do not contain: the default drift probe (the
package's 40 general prompts), TriviaQA questions and harmful requests held back from the study's own sets. For each
candidate probe (a measure and a number of items: a seeded subset of the probed items, the same for every adapter)
and each budget, the probe chooses each adapter's largest measured scale within the budget, as ``bapo train`` would;
the budget *holds* when the full measure at that scale is within it too (TriviaQA 1,000 for ``qa``, the study's
harmful requests for ``refusal``, its drift prompts for ``drift``). Each row also says how much of the adapter's
held-out margin the choice keeps, against what the full measure itself would have allowed, what ARC-Easy + PIQA lost
and how many more harmless requests were refused at the choice (measures no probe reads), and how many adapters the
budget binds at all (whose full measure at their strongest scale exceeds it): "holds" is vacuous for the others, so
a probe is marked by how often it holds for the adapters the budget binds (none where it binds none). A probe
smaller than the pool is a random draw of it, as a user's probe set would be: each row averages ``draws`` seeded
draws.

The probes are cached per adapter and scale in ``STUDY/budget_check/probes.json``: a rerun resumes.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from rich.console import Console

from bapo import progress
from bapo.budget.probe import Prober, probe_of, share_lost
from bapo.evaluation.records import Record
from bapo.evaluation.tasks import TaskSpec, load_suite, spec_items
from bapo.evaluation.runner import evaluate, unscored
from bapo.io import atomic_write_text, write_json
from bapo.options import load_yaml
from bapo.runtime.adapters import applied, read_adapter
from bapo.runtime.config import BudgetSettings
from bapo.runtime.reference import open_reference
from bapo.studies.config import StudyConfig
from bapo.studies.plan import Cell, cell_dir, eval_config, frontier_config, frontier_scales, plan
from bapo.training.config import TrainConfig

# ``qa_share`` (bapo.budget.probe.share_lost) is checked too: the share of the questions the base model answered right
# that the adapter lost. ``qa`` did not hold because the share of all questions lost is capped by the base model's
# accuracy, which differs from question set to question set (6.0% on the probe pool against 10.3% on the study's
# 1,000, 2026-12-06); a share of what it knew should not be. Its full measure is TriviaQA's loss over the base model's
# TriviaQA accuracy.
nan = float("nan")


@dataclass(frozen=True)
class Point:
    """One adapter at one scale, measured in full: each measure's loss against the base model (positive = lost),
    ARC-Easy + PIQA's too (``knowledge``), the rise in harmless requests refused (``over_refusal``), and its held-out
    margin."""

    cell: str
    scale: float
    full: dict[str, float]
    margin: float


@dataclass(frozen=True)
class HoldRow:
    """A probe (measure, items) at one budget, over every adapter: how often the full measure agrees."""

    measure: str
    items: int
    budget: float
    cases: int
    holds: float  # share of adapters whose full measure at the probe's choice is within the budget
    kept: float  # mean share of the adapter's held-out margin (at scale 1) the probe's choice keeps
    kept_full: float  # the same, had the full measure itself chosen
    chose_base: float  # share of adapters for which only scale 0 met the budget on the probe
    binding: float = 1.0  # share of adapters whose full measure at their strongest scale exceeds the budget
    # mean ARC-Easy + PIQA acc_norm lost, and mean rise in harmless requests refused, at the probe's choice (0 at the
    # base model; NaN where no adapter was measured on them)
    knowledge_lost: float = 0.0
    over_refusal: float = 0.0
    holds_binding: float | None = None  # the same as ``holds`` over the adapters it binds only (None: it binds none)


def _harmful(spec: TaskSpec) -> bool:
    return spec.kind == "refusal" and "harmful" in spec.name


def _full_specs(study: Path) -> dict[str, TaskSpec]:
    tasks = load_suite(str(study / "suite.yaml")).tasks
    return {"drift": next(t for t in tasks if t.kind == "drift"), "qa": next(t for t in tasks if t.kind == "qa"),
            "refusal": next(t for t in tasks if _harmful(t))}


def full_points(study: Path, records: list[Record] | None = None) -> list[Point]:
    """Every adapter at every scale the study evaluated (``eval/`` and ``eval_frontier/``, or ``records``), as
    :class:`Point`."""
    specs = _full_specs(study)
    if records is None:
        records = []
        for folder in ("eval", "eval_frontier"):
            f = study / folder / "results.json"
            if f.exists():
                records += [Record.from_dict(r) for r in json.loads(f.read_text())["records"]]
    loss = {"drift": (specs["drift"].name, "logp_change_per_token"), "qa": (specs["qa"].name, "acc"),
            "refusal": (specs["refusal"].name, "refusal")}
    by: dict[tuple[str, float], dict[tuple[str, str], Record]] = {}
    for r in records:
        if r.adapter:
            by.setdefault((Path(r.adapter).name, r.scale), {})[(r.task, r.metric)] = r
    points = []
    for (cell, scale), recs in sorted(by.items()):
        if not all(k in recs and recs[k].delta is not None for k in loss.values()):
            continue
        full = {m: -recs[k].delta for m, k in loss.items()}  # type: ignore[operator]
        qa = recs[loss["qa"]]
        base_acc = qa.value - qa.delta  # type: ignore[operator]
        full["qa_share"] = full["qa"] / base_acc if base_acc > 0 else nan
        mc = [r.delta for (t, metric), r in recs.items() if r.kind == "mc" and metric == "acc_norm"]
        full["knowledge"] = -sum(mc) / len(mc) if mc else float("nan")
        harmless = [r.delta for (t, metric), r in recs.items() if r.kind == "refusal" and metric == "refusal"
                    and "harmless" in t and r.delta is not None]
        full["over_refusal"] = harmless[0] if harmless else float("nan")
        margin = next((r.value for (t, metric), r in recs.items() if r.kind == "personal" and metric == "margin"),
                      float("nan"))
        points.append(Point(cell, scale, full, margin))
    return points


def probe_pools(study: Path, qa_items: int, refusal_items: int, seed: int = 0) -> dict[str, list]:
    """TriviaQA questions and harmful requests the study's full measures do not contain (seeded subsets)."""
    specs, out = _full_specs(study), {}
    for m, n in (("qa", qa_items), ("refusal", refusal_items)):
        used = {repr(i) for i in spec_items(specs[m])}
        pool = [i for i in spec_items(replace(specs[m], limit=0)) if repr(i) not in used]
        out[m] = random.Random(seed).sample(pool, min(n, len(pool)))
    return out


def _trained(cfg: StudyConfig) -> list[Cell]:
    return [c for c in plan(cfg) if (cell_dir(Path(cfg.out), c) / "run.json").exists()]


def _scales(cfg: StudyConfig, cell: Cell) -> list[float]:
    return [1.0, *frontier_scales(cfg)] if cell.method == "dpo" else [1.0]


def study_targets(cfg: StudyConfig) -> list[tuple[str, float]]:
    """Every trained cell of the study at every scale the study measures it at: 1, and DPO's ``frontier_scales``."""
    return [(c.name, s) for c in _trained(cfg) for s in _scales(cfg, c)]


def scored_points(cfg: StudyConfig, console: Console | None = None) -> list[Point]:
    """Every trained cell at every scale the study measures it at whose every score the study's cache already holds
    (the base model's too), read from it with ``bapo eval`` scoring nothing: what a study part way through its
    evaluation has measured in full, one adapter and scale at a time."""
    out, records = Path(cfg.out), []
    for cell in _trained(cfg):
        for scale in _scales(cfg, cell):
            ev = replace(eval_config(cfg, [cell], out / "suite.yaml", out), adapter_scales=[scale],
                         out=str(out / "budget_check" / "full" / f"{cell.name}@{scale:g}"))
            if not unscored(ev):
                records += evaluate(ev, console).records
    return full_points(out, records)


def drift_points(cfg: StudyConfig, console: Console | None = None) -> list[Point]:
    """Every trained cell at every scale the study measures it at, measured in full on drift alone (the study's drift
    prompts, and the held-out margin): ``bapo eval`` with the study's own settings, so what it scores is cached under
    the keys the study reads, and costs the study nothing later. Minutes, where the study's full evaluation takes ten
    per adapter: the drift probe can be validated on every adapter while the study still scores them."""
    out, cells = Path(cfg.out), _trained(cfg)
    if not cells:
        return []
    suite = out / "budget_check" / "drift_suite.yaml"
    tasks = yaml.safe_load((out / "suite.yaml").read_text())["tasks"]
    atomic_write_text(suite, yaml.safe_dump({"tasks": [t for t in tasks if t["kind"] == "drift"]}, sort_keys=False))
    ev = replace(eval_config(cfg, cells, suite, out), out=str(out / "budget_check" / "eval_drift"))
    records = list(evaluate(ev, console).records)
    scaled = frontier_config(cfg, cells, suite, out)
    if scaled is not None:
        records += evaluate(replace(scaled, out=str(out / "budget_check" / "eval_drift_frontier")), console).records
    by: dict[tuple[str, float], dict[str, Record]] = {}
    for r in records:
        if r.adapter:
            by.setdefault((Path(r.adapter).name, r.scale), {})[r.kind] = r
    return [Point(cell, scale, {"drift": -recs["drift"].delta}, recs["personal"].value)  # type: ignore[operator]
            for (cell, scale), recs in sorted(by.items()) if "drift" in recs and "personal" in recs]


def study_points(cfg: StudyConfig, console: Console | None = None) -> list[Point]:
    """The study's adapters at every scale it measures them at: every measure where the study has scored them
    (:func:`scored_points`), drift alone (:func:`drift_points`) where it has not yet."""
    complete = {(p.cell, p.scale): p for p in scored_points(cfg, console)}
    drift = {(p.cell, p.scale): p for p in drift_points(cfg, console)}
    return [complete.get(k, p) for k, p in sorted({**drift, **complete}.items())]


def probe_study(study: Path, qa_items: int = 300, refusal_items: int = 100, console: Console | None = None,
                targets: list[tuple[str, float]] | None = None) -> dict[str, dict[str, list[float]]]:
    """Each adapter and scale (``CELL@SCALE``) -> each measure's per-item probe losses, and under ``qa_base`` the base
    model's own per-item qa scores; cached, resumable. ``targets``: the (cell, scale) to probe
    (:func:`study_targets`), by default those the study has measured in full."""
    console = console or Console()
    cache, weights = study / "budget_check" / "probes.json", study / "budget_check" / "digests.json"
    done: dict[str, dict[str, list[float]]] = json.loads(cache.read_text()) if cache.exists() else {}
    probed: dict[str, str] = json.loads(weights.read_text()) if weights.exists() else {}
    targets = targets if targets is not None else [(p.cell, p.scale) for p in full_points(study)]
    digest = {cell: read_adapter(study / "cells" / cell).digest for cell in {c for c, _ in targets}}
    # a probe serves the weights it probed: an adapter trained again (a study's folder lost, studies/carry.py) whose
    # weights differ is probed again
    todo = [(cell, scale) for cell, scale in targets
            if f"{cell}@{scale:g}" not in done or probed.get(cell, digest[cell]) != digest[cell]]
    if not targets or (not todo and all("qa_base" in v for v in done.values())):
        return done
    cfg = load_yaml(study / "cells" / (todo or targets)[0][0] / "config.yaml", TrainConfig)
    ref = open_reference(cfg.model, cfg.data.max_length, cfg.data.max_prompt_length, cfg.cache_dir, cfg.device,
                         cfg.dtype)
    settings = BudgetSettings(spec="drift:0,qa:0,refusal:0", drift_items=0)
    console.print(f"probing {len(todo)} adapter scales ({len(done)} cached)")
    prober = Prober(ref, settings, items=probe_pools(study, qa_items, refusal_items))
    for v in done.values():  # the base model's own score on each qa probe item (for qa_share), probed before it was kept
        v["qa_base"] = prober.base_items["qa"]
    write_json(cache, done)
    with progress.bar("probes", len(todo)) as advance:
        for cell, scale in todo:
            with applied(ref.model, study / "cells" / cell, scale) as model:
                done[f"{cell}@{scale:g}"] = {**prober.item_losses(model), "qa_base": prober.base_items["qa"]}
            probed[cell] = digest[cell]
            write_json(cache, done)
            write_json(weights, probed)
            advance(1)
    return done


def hold_rows(points: list[Point], probes: dict[str, dict[str, list[float]]], sizes: dict[str, list[int]],
              budgets: dict[str, list[float]], seed: int = 0, draws: int = 20) -> list[HoldRow]:
    """For each measure, probe size and budget: the budget applied to every adapter by the probe (largest measured
    scale within it, else 0) and checked on the full measure at that scale, averaged over ``draws`` seeded subsets of
    the probed items (one when the size is the whole pool). See the module."""
    probed: dict[str, dict[float, Point]] = {}
    for p in points:
        if f"{p.cell}@{p.scale:g}" in probes:
            probed.setdefault(p.cell, {})[p.scale] = p
    rows = []
    for m in sizes:  # each measure over the adapters measured on it in full at every scale (drift: every adapter)
        cells = {c: scales for c, scales in probed.items() if all(m in p.full for p in scales.values())}
        if not cells:
            continue
        n_items = min(len(next(iter(probes.values()))[probe_of(m)]), max(sizes[m]))
        for k in sizes[m]:
            k = min(k, n_items)
            subsets = [random.Random(seed + d).sample(range(n_items), k) for d in range(draws if k < n_items else 1)]
            for b in budgets[m]:
                holds, kept, kept_full, base, lost, over, held_binding = [], [], [], [], [], [], []
                binding = [scales[max(scales)].full[m] > b for scales in cells.values()]
                for idx in subsets:
                    for scales, binds in zip(cells.values(), binding):
                        on_probe = {s: probe_loss(probes[f"{p.cell}@{s:g}"], m, idx) for s, p in scales.items()}
                        chosen = max((s for s in scales if on_probe[s] <= b), default=0.0)
                        oracle = max((s for s, p in scales.items() if p.full[m] <= b), default=0.0)
                        top = scales[max(scales)].margin
                        holds.append((scales[chosen].full[m] if chosen else 0.0) <= b)
                        if binds:
                            held_binding.append(holds[-1])
                        kept.append(scales[chosen].margin / top if chosen and top > 0 else 0.0)
                        kept_full.append(scales[oracle].margin / top if oracle and top > 0 else 0.0)
                        base.append(chosen == 0.0)
                        # the base model loses nothing, but counts only where the adapter was measured on them
                        lost.append(scales[chosen if chosen else max(scales)].full.get("knowledge", nan) * bool(chosen))
                        over.append(scales[chosen if chosen else max(scales)].full.get("over_refusal", nan)
                                    * bool(chosen))
                n = len(holds)
                if n:
                    rows.append(HoldRow(m, k, b, len(cells), sum(holds) / n, sum(kept) / n, sum(kept_full) / n,
                                        sum(base) / n, sum(binding) / len(binding), _mean(lost), _mean(over),
                                        sum(held_binding) / len(held_binding) if held_binding else None))
    return rows


def probe_loss(probe: dict[str, list[float]], measure: str, idx: list[int]) -> float:
    """A probe's loss on the items ``idx``, as :meth:`bapo.budget.probe.Prober.losses` computes it."""
    if measure == "qa_share":
        return share_lost([probe["qa"][i] for i in idx], [probe["qa_base"][i] for i in idx])
    return sum(probe[measure][i] for i in idx) / len(idx)


def _mean(xs: list[float]) -> float:
    """The mean of what was measured (NaN where none was: an adapter measured on drift alone)."""
    kept = [x for x in xs if not math.isnan(x)]
    return sum(kept) / len(kept) if kept else nan


def default_probes(rows: list[HoldRow], target: float = 0.9) -> dict[tuple[str, float], int]:
    """Per measure and budget, the fewest probe items whose budget holds in at least ``target`` of the adapters it
    binds: where an adapter's full measure is within the budget even at scale 1, any probe's choice holds, so counting
    those would let the mix of adapters in a study, not the probe, decide (a budget that binds none validates
    nothing)."""
    out: dict[tuple[str, float], int] = {}
    for r in sorted(rows, key=lambda r: r.items):
        if r.holds_binding is not None and r.holds_binding >= target:
            out.setdefault((r.measure, r.budget), r.items)
    return out


def _pts(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:+.1f} pts"


def markdown(rows: list[HoldRow], target: float = 0.9) -> str:
    """The table RESULTS.md reports: a row per probe and budget; the cheapest probe that holds marked."""
    best = default_probes(rows, target)
    lines = ["| measure | probe items | budget | adapters | budget binds | budget holds | holds where it binds | "
             "margin kept | kept, full measure choosing | only scale 0 | ARC-Easy + PIQA lost | harmless refused more |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " **(cheapest >= 90%)**" if best.get((r.measure, r.budget)) == r.items else ""
        where = "-" if r.holds_binding is None else f"{r.holds_binding:.0%}"
        lines.append(f"| {r.measure} | {r.items} | {r.budget:g} | {r.cases} | {r.binding:.0%} | {r.holds:.0%} | "
                     f"{where}{mark} | {r.kept:.0%} | {r.kept_full:.0%} | {r.chose_base:.0%} | "
                     f"{_pts(r.knowledge_lost)} | {_pts(r.over_refusal)} |")
    return "\n".join(lines) + "\n"
