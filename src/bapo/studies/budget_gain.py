"""What letting the forgetting budget choose among methods gains over scaling DPO alone (issue 46, part 3).

``bapo train --method dpo,replay,bapo --forgetting-budget SPEC`` trains each method, builds into each the largest
scale its probe keeps within the budget, and ships the one with the largest held-out margin
(:func:`bapo.budget.run.best`). On a study's adapters (one per method and seed, trained alike) this replays that
choice for each seed and budget and compares it with DPO alone under the same budget, which is what the budget did
before it chose among methods: the *gain* is the shipped adapter's held-out margin minus DPO's at DPO's own chosen
scale, in nats (never negative: DPO is one of the candidates).

- The probes are :func:`bapo.studies.budget_check.probe_study`'s (items the study's full measures do not contain;
  cached and carried with the study), read at ``bapo train``'s default probe sizes (:class:`BudgetSettings`: a
  seeded subset of each probe's pool, the same for every adapter).
- The held-out margin of each adapter at each scale is computed here on the cell's held-out pairs (the same for
  every cell of a user), as ``bapo train`` computes it when it ships; cached in ``STUDY/budget_gain/margins.json``
  with the weights' digests (a retrained adapter is measured again).
- The interval is over seeds and held-out pairs (:func:`bapo.studies.matched.over_seeds_and_items`): the seeds'
  spread of the gain, and the pairs' spread of the per-pair margin difference averaged over the seeds.
"""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from bapo import progress
from bapo.budget.probe import ProbeRow, choose, probe_of
from bapo.budget.run import Candidate, best
from bapo.core.tokens import encode_pairs
from bapo.data.pairs import load_pairs
from bapo.evaluation.metrics import as_scored, personal_scores
from bapo.io import write_json
from bapo.options import load_yaml
from bapo.runtime.adapters import applied, read_adapter
from bapo.runtime.config import BudgetSettings
from bapo.runtime.reference import build_examples, open_reference
from bapo.studies.budget_check import probe_loss, probe_study
from bapo.studies.config import StudyConfig
from bapo.studies.matched import Interval, over_seeds_and_items
from bapo.studies.plan import Cell, cell_dir, plan
from bapo.training.config import TrainConfig

# The budgets the probes were validated at (docs/RESULTS.md, 2026-12-06; bapo.budget.probe.VALIDATED), each alone and
# all three together
BUDGETS = ["drift:0.1", "refusal:0.05", "qa_share:0.4", "drift:0.1,refusal:0.05,qa_share:0.4"]
SCALES = [1.0, 0.75, 0.5, 0.25]  # bapo train's default --budget-scales above 0


@dataclass(frozen=True)
class SeedChoice:
    """One user and seed under one budget: DPO alone, and the choice among the methods."""

    user: str
    seed: int
    dpo: Candidate
    winner: Candidate
    items: list[float]  # per held-out pair: the winner's margin minus DPO's (at their chosen scales)

    @property
    def gain(self) -> float:
        return self.winner.margin - self.dpo.margin


@dataclass(frozen=True)
class GainRow:
    """One user under one budget, over its seeds."""

    budget: str
    user: str
    seeds: list[SeedChoice] = field(default_factory=list)

    @property
    def gain(self) -> Interval:
        per_item = [statistics.fmean(col) for col in zip(*(s.items for s in self.seeds))]
        return over_seeds_and_items([s.gain for s in self.seeds], per_item)


def probe_items(pool: dict[str, int], settings: BudgetSettings, seed: int = 0) -> dict[str, list[int]]:
    """Each probe's items at ``bapo train``'s sizes: a seeded subset of the pool (``pool``: probe -> pool size)."""
    size = {"drift": settings.drift_items, "qa": settings.qa_items, "refusal": settings.refusal_items}
    return {p: sorted(random.Random(seed).sample(range(n), min(size[p] or n, n))) for p, n in pool.items()}


def chosen_scale(probes: dict[float, dict[str, list[float]]], limits: dict[str, float],
                 items: dict[str, list[int]]) -> float:
    """The scale ``bapo train`` builds in: the largest whose probe losses all stay within ``limits`` (0 when none)."""
    rows = []
    for scale, probe in probes.items():
        losses = {m: probe_loss(probe, m, items[probe_of(m)]) for m in limits}
        rows.append(ProbeRow(scale, losses, all(losses[m] <= lim for m, lim in limits.items())))
    return choose(rows)


def choices(probes: dict[str, dict[float, dict[str, list[float]]]], margins: dict[str, dict[float, list[float]]],
            methods: list[str], limits: dict[str, float], items: dict[str, list[int]], user: str = "",
            seed: int = 0) -> SeedChoice:
    """One seed's choice: each method's chosen scale and its held-out margin there (the base model's margin, 0 on
    every pair, at scale 0), the winner by :func:`bapo.budget.run.best`, and DPO alone (``methods[0]``)."""
    pairs = len(next(iter(margins[methods[0]].values())))  # held-out pairs (the same for every method)
    cands, per_pair = [], {}
    for method in methods:
        scale = chosen_scale(probes[method], limits, items)
        per_pair[method] = margins[method][scale] if scale else [0.0] * pairs
        cands.append(Candidate(method, scale, statistics.fmean(per_pair[method]), 0.0))
    winner = best(cands)
    return SeedChoice(user, seed, cands[0], winner,
                      [w - d for w, d in zip(per_pair[winner.method], per_pair[methods[0]])])


def margins(study: Path, cells: list[Cell], scales: list[float],
            console: Console | None = None) -> dict[str, dict[float, list[float]]]:
    """Each cell's per-pair held-out margin at each scale (cached in ``STUDY/budget_gain/margins.json`` with the
    weights' digests)."""
    console = console or Console()
    path = study / "budget_gain" / "margins.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    digest = {c.name: read_adapter(cell_dir(study, c)).digest for c in cells}
    todo = [(c, s) for c in cells for s in scales
            if done.get(c.name, {}).get("digest") != digest[c.name] or f"{s:g}" not in done[c.name]]
    if todo:
        console.print(f"held-out margins of {len(todo)} adapter scales ({sum(len(v) - 1 for v in done.values())} "
                      "cached)")
        cfg = load_yaml(cell_dir(study, todo[0][0]) / "config.yaml", TrainConfig)  # the study's model and dtype
        ref = open_reference(cfg.model, cfg.data.max_length, cfg.data.max_prompt_length, cfg.cache_dir, cfg.device,
                             cfg.dtype)
        examples: dict[str, list] = {}
        with progress.bar("held-out margins", len(todo)) as advance:
            for cell, scale in todo:
                folder = cell_dir(study, cell)
                if cell.user not in examples:
                    held = load_pairs(str(folder / "holdout.jsonl"))
                    examples[cell.user] = as_scored(ref, build_examples(ref, held, encode_pairs(held, ref.renderer),
                                                                        cfg.base, False, show=False))
                with applied(ref.model, folder, scale, merge=False) as policy:  # as bapo train scores them to ship
                    m = personal_scores(policy, examples[cell.user], ref.pad_id)["margin"]
                entry = done.get(cell.name, {})
                done[cell.name] = {**(entry if entry.get("digest") == digest[cell.name] else {}),
                                   "digest": digest[cell.name], f"{scale:g}": m}
                write_json(path, done)
                advance(1)
    return {c.name: {s: done[c.name][f"{s:g}"] for s in scales} for c in cells}


def gain_rows(cfg: StudyConfig, methods: list[str], budgets: list[str], scales: list[float] = SCALES,
              console: Console | None = None) -> list[GainRow]:
    """Every user and budget of a study whose cells of ``methods`` (DPO first) are trained for at least one seed:
    probes and margins measured (cached), then each seed's choice."""
    study = Path(cfg.out)
    by_user: dict[str, dict[int, dict[str, Cell]]] = {}
    for c in plan(cfg):
        if c.method in methods and not c.balance and (cell_dir(study, c) / "run.json").exists():
            by_user.setdefault(c.user, {}).setdefault(c.seed, {})[c.method] = c
    complete = {u: {s: cs for s, cs in seeds.items() if len(cs) == len(methods)} for u, seeds in by_user.items()}
    cells = [c for seeds in complete.values() for cs in seeds.values() for c in cs.values()]
    if not cells:
        return []
    found = probe_study(study, targets=[(c.name, s) for c in cells for s in scales], console=console)
    measured = margins(study, cells, scales, console)
    pool = {p: len(v) for p, v in found[f"{cells[0].name}@{scales[0]:g}"].items() if p != "qa_base"}
    items = probe_items(pool, BudgetSettings())
    rows = []
    for spec in budgets:
        limits = BudgetSettings(spec=spec).limits()
        for user, seeds in sorted(complete.items()):
            row = GainRow(spec, user)
            for seed, cs in sorted(seeds.items()):
                probes = {m: {s: found[f"{cs[m].name}@{s:g}"] for s in scales} for m in methods}
                row.seeds.append(choices(probes, {m: measured[cs[m].name] for m in methods}, methods, limits, items,
                                         user, seed))
            rows.append(row)
    return rows


def markdown(rows: list[GainRow]) -> str:
    """The table RESULTS.md reports: a row per user and budget."""
    lines = ["| budget | user | seeds | DPO alone: scale, margin | chosen: method@scale, margin | gain (nats) | "
             "95% interval | per seed |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r.gain
        dpo = ", ".join(f"{s.dpo.scale:g}" for s in r.seeds)
        won = Counter(f"{s.winner.method}@{s.winner.scale:g}" for s in r.seeds)
        interval = "-" if g.lo is None else f"[{g.lo:+.2f}, {g.hi:+.2f}]"
        lines.append(f"| {r.budget} | {r.user} | {len(r.seeds)} | {dpo}; "
                     f"{statistics.fmean(s.dpo.margin for s in r.seeds):.2f} | "
                     f"{', '.join(f'{k} x{n}' for k, n in won.items())}; "
                     f"{statistics.fmean(s.winner.margin for s in r.seeds):.2f} | {g.mean:+.2f} | {interval} | "
                     f"{', '.join(f'{s.gain:+.2f}' for s in r.seeds)} |")
    return "\n".join(lines) + "\n"
