"""Does forgetting grow with heterogeneity? Each arm's change on each retention measure regressed on its users'
measured heterogeneity (the least-squares slope), with an interval over seeds and the evaluation's items, and each
arm's slope minus DPO's: the paper's first claim, read as issue 46 asks."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from bapo.studies.matched import ItemScores, base_key, t95
from bapo.studies.tables import RETENTION


@dataclass(frozen=True)
class Slope:
    """The least-squares slope of y on x, its 95% t interval, how many points it rests on, and the two parts of its
    standard error (``item_se`` None where no per-item changes were given)."""

    slope: float
    lo: float
    hi: float
    n: int
    seed_se: float | None = None
    item_se: float | None = None


def slope(xs: Sequence[float], ys: Sequence[float], per_item: Sequence[Sequence[float]] | None = None) -> Slope:
    """Ordinary least squares of ``ys`` on ``xs`` (each point one seed's adapter); the interval from the residuals'
    standard error with n - 2 degrees of freedom.

    ``per_item``: each point's per-item changes (``ys[j]`` their mean, the same N items at every point), for an
    interval over seeds *and* items, as :func:`over_seeds_and_items` gives a difference. The slope is linear in the
    points, ``b = sum_j w_j y_j`` with ``w_j = (x_j - mean x) / Sxx``, so it is the mean over items of each item's own
    slope ``b_i = sum_j w_j d_ji``; which items were drawn adds ``var(b_i) / N`` to the residuals' part (every point
    meets the same items, so the residuals alone say nothing of that draw). A t quantile at Welch-Satterthwaite's
    degrees of freedom; each part also holds a little of the point-by-item interaction, so the sum errs wide."""
    n = len(xs)
    if n < 3 or len(set(xs)) < 2:
        raise ValueError("a slope with an interval needs at least 3 points at 2 or more x values")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    resid = sum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys))
    seed_var, df = resid / (n - 2) / sxx, float(n - 2)
    item_var = None
    if per_item is not None:
        w = [(x - mx) / sxx for x in xs]
        if len(per_item) != n or len({len(v) for v in per_item}) != 1:
            raise ValueError("per_item needs one vector of the same items per point")
        by_item = [sum(wj * d for wj, d in zip(w, col)) for col in zip(*per_item)]
        if len(by_item) > 1:
            item_var = statistics.variance(by_item) / len(by_item)
            if seed_var + item_var > 0:  # Welch-Satterthwaite
                df = (seed_var + item_var) ** 2 / (seed_var ** 2 / (n - 2) + item_var ** 2 / (len(by_item) - 1))
    half = t95(max(1, math.floor(df))) * math.sqrt(seed_var + (item_var or 0.0))
    return Slope(b, b - half, b + half, n, math.sqrt(seed_var), None if item_var is None else math.sqrt(item_var))


@dataclass(frozen=True)
class TrendRow:
    """One arm's change on one retention measure against measured heterogeneity: the least-squares slope."""

    method: str
    measure: str
    slope: float
    lo: float
    hi: float
    adapters: int
    levels: int  # distinct heterogeneities among them
    seed_se: float | None = None
    item_se: float | None = None  # None: the interval is over seeds only (no per-item scores given)
    # With each user one point (its seeds' mean change): a user's seeds share its pairs, so the interval above, which
    # counts every adapter, can be narrower than users drawn anew would give. None under 3 users at 2 heterogeneities.
    users_lo: float | None = None
    users_hi: float | None = None


def trend_rows(rows: Sequence, items: ItemScores | None = None) -> list[TrendRow]:
    """Does forgetting grow with heterogeneity? Each arm's change against the base model on each retention measure,
    regressed on its users' measured heterogeneity: every adapter (each user and seed) one point, the slope's 95%
    t interval (:func:`slope`) over seeds and, where ``items`` has every point's per-item scores (and the base
    model's, :func:`base_key`), over the evaluation's items too; else from the residuals alone, a seed-level interval.
    Only where the arm has 3 or more adapters at 2 or more heterogeneities. Beside it, the same slope with each user
    one point (its seeds' mean change, an interval from the users' residuals): a check on the seeds' shared pairs,
    which the reading rules do not use.

    Then, for each other arm beside DPO, ``ARM - dpo``: the slope of the seed-matched difference (the arm's change
    minus DPO's at the same user and seed) on heterogeneity, which is the arm's slope minus DPO's over the adapters
    both have, with an interval that pairing narrows: does the arm hold the trend down?"""
    items = items or {}

    def changes(r, against=None) -> dict[str, list[float] | None]:
        """``r``'s per-item changes on each measure: against the base model, or against ``against`` (a row)."""
        if not items or getattr(r, "balance", ""):  # ItemScores are keyed by method, not by a balance arm
            return dict.fromkeys(RETENTION)
        mine = items.get((r.user, r.method, r.seed, 1.0), {})
        ref = items.get(base_key(r.user) if against is None else (against.user, against.method, against.seed, 1.0), {})
        out: dict[str, list[float] | None] = {}
        for m in RETENTION:
            a, b = mine.get(m), ref.get(m)
            if a is not None and b is None and m == "drift" and against is None:
                b = [0.0] * len(a)  # drift's items are changes already: the base model's are 0
            out[m] = [x - y for x, y in zip(a, b)] if a is not None and b is not None and len(a) == len(b) else None
        return out

    out = []
    arms = list(dict.fromkeys(r.arm for r in rows))
    for arm in arms:
        out += _slopes(arm, [(r.user, r.heterogeneity, {m: getattr(r, f"{m}_delta") for m in RETENTION}, changes(r))
                             for r in rows if r.arm == arm])
    dpo = {(r.user, r.seed): r for r in rows if r.arm == "dpo"}
    for arm in (a for a in arms if a != "dpo" and dpo):
        pairs = [(r, dpo[(r.user, r.seed)]) for r in rows if r.arm == arm and (r.user, r.seed) in dpo]
        out += _slopes(f"{arm} - dpo", [(r.user, r.heterogeneity, {m: _minus(getattr(r, f"{m}_delta"), getattr(d, f"{m}_delta"))
                                                            for m in RETENTION}, changes(r, d)) for r, d in pairs])
    return out


def seeds_interval(r: TrendRow) -> tuple[float, float] | None:
    """The slope's 95% t interval from the residuals alone (n - 2 degrees of freedom): the seed-level interval
    studies written before issue 46 read; None where the row lacks its standard error."""
    if r.seed_se is None:
        return None
    half = t95(max(1, r.adapters - 2)) * r.seed_se
    return r.slope - half, r.slope + half


# Over-refusal is a cost read beside forgetting, not forgetting (studies/heterogeneity_hash.yaml's reading rules).
BESIDE = {"refusal_harmless"}


def reading(r: TrendRow) -> str:
    """The verdict studies/heterogeneity_hash.yaml's reading rules give a row, from the wider of its two intervals
    (over seeds and items, over seeds alone) where they disagree about excluding 0.

    An arm's own slope: "supported" (forgetting grows with heterogeneity) where it is negative and the interval
    excludes 0, "refuted" where it excludes 0 above, else "unresolved". ``ARM - dpo``: "holds the trend down" where
    positive and excluding 0, "steepens it" where negative and excluding 0, else "unresolved". Over-refusal
    (:data:`BESIDE`): "-", a cost read beside. Every "unresolved" says its interval's width."""
    if r.measure in BESIDE:
        return "-"
    lo, hi = r.lo, r.hi
    seeds = seeds_interval(r)
    if seeds is not None and seeds[1] - seeds[0] > hi - lo:
        lo, hi = seeds
    if lo > 0 or hi < 0:
        up = lo > 0
        if " - " in r.method:
            return "holds the trend down" if up else "steepens it"
        return "refuted" if up else "supported"
    return f"unresolved (width {hi - lo:.3f})"


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _slopes(method: str,
            points: Sequence[tuple[str, float, dict[str, float | None], dict[str, list[float] | None]]]
            ) -> list[TrendRow]:
    out = []
    for measure in RETENTION:
        pts = [(u, x, ys[measure], its[measure]) for u, x, ys, its in points if ys[measure] is not None]
        levels = len({x for _, x, _, _ in pts})
        if len(pts) >= 3 and levels >= 2:
            per_item = [v for *_, v in pts]
            whole = all(v is not None for v in per_item) and len({len(v) for v in per_item}) == 1
            s = slope([x for _, x, _, _ in pts], [y for _, _, y, _ in pts], per_item if whole else None)
            users = _users_slope([(u, x, y) for u, x, y, _ in pts])
            out.append(TrendRow(method, measure, s.slope, s.lo, s.hi, s.n, levels, s.seed_se, s.item_se,
                                *((users.lo, users.hi) if users else (None, None))))
    return out


def _users_slope(pts: Sequence[tuple[str, float, float]]) -> Slope | None:
    """The slope with each user one point: its adapters' mean heterogeneity and mean change."""
    by_user: dict[str, list[tuple[float, float]]] = {}
    for u, x, y in pts:
        by_user.setdefault(u, []).append((x, y))
    xs = [statistics.fmean(x for x, _ in v) for v in by_user.values()]
    ys = [statistics.fmean(y for _, y in v) for v in by_user.values()]
    return slope(xs, ys) if len(xs) >= 3 and len(set(xs)) >= 2 else None


def trend_markdown(rows: Sequence[TrendRow]) -> str:
    if not rows:
        return ""
    lines = ["Forgetting against heterogeneity: each arm's change against the base model regressed on its users' "
             "measured heterogeneity, every adapter one point; the slope is the change from heterogeneity 0 to 1 "
             "(negative = loses more as the user departs from general preference), 95% t interval over seeds and "
             "items (over seeds only where a row says so: no per-item scores), its standard error's two parts "
             "beside it. A row `ARM - dpo` regresses the seed-matched difference (the arm's change minus DPO's, same "
             "user and seed): positive = the arm holds the trend down. `seeds only`: the interval from the residuals "
             "alone; `reading`: the verdict of the study's reading rules (:func:`bapo.studies.trend.reading`), from "
             "the wider interval where the two disagree. `users as the unit`: a check the rules do not use, each "
             "user one point (its seeds' mean change), since a user's seeds share its pairs.", "",
             "| method | measure | slope | 95% interval | over | seeds only | seeds' se | items' se | adapters | "
             "heterogeneities | reading | users as the unit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.method} | {r.measure} | {r.slope:+.3f} | [{r.lo:+.3f}, {r.hi:+.3f}] | "
              f"{'seeds' if r.item_se is None else 'seeds and items'} | {_interval(seeds_interval(r))} | "
              f"{_se(r.seed_se)} | {_se(r.item_se)} | {r.adapters} | {r.levels} | {reading(r)} | "
              f"{_interval(None if r.users_lo is None else (r.users_lo, r.users_hi))} |" for r in rows]
    return "\n".join(lines) + "\n"


def _interval(iv: tuple[float, float] | None) -> str:
    return "-" if iv is None else f"[{iv[0]:+.3f}, {iv[1]:+.3f}]"


def _se(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
