"""Retention at matched personalization, and a trend's slope: the two readings issue 29's frontier study reports.

A method's knob (DPO's LoRA scale, BAPO's lambda, replay's and KL's lambda) traces a *frontier*: for each setting,
the held-out personalization it reached and what it kept of a retention measure. Comparing two methods at their
defaults mixes "forgets less" with "personalizes less"; reading each method's retention at the *same*
personalization, interpolated along its own frontier, separates them. Here the personalization levels are those of
full DPO and of DPO at scale 0.5, seed by seed, and the reading is a difference from DPO's own frontier at that
level. Intervals are over seeds (a t interval: with 3 to 5 seeds the normal one would be too narrow); the items'
sampling error sits inside each seed's point and is not added here.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

# Two-sided 95% quantiles of Student's t for 1-10 degrees of freedom (beyond: 1.96 at the limit, 2.23 at 10): a table
# rather than scipy, which bapo does not otherwise need.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t95(df: int) -> float:
    return T95.get(df, 1.96 + 2.5 / df)  # the tail is close enough for an interval's second digit


@dataclass(frozen=True)
class FrontierPoint:
    """One knob setting of one method and seed: the personalization it reached and a retention measure's value."""

    personalization: float
    retention: float


@dataclass(frozen=True)
class Reading:
    """Retention read at a personalization level: ``value`` None when the level lies outside the frontier, with
    ``reach`` saying on which side ("above": stronger than the method's strongest setting; "below")."""

    value: float | None
    reach: str = "within"


def read_at(points: Sequence[FrontierPoint], target: float) -> Reading:
    """Retention at ``target`` along a frontier: linear between the two nearest personalization levels (settings
    that reached the same personalization are averaged first); exactly at a level, its value; outside the range,
    no value."""
    if not points:
        return Reading(None, "empty")
    levels: dict[float, list[float]] = {}
    for p in points:
        levels.setdefault(p.personalization, []).append(p.retention)
    xs = sorted(levels)
    ys = [statistics.fmean(levels[x]) for x in xs]
    if target > xs[-1]:
        return Reading(None, "above")
    if target < xs[0]:
        return Reading(None, "below")
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= target <= x1:
            return Reading(y0 + (y1 - y0) * (target - x0) / (x1 - x0))
    return Reading(ys[0])  # a single level, equal to the target


@dataclass(frozen=True)
class Matched:
    """A method's retention minus DPO's at one personalization level, over seeds: the mean difference and its 95%
    t interval over the seeds where both frontiers reach the level; ``per_seed`` None where one does not."""

    level: str
    delta: float | None
    lo: float | None
    hi: float | None
    per_seed: list[float | None]

    @property
    def seeds_in_reach(self) -> int:
        return sum(d is not None for d in self.per_seed)


def matched(method: Sequence[Sequence[FrontierPoint]], dpo: Sequence[Sequence[FrontierPoint]],
            targets: Sequence[float], level: str) -> Matched:
    """``method``'s retention minus DPO's at ``targets[s]`` personalization, seed by seed (``method[s]`` and
    ``dpo[s]`` are seed s's frontiers), then the mean over seeds in reach with its t interval."""
    per_seed: list[float | None] = []
    for pts, ref, target in zip(method, dpo, targets):
        a, b = read_at(pts, target), read_at(ref, target)
        per_seed.append(None if a.value is None or b.value is None else a.value - b.value)
    got = [d for d in per_seed if d is not None]
    if not got:
        return Matched(level, None, None, None, per_seed)
    mean = statistics.fmean(got)
    if len(got) == 1:
        return Matched(level, mean, None, None, per_seed)
    half = t95(len(got) - 1) * statistics.stdev(got) / math.sqrt(len(got))
    return Matched(level, mean, mean - half, mean + half, per_seed)


@dataclass(frozen=True)
class Slope:
    """The least-squares slope of y on x, its 95% t interval, and how many points it rests on."""

    slope: float
    lo: float
    hi: float
    n: int


def slope(xs: Sequence[float], ys: Sequence[float]) -> Slope:
    """Ordinary least squares of ``ys`` on ``xs`` (each point one seed's adapter); the interval from the residuals'
    standard error with n - 2 degrees of freedom."""
    n = len(xs)
    if n < 3 or len(set(xs)) < 2:
        raise ValueError("a slope with an interval needs at least 3 points at 2 or more x values")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    resid = sum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys))
    se = math.sqrt(resid / (n - 2) / sxx)
    half = t95(n - 2) * se
    return Slope(b, b - half, b + half, n)


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


def family(method: str) -> str:
    """A method's knob family: ``bapo:0.1`` and ``bapo`` trace BAPO's frontier, ``dpo`` and its scales DPO's."""
    return method.split(":")[0].split("@")[0]


def matched_rows(rows: Sequence, scaled: dict[float, Sequence]) -> list[MatchedRow]:
    """Every non-DPO family's retention against DPO's frontier, per user and measure, at the personalization of
    full DPO and of DPO at scale 0.5 (when the study evaluated that scale). ``rows`` are the study's
    :class:`~bapo.studies.tables.StudyRow` objects; ``scaled`` the DPO adapters' rows at each frontier scale."""
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
                def points(rs):
                    return [FrontierPoint(r.personal_margin, getattr(r, f"{measure}_delta")) for r in rs
                            if getattr(r, f"{measure}_delta") is not None and r.personal_margin is not None]
                arm = [points([r for r in mine if family(r.method) == fam and r.seed == s]) for s in seeds]
                ref = [points([dpo[s], *(d[s] for d in dpo_scaled.values() if s in d)]) for s in seeds]
                if not any(arm) or not any(ref):
                    continue
                for level, target in levels.items():
                    idx = [i for i, s in enumerate(seeds) if s in target]
                    m = matched([arm[i] for i in idx], [ref[i] for i in idx], [target[seeds[i]] for i in idx], level)
                    out.append(MatchedRow(user, fam, measure, level, m.delta, m.lo, m.hi, m.seeds_in_reach,
                                          len(idx), m.per_seed))
    return out


def matched_markdown(rows: Sequence[MatchedRow]) -> str:
    """The readings as a markdown table: each family's retention minus DPO's at the same personalization."""
    if not rows:
        return ""

    def num(v):
        return "beyond reach" if v is None else f"{v:+.3f}"

    lines = ["Retention at matched personalization: each method's frontier (its knob's settings) read at the held-out "
             "margin of full DPO and of DPO at scale 0.5, seed by seed, minus DPO's own frontier there (positive = "
             "kept more than DPO at the same personalization); 95% t interval over the seeds in reach.", "",
             "| user | method | measure | at | difference | 95% interval | seeds in reach |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "" if r.lo is None else f"[{r.lo:+.3f}, {r.hi:+.3f}]"
        lines.append(f"| {r.user} | {r.method} | {r.measure} | {r.level} | {num(r.delta)} | {ci} | "
                     f"{r.seeds_in_reach}/{r.seeds} |")
    return "\n".join(lines) + "\n"
