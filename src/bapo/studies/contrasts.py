"""Each method against a baseline (another method, or the base model), directly: paired on items, seed matched."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from bapo.errors import ConfigError
from bapo.evaluation.metrics import paired_delta
from bapo.evaluation.records import Record
from bapo.evaluation.tasks import role_metric
from bapo.studies.matched import over_seeds_and_items
from bapo.studies.plan import Cell
from bapo.studies.tables import plus_minus

# (measure, task kind, metric): the study's measures first, then unnormalized accuracy beside them, because
# length normalization can hide a change that raw likelihood shows (and the other way round).
# A fourth entry names the one task a measure reads, where tasks of one kind measure different things.
MEASURES = [("personalization", *role_metric("personalization")),
            ("personalization", "personal", "profile_score"),  # simulated users: what the user would see
            # the implicit-reward margin in nats: continuous, so it tells apart arms whose accuracy on a few dozen
            # held-out pairs cannot (the comparison at equal personalization needs that)
            ("personalization", "personal", "margin"),
            ("knowledge", *role_metric("knowledge")), ("knowledge", "mc", "acc"),
            ("generative knowledge", *role_metric("generative knowledge")),
            ("alignment", *role_metric("alignment")), ("alignment", "general_pairs", "acc"),
            ("refusal of harmful requests", "refusal", "refusal", "refusal_harmful"),
            ("refusal of harmless requests", "refusal", "refusal", "refusal_harmless"),
            ("drift", *role_metric("drift"))]


@dataclass
class Contrast:
    """``method`` minus ``baseline`` for one user on one measure: mean over items of the seed-averaged per-item
    differences, its standard error (over seeds and items; ``seed_se`` its seeds' part, None with one seed) and 95%
    interval, the difference seed by seed, and whether it is clear."""

    user: str
    method: str
    baseline: str
    measure: str
    metric: str
    n: int
    seeds: int
    delta: float
    stderr: float
    lo: float
    hi: float
    per_seed: list[float]
    clear: bool
    seed_se: float | None = None


def contrasts(cells: list[Cell], records: list[Record], item_scores: dict, baseline: str) -> list[Contrast]:
    """Each arm (a method, or ``method+strategy`` in a balance study) against ``baseline`` for the same user,
    directly: per item, the method's score minus the baseline's, seed matched with seed (the same LoRA
    initialisation and data order), averaged over seeds.
    ``baseline`` is another method, or ``"base"``: the base model, the same for every seed.

    ``delta`` is the mean of those per-item differences (paired on items, so the items' own difficulty cancels);
    with two or more seeds its standard error and interval are over seeds and items
    (:func:`bapo.studies.matched.over_seeds_and_items`: the seed-to-seed spread of a difference was as large as the
    difference itself in issue 29's replication), with one seed over items only. ``per_seed`` gives the difference
    seed by seed, so a reader sees whether the seeds agree. ``clear`` marks a difference whose 95% interval excludes 0
    *and* whose sign every seed shares: with 3 seeds the spread between seeds cannot be estimated well, so this asks
    both.
    Knowledge pools the ``mc`` tasks item by item, as the study table does. With several users, :func:`pooled`
    adds the same contrast over all of them.
    """
    kinds = {r.task: r.kind for r in records}
    names = {(c.user, c.arm, c.seed): c.name for c in cells}

    def items(name: str, other: str, kind: str, metric: str, only: str | None) -> list[float]:
        """``name``'s scores on the tasks both models were scored on (the base model meets every user's pairs)."""
        return [x for task, ms in item_scores[name].items() if kinds.get(task) == kind and metric in ms
                and task in item_scores[other] and only in (None, task) for x in ms[metric]]

    out = []
    found: dict[tuple, list[tuple[list[int], list[list[float]], list[list[float]]]]] = {}  # for the pooled rows
    for user in dict.fromkeys(c.user for c in cells):
        spec = next(c.spec for c in cells if c.user == user)
        for method in dict.fromkeys(c.arm for c in cells if c.user == user and c.arm != baseline):
            seeds = sorted(s for (u, m, s) in names if (u, m) == (user, method)
                           and (baseline == "base" or (user, baseline, s) in names))
            if not seeds:
                continue
            pairs = [(names[user, method, s], "base" if baseline == "base" else names[user, baseline, s])
                     for s in seeds]
            for measure, kind, metric, *only in MEASURES:
                mine = [items(a, b, kind, metric, *only or [None]) for a, b in pairs]
                theirs = [items(b, a, kind, metric, *only or [None]) for a, b in pairs]
                if any(len(x) != len(mine[0]) for x in mine + theirs):
                    raise ConfigError(f"study: {method} and {baseline} were scored on different {measure} items")
                if mine[0]:
                    out.append(_contrast(spec, method, baseline, measure, metric, mine, theirs))
                    if measure == "personalization":  # each user's own held-out items: independent across users
                        found.setdefault((method, measure, metric), []).append((seeds, mine, theirs))
    return out + pooled(found, baseline)


def pooled(found: dict[tuple, list[tuple[list[int], list[list[float]], list[list[float]]]]],
           baseline: str) -> list[Contrast]:
    """Each arm against ``baseline`` on personalization over every user that has the metric with the same seeds,
    items pooled (each user's held-out items, seed matched, side by side): the study's overall answer, beside each
    user's own. Retention measures are not pooled: every user's adapters meet the same items, so pooled rows would
    not be independent."""
    out = []
    for (method, measure, metric), per_user in found.items():
        seeds = per_user[0][0]
        if len(per_user) < 2 or any(s != seeds for s, _, _ in per_user):
            continue
        mine = [[x for _, m, _ in per_user for x in m[i]] for i in range(len(seeds))]
        theirs = [[x for _, _, t in per_user for x in t[i]] for i in range(len(seeds))]
        out.append(_contrast(f"pooled ({len(per_user)} users)", method, baseline, measure, metric, mine, theirs))
    return out


def _contrast(user: str, method: str, baseline: str, measure: str, metric: str, mine: list[list[float]],
              theirs: list[list[float]]) -> Contrast:
    k, n = len(mine), len(mine[0])
    per_seed = [(sum(x) - sum(y)) / n for x, y in zip(mine, theirs)]
    seed_se = None
    if k == 1:  # the seeds' spread is unknown: over items only
        delta, se, lo, hi = paired_delta(mine[0], theirs[0])
    else:
        per_item = [(sum(a) - sum(b)) / k for a, b in zip(zip(*mine), zip(*theirs))]
        iv = over_seeds_and_items(per_seed, per_item)
        delta, lo, hi, seed_se = statistics.fmean(per_item), iv.lo, iv.hi, iv.seed_se
        se = math.hypot(iv.seed_se, iv.item_se)
    agree = all(v > 0 for v in per_seed) or all(v < 0 for v in per_seed)
    return Contrast(user, method, baseline, measure, metric, n, k, delta, se, lo, hi, per_seed,
                    bool((lo > 0 or hi < 0) and agree), seed_se)


# Shown in the full list only: raw accuracy beside acc_norm is a check on length normalization, not a headline.
BESIDE = {("knowledge", "acc"), ("alignment", "acc")}


def glance_markdown(rows: list[Contrast]) -> str:
    """The contrasts at a glance: per user, a row per (method, baseline) and a column per headline measure, each
    cell the change with its 95% interval, starred where it is clear."""
    lines = []
    for user in dict.fromkeys(r.user for r in rows):
        mine = [r for r in rows if r.user == user and (r.measure, r.metric) not in BESIDE]
        columns = list(dict.fromkeys((r.measure, r.metric) for r in mine))
        cell = {(r.method, r.baseline, r.measure, r.metric): r for r in mine}
        lines += [f"{user}, at a glance (method − baseline, 95% interval; * = clear):", "",
                  "| method − baseline | " + " | ".join(f"{m} ({k})" for m, k in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for method, baseline in dict.fromkeys((r.method, r.baseline) for r in mine):
            found = [cell.get((method, baseline, *c)) for c in columns]
            lines.append(f"| {method} − {baseline} | " + " | ".join(
                f"{r.delta:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]{'*' if r.clear else ''}" if r else "" for r in found)
                + " |")
        lines.append("")
    return "\n".join(lines)


def contrasts_markdown(rows: list[Contrast]) -> str:
    lines = [glance_markdown(rows)]
    for baseline in dict.fromkeys(r.baseline for r in rows):
        what = baseline + (f" (the DPO adapters at LoRA scale {baseline.split('@')[1]})" if "@" in baseline else "")
        lines += [f"Against {'the base model' if baseline == 'base' else what}:", "",
                  "| user | measure | method − baseline | 95% interval | per seed | clear |",
                  "|---|---|---|---|---|---|"]
        for r in (r for r in rows if r.baseline == baseline):
            seeds = ", ".join(f"{v:+.3f}" for v in r.per_seed)
            lines.append(f"| {r.user} | {r.measure} ({r.metric}, n = {r.n}) | {r.method} − "
                         f"{r.baseline}: {plus_minus(r.delta, r.stderr)} | [{r.lo:+.3f}, {r.hi:+.3f}] | "
                         f"{seeds} | {'yes' if r.clear else 'no'} |")
        lines.append("")
    lines.append("Paired on items, seed matched with seed, averaged over seeds; ± one standard error over seeds and "
                 "items (items only where one seed), 95% interval with a t quantile at Welch-Satterthwaite's degrees "
                 "of freedom. clear = the interval excludes 0 and every seed's difference has the same sign.")
    return "\n".join(lines) + "\n"
