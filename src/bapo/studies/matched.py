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
