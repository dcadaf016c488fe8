"""Retention at matched personalization: the reading issue 29's frontier study reports (the trend's slope is
:mod:`bapo.studies.trend`).

A method's knob (DPO's LoRA scale, BAPO's lambda, replay's and KL's lambda) traces a *frontier*: for each setting,
the held-out personalization it reached and what it kept of a retention measure. Comparing two methods at their
defaults mixes "forgets less" with "personalizes less"; reading each method's retention at the *same*
personalization, interpolated along its own frontier, separates them. Here the personalization levels are those of
full DPO and of DPO at scale 0.5, seed by seed, and the reading is a difference from DPO's own frontier at that
level; a third level, where the method's own default setting landed, compares a method whose knob reaches neither
(BAPO's lambda, at ``flip:0.5``) with DPO weakened to the personalization it does reach. Intervals are over seeds
and items: a seed-to-seed part (the spread of the seeds' differences) and, where the per-item scores are given, an
item part (the spread over items of the seed-averaged per-item difference: every model meets the same items, so the seeds' spread alone says nothing of which items were drawn), combined with
Welch-Satterthwaite's degrees of freedom for a t quantile (with 3 to 5 seeds a normal one would be too narrow).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

from bapo.studies.tables import RETENTION

# Two-sided 95% quantiles of Student's t for 1-30 degrees of freedom (a slope over 15 adapters has 13): a table
# rather than scipy, which bapo does not otherwise need.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
       21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042}


def t95(df: int) -> float:
    return T95.get(df, 1.96 + 2.5 / df)  # beyond 30, within 0.002 of the quantile: enough for an interval's 2nd digit


@dataclass(frozen=True)
class FrontierPoint:
    """One knob setting of one method and seed: the personalization it reached and a retention measure's value
    (a change against the base model), with the per-item scores behind it where known (the same items at every
    point, the value's mean being theirs minus the base model's)."""

    personalization: float
    retention: float
    items: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Reading:
    """Retention read at a personalization level: ``value`` None when the level lies outside the frontier, with
    ``reach`` saying on which side ("above": stronger than the method's strongest setting; "below"); ``items`` the
    per-item scores read the same way, where every point has them."""

    value: float | None
    reach: str = "within"
    items: tuple[float, ...] | None = None


def _mean_items(vectors: Sequence[tuple[float, ...] | None]) -> tuple[float, ...] | None:
    if any(v is None for v in vectors) or len({len(v) for v in vectors}) != 1:  # type: ignore[arg-type]
        return None
    return tuple(statistics.fmean(col) for col in zip(*vectors))  # type: ignore[misc]


def read_at(points: Sequence[FrontierPoint], target: float) -> Reading:
    """Retention at ``target`` along a frontier: linear between the two nearest personalization levels (settings
    that reached the same personalization are averaged first); exactly at a level, its value; outside the range,
    no value. Per-item scores, where every point has them, are read with the same weights."""
    if not points:
        return Reading(None, "empty")
    levels: dict[float, list[FrontierPoint]] = {}
    for p in points:
        levels.setdefault(p.personalization, []).append(p)
    xs = sorted(levels)
    ys = [statistics.fmean(p.retention for p in levels[x]) for x in xs]
    items = [_mean_items([p.items for p in levels[x]]) for x in xs]
    if target > xs[-1]:
        return Reading(None, "above")
    if target < xs[0]:
        return Reading(None, "below")
    for i, (x0, x1) in enumerate(zip(xs, xs[1:])):
        if x0 <= target <= x1:
            w = (target - x0) / (x1 - x0)
            both = None if items[i] is None or items[i + 1] is None or len(items[i]) != len(items[i + 1]) else \
                tuple(a + (b - a) * w for a, b in zip(items[i], items[i + 1]))  # type: ignore[arg-type]
            return Reading(ys[i] + (ys[i + 1] - ys[i]) * w, items=both)
    return Reading(ys[0], items=items[0])  # a single level, equal to the target


@dataclass(frozen=True)
class Matched:
    """A method's retention minus DPO's at one personalization level, over seeds: the mean difference and its 95%
    interval over the seeds where both frontiers reach the level (and over items, where their scores are given);
    ``per_seed`` None where one does not. ``seed_se`` and ``item_se`` are the two parts of the standard error."""

    level: str
    delta: float | None
    lo: float | None
    hi: float | None
    per_seed: list[float | None]
    seed_se: float | None = None
    item_se: float | None = None

    @property
    def seeds_in_reach(self) -> int:
        return sum(d is not None for d in self.per_seed)


def matched(method: Sequence[Sequence[FrontierPoint]], dpo: Sequence[Sequence[FrontierPoint]],
            targets: Sequence[float], level: str) -> Matched:
    """``method``'s retention minus DPO's at ``targets[s]`` personalization, seed by seed (``method[s]`` and
    ``dpo[s]`` are seed s's frontiers), then the mean over seeds in reach with its interval.

    The standard error adds the seeds' part, ``sd(d_s)^2 / S``, and, when every reading has per-item scores, the
    items' part, ``sd_i(mean_s e_si)^2 / N`` (``e_si`` the per-item difference of seed s); its t quantile takes
    Welch-Satterthwaite's degrees of freedom. Each part also holds a little of the seed-by-item interaction, so the
    sum errs wide by that. One seed in reach gives no interval: its seed-to-seed spread is unknown."""
    per_seed: list[float | None] = []
    diffs: list[tuple[float, ...] | None] = []
    for pts, ref, target in zip(method, dpo, targets):
        a, b = read_at(pts, target), read_at(ref, target)
        if a.value is None or b.value is None:
            per_seed.append(None)
            continue
        per_seed.append(a.value - b.value)
        same = a.items is not None and b.items is not None and len(a.items) == len(b.items)
        diffs.append(tuple(x - y for x, y in zip(a.items, b.items)) if same else None)  # type: ignore[arg-type]
    got = [d for d in per_seed if d is not None]
    if not got:
        return Matched(level, None, None, None, per_seed)
    iv = over_seeds_and_items(got, _mean_items(diffs))
    return Matched(level, iv.mean, iv.lo, iv.hi, per_seed, iv.seed_se, iv.item_se)


@dataclass(frozen=True)
class Interval:
    """A mean difference over seeds with its 95% interval (None with one seed) and the two parts of its standard
    error (``item_se`` None where no per-item differences were given)."""

    mean: float
    lo: float | None
    hi: float | None
    seed_se: float | None
    item_se: float | None


def over_seeds_and_items(per_seed: Sequence[float], per_item: Sequence[float] | None) -> Interval:
    """The interval of a difference measured at S seeds (``per_seed``, each a mean over the same N items) over seeds
    and items: standard error ``sqrt(sd(per_seed)^2 / S + sd(per_item)^2 / N)``, ``per_item`` being the per-item
    differences averaged over the seeds (the items' part: every model meets the same items, so the seeds' spread
    alone says nothing of which items were drawn); a t quantile at Welch-Satterthwaite's degrees of freedom. Each part
    also holds a little of the seed-by-item interaction, so the sum errs wide by that. One seed gives no interval:
    its seed-to-seed spread is unknown."""
    mean = statistics.fmean(per_seed)
    if len(per_seed) < 2:
        return Interval(mean, None, None, None, None)
    seed_var = statistics.variance(per_seed) / len(per_seed)
    item_var, df = 0.0, float(len(per_seed) - 1)
    if per_item is not None and len(per_item) > 1:
        item_var = statistics.variance(per_item) / len(per_item)
        if seed_var + item_var > 0:  # Welch-Satterthwaite
            df = (seed_var + item_var) ** 2 / (seed_var ** 2 / (len(per_seed) - 1) + item_var ** 2 / (len(per_item) - 1))
    half = t95(max(1, math.floor(df))) * math.sqrt(seed_var + item_var)
    return Interval(mean, mean - half, mean + half, math.sqrt(seed_var),
                    math.sqrt(item_var) if per_item is not None else None)


# The retention measures read at matched personalization (StudyRow fields, each a change against the base model;
# for harmless-request refusals a rise is the loss, so they are left out of a "kept more" reading).
RETAINED = ("knowledge", "generative_knowledge", "alignment", "refusal_harmful", "drift")


@dataclass(frozen=True)
class MatchedRow:
    """One method family against DPO for one user and retention measure, at one personalization level."""

    user: str
    method: str
    measure: str
    level: str
    delta: float | None
    lo: float | None
    hi: float | None
    seeds_in_reach: int
    seeds: int
    per_seed: list[float | None]
    seed_se: float | None = None
    item_se: float | None = None  # None: the interval is over seeds only (no per-item scores given)


def family(method: str) -> str:
    """A method's knob family: ``bapo:0.1`` and ``bapo`` trace BAPO's frontier, ``dpo`` and its scales DPO's."""
    return method.split(":")[0].split("@")[0]


# Per-item scores behind each retention measure of one model: (user, method, seed, LoRA scale) -> measure -> scores.
ItemScores = Mapping[tuple[str, str, int, float], Mapping[str, Sequence[float]]]


def retention_items(scores: Mapping[str, Mapping[str, Sequence[float]]], kinds: Mapping[str, str]) -> dict[str, list[float]]:
    """One model's per-item scores (``bapo eval``'s item_scores.json: task -> metric -> scores) behind each retention
    measure: its tasks' items one after another, so their mean less the base model's is the study table's
    item-weighted change (:func:`bapo.studies.tables.pooled`); drift's are already changes, prompt by prompt."""
    out = {}
    for measure, (kind, metric, only) in RETENTION.items():
        xs = [x for task, ms in scores.items() if kinds.get(task) == kind and metric in ms and only in (None, task)
              for x in ms[metric]]
        if xs:
            out[measure] = xs
    return out


def base_key(user: str) -> tuple[str, str, int, float]:
    """Where :data:`ItemScores` holds the base model's per-item scores for ``user``: DPO's frontier at scale 0."""
    return (user, "base", 0, 0.0)


def _points(rs: Sequence[tuple[object, float]], measure: str, items: ItemScores) -> list[FrontierPoint]:
    """A frontier's points on ``measure``: each (StudyRow, LoRA scale) with its margin, change and per-item scores."""
    pts = []
    for r, scale in rs:
        value = getattr(r, f"{measure}_delta")
        if value is not None and r.personal_margin is not None:
            its = items.get((r.user, r.method, r.seed, scale), {}).get(measure)
            pts.append(FrontierPoint(r.personal_margin, value, None if its is None else tuple(its)))
    return pts


def versus_rows(rows: Sequence, first: str, second: str, items: ItemScores | None = None) -> list[MatchedRow]:
    """``first``'s family minus ``second``'s at the same personalization, seed matched, per user and measure (issue
    46: the hinge against replay where the two personalize differently). Each family's frontier is its knob's
    settings at LoRA scale 1 (``bapo``, ``bapo:0.1``, ...: lambda moves the margin); both are read at the held-out
    margin each family's default setting reached (level ``"FAMILY's own"``), seed by seed, with the 95% interval of
    :func:`matched` over the seeds where both frontiers reach it (and the items). Neither frontier is extended to the
    base model: no lambda gives it. Where a family's settings reached no other margin than its default's, a level
    beyond the other family's range reads "beyond reach" (``delta`` None): neither reaches the other's margin."""
    items = items or {}
    out = []
    for user in dict.fromkeys(r.user for r in rows):
        mine = [r for r in rows if r.user == user and r.personal_margin is not None]
        own = {fam: {r.seed: r.personal_margin for r in mine if r.method == fam} for fam in (first, second)}
        seeds = sorted(set(own[first]) & set(own[second]))
        if not seeds:
            continue
        for measure in RETAINED:
            a, b = ([_points([(r, 1.0) for r in mine if family(r.method) == fam and r.seed == s], measure, items)
                     for s in seeds] for fam in (first, second))
            if not any(a) or not any(b):
                continue
            for fam in (first, second):
                m = matched(a, b, [own[fam][s] for s in seeds], f"{fam}'s own")
                out.append(MatchedRow(user, f"{first} - {second}", measure, m.level, m.delta, m.lo, m.hi,
                                      m.seeds_in_reach, len(seeds), m.per_seed, m.seed_se, m.item_se))
    return out


def matched_rows(rows: Sequence, scaled: dict[float, Sequence], items: ItemScores | None = None) -> list[MatchedRow]:
    """Every non-DPO family's retention against DPO's frontier, per user and measure, at the personalization of
    full DPO, of DPO at scale 0.5 (when the study evaluated that scale) and of the family's own default setting
    (``bapo`` for ``bapo:0.1``'s family: DPO's frontier read where that setting landed, so a family whose knob
    reaches neither DPO level is still compared at equal personalization). ``rows`` are the study's
    :class:`~bapo.studies.tables.StudyRow` objects; ``scaled`` the DPO adapters' rows at each frontier scale;
    ``items`` each model's per-item scores (:func:`retention_items`; the base model's under
    :func:`base_key`), for the items' part of the interval. DPO's frontier includes scale 0, the base model (margin 0,
    no change)."""
    items = items or {}
    out = []
    for user in dict.fromkeys(r.user for r in rows):
        mine = [r for r in rows if r.user == user and r.personal_margin is not None]
        dpo = {r.seed: r for r in mine if r.method == "dpo"}
        if not dpo:
            continue
        seeds = sorted(dpo)
        dpo_scaled = {s: {r.seed: r for r in rs if r.user == user} for s, rs in scaled.items()}
        levels = {"full DPO": {s: dpo[s].personal_margin for s in seeds}}
        if 0.5 in dpo_scaled:
            levels["DPO@0.5"] = {s: dpo_scaled[0.5][s].personal_margin for s in seeds if s in dpo_scaled[0.5]}
        for fam in dict.fromkeys(family(r.method) for r in mine if family(r.method) != "dpo"):
            for measure in RETAINED:
                arm = [_points([(r, 1.0) for r in mine if family(r.method) == fam and r.seed == s], measure, items)
                       for s in seeds]
                ref = [_points([(dpo[s], 1.0), *((d[s], scale) for scale, d in dpo_scaled.items() if s in d)],
                               measure, items) for s in seeds]
                if not any(arm) or not any(ref):
                    continue
                # DPO's frontier starts at scale 0, the base model: no personalization (its margin is 0 by
                # definition, the policy being the reference) and no change; so a method personalizing less than
                # DPO's weakest measured scale is read on the line from the base model to that scale
                base = items.get(base_key(user), {}).get(measure)
                ref = [pts + [FrontierPoint(0.0, 0.0, None if base is None else tuple(base))] for pts in ref]
                own = {r.seed: r.personal_margin for r in mine if r.method == fam and r.seed in dpo}
                for level, target in {**levels, **({f"{fam}'s own": own} if own else {})}.items():
                    idx = [i for i, s in enumerate(seeds) if s in target]
                    m = matched([arm[i] for i in idx], [ref[i] for i in idx], [target[seeds[i]] for i in idx], level)
                    out.append(MatchedRow(user, fam, measure, level, m.delta, m.lo, m.hi, m.seeds_in_reach,
                                          len(idx), m.per_seed, m.seed_se, m.item_se))
    return out


def matched_markdown(rows: Sequence[MatchedRow], intro: str | None = None) -> str:
    """The readings as a markdown table: each family's retention minus DPO's at the same personalization (or, for
    :func:`versus_rows`, one family's minus another's, said in ``intro``)."""
    if not rows:
        return ""

    def num(v):
        return "beyond reach" if v is None else f"{v:+.3f}"

    def se(v):
        return "" if v is None else f"{v:.3f}"

    lines = [intro or "Retention at matched personalization: each method's frontier (its knob's settings) read at "
             "the held-out margin of full DPO, of DPO at scale 0.5 and of the method's own default setting (\"bapo's "
             "own\"), seed by seed, minus DPO's frontier there (from the base model at scale 0 to full DPO; positive "
             "= kept more than DPO at the same personalization); 95% t interval over the seeds in reach and the items "
             "(its standard error's two parts beside it; no items' part: over seeds only); each seed's own "
             "difference last (- where the level is beyond that seed's reach).", "",
             "| user | method | measure | at | difference | 95% interval | se: seeds | se: items | seeds in reach | "
             "per seed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "" if r.lo is None else f"[{r.lo:+.3f}, {r.hi:+.3f}]"
        per_seed = ", ".join("-" if d is None else f"{d:+.3f}" for d in r.per_seed)
        lines.append(f"| {r.user} | {r.method} | {r.measure} | {r.level} | {num(r.delta)} | {ci} | {se(r.seed_se)} | "
                     f"{se(r.item_se)} | {r.seeds_in_reach}/{r.seeds} | {per_seed} |")
    return "\n".join(lines) + "\n"
