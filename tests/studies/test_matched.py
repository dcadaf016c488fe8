"""Retention at matched personalization and a trend's slope, on constructed points (issue 29's readings)."""

import math
import statistics

import numpy as np
import pytest

from bapo.studies.matched import FrontierPoint as P
from bapo.studies.matched import matched, read_at, retention_items, t95
from bapo.studies.trend import slope, trend_markdown, trend_rows


def test_a_monotone_frontier_is_read_linearly_between_its_settings():
    pts = [P(2.0, -2.0), P(0.0, 0.0), P(1.0, -1.5)]  # any order
    assert read_at(pts, 0.5).value == pytest.approx(-0.75)
    assert read_at(pts, 1.5).value == pytest.approx(-1.75)
    assert read_at(pts, 1.0).value == -1.5 and read_at(pts, 2.0).value == -2.0


def test_a_level_beyond_reach_says_on_which_side():
    pts = [P(0.5, 0.0), P(1.0, -1.0)]
    assert read_at(pts, 1.2).value is None and read_at(pts, 1.2).reach == "above"
    assert read_at(pts, 0.1).value is None and read_at(pts, 0.1).reach == "below"
    assert read_at([], 1.0).value is None


def test_settings_that_tie_in_personalization_are_averaged():
    pts = [P(0.0, 0.0), P(1.0, -1.0), P(1.0, -3.0)]
    assert read_at(pts, 1.0).value == -2.0 and read_at(pts, 0.5).value == -1.0
    assert read_at([P(1.0, -1.0), P(1.0, -2.0)], 1.0).value == -1.5  # a frontier of one level


def test_matched_retention_is_a_seed_by_seed_difference_with_a_t_interval():
    dpo = [[P(0.0, 0.0), P(2.0, -4.0)]] * 3  # DPO loses 2 points per nat of margin
    bapo = [[P(0.0, 0.0), P(2.0, -4.0 + d)] for d in (1.0, 2.0, 3.0)]  # BAPO keeps d/2 per nat more
    m = matched(bapo, dpo, [2.0, 2.0, 2.0], "full DPO")
    assert m.per_seed == [1.0, 2.0, 3.0] and m.delta == 2.0
    half = 4.303 * 1.0 / math.sqrt(3)  # t(2) x sd / sqrt(n)
    assert m.lo == pytest.approx(2.0 - half) and m.hi == pytest.approx(2.0 + half)
    # seed 2's BAPO never reaches the level: it is left out, and counted as such
    short = bapo[:2] + [[P(0.0, 0.0), P(1.0, -1.0)]]
    m = matched(short, dpo, [2.0, 2.0, 2.0], "full DPO")
    assert m.per_seed == [1.0, 2.0, None] and m.seeds_in_reach == 2 and m.delta == 1.5
    none = matched([[P(0.0, 0.0)]] * 3, dpo, [2.0] * 3, "full DPO")
    assert none.delta is None and none.seeds_in_reach == 0


def test_per_item_scores_are_read_with_the_frontiers_weights():
    pts = [P(0.0, 0.0, (0.0, 0.0, 0.0)), P(2.0, -1.0, (-1.0, -2.0, 0.0)), P(2.0, -1.0, (-1.0, 0.0, -2.0))]
    r = read_at(pts, 1.0)  # half way to the level whose two settings average (-1, -1, -1)
    assert r.value == -0.5 and r.items == pytest.approx((-0.5, -0.5, -0.5))
    assert read_at([P(0.0, 0.0, (1.0,)), P(2.0, -1.0)], 1.0).items is None  # a point without items: none


def test_the_interval_adds_the_items_part_to_the_seeds_part():
    """Every model meets the same items: the seeds' spread says nothing of which items were drawn. The standard error
    adds sd(d_s)^2 / S and sd_i(mean_s e_si)^2 / N, with Welch-Satterthwaite's degrees of freedom."""
    rng = np.random.default_rng(1)
    n = 200
    dpo_items = rng.integers(0, 2, n).astype(float)  # DPO's frontier at margin 2 (one per seed: the same here)
    bapo_items = [np.clip(dpo_items + rng.integers(-1, 2, n), 0, 1) for _ in range(3)]
    zero = tuple([0.0] * n)
    dpo = [[P(0.0, 0.0, zero), P(2.0, dpo_items.mean(), tuple(dpo_items))]] * 3
    bapo = [[P(0.0, 0.0, zero), P(2.0, b.mean(), tuple(b))] for b in bapo_items]
    m = matched(bapo, dpo, [1.0] * 3, "DPO@0.5")  # read half way: every per-item difference halved
    e = np.array([(b - dpo_items) / 2 for b in bapo_items])  # (seeds, items)
    d = e.mean(1)
    seed_var, item_var = d.var(ddof=1) / 3, e.mean(0).var(ddof=1) / n
    df = (seed_var + item_var) ** 2 / (seed_var ** 2 / 2 + item_var ** 2 / (n - 1))
    half = t95(math.floor(df)) * math.sqrt(seed_var + item_var)
    assert m.per_seed == pytest.approx(list(d)) and m.delta == pytest.approx(d.mean())
    assert (m.seed_se, m.item_se) == pytest.approx((math.sqrt(seed_var), math.sqrt(item_var)))
    assert (m.lo, m.hi) == pytest.approx((d.mean() - half, d.mean() + half))
    # seeds that agree exactly leave the items' part alone, with n - 1 degrees of freedom (t -> 1.96 + 2.5/199)
    same = matched([bapo[0]] * 3, dpo, [1.0] * 3, "DPO@0.5")
    assert same.seed_se == 0.0 and same.hi - same.delta == pytest.approx(t95(n - 1) * math.sqrt(e[0].var(ddof=1) / n))
    # without per-item scores the interval is the seeds' t interval, as before
    plain = matched([[P(x.personalization, x.retention) for x in f] for f in bapo], dpo, [1.0] * 3, "DPO@0.5")
    assert plain.item_se is None and plain.hi - plain.delta == pytest.approx(t95(2) * math.sqrt(seed_var))


def test_retention_items_pool_a_measures_tasks_item_by_item():
    scores = {"arc_easy": {"acc": [1, 0], "acc_norm": [1, 1]}, "piqa": {"acc_norm": [0]},
              "refusal_harmful": {"refusal": [1, 1]}, "refusal_harmless": {"refusal": [0]},
              "personal:u": {"margin": [3.0]}}
    kinds = {"arc_easy": "mc", "piqa": "mc", "refusal_harmful": "refusal", "refusal_harmless": "refusal",
             "personal:u": "personal"}
    got = retention_items(scores, kinds)
    assert got == {"knowledge": [1, 1, 0], "refusal_harmful": [1, 1], "refusal_harmless": [0]}


def test_the_slope_and_its_interval_agree_with_least_squares():
    xs = [0.0, 0.25, 0.5, 0.75, 1.0] * 3
    rng = np.random.default_rng(0)
    ys = [-0.1 * x + e for x, e in zip(xs, rng.normal(0, 0.02, len(xs)))]
    s = slope(xs, ys)
    coef, cov = np.polyfit(xs, ys, 1, cov="unscaled")
    resid = np.array(ys) - np.polyval(coef, xs)
    se = math.sqrt(resid @ resid / (len(xs) - 2) * cov[0, 0])
    assert s.slope == pytest.approx(coef[0]) and s.hi - s.slope == pytest.approx(2.160 * se, rel=0.01)  # t(13)
    assert s.lo < -0.1 < s.hi and s.n == 15
    exact = slope([0, 1, 2], [1, 3, 5])
    assert exact.slope == pytest.approx(2.0) and exact.lo == pytest.approx(2.0) and exact.hi == pytest.approx(2.0)
    with pytest.raises(ValueError):
        slope([1, 1, 1], [0, 1, 2])


def test_the_trend_is_each_arms_slope_over_its_adapters():
    from types import SimpleNamespace

    from bapo.studies.tables import RETENTION

    def row(arm, h, knowledge, seed):
        return SimpleNamespace(arm=arm, heterogeneity=h, user=f"flip:{h}", seed=seed,
                               **{**{f"{m}_delta": None for m in RETENTION}, "knowledge_delta": knowledge})

    rows = [row("dpo", h, -0.1 * h + e, s) for h, e, s in ((0.0, 0.01, 0), (0.5, -0.01, 0), (1.0, 0.0, 0),
                                                            (1.0, 0.02, 1), (0.0, 0.03, 1))]
    rows += [row("bapo", 0.0, 0.0, 0), row("bapo", 0.0, 0.1, 1), row("bapo", 1.0, 0.0, 0)]  # 3 points at 2 levels
    rows += [row("kl", 0.5, 0.0, 0), row("kl", 0.5, 0.1, 1), row("kl", 0.5, 0.2, 2)]  # one level: no slope
    got = {(r.method, r.measure): r for r in trend_rows(rows)}
    # no other measure has values; kl - dpo pairs one adapter only (DPO has no seed 1 or 2 at 0.5)
    assert set(got) == {("dpo", "knowledge"), ("bapo", "knowledge"), ("bapo - dpo", "knowledge")}
    # bapo - dpo: the seed-matched differences (0.0 - 0.01, 0.1 - 0.03, 0.0 + 0.1) on heterogeneity (0, 0, 1)
    paired = slope([0.0, 0.0, 1.0], [-0.01, 0.07, 0.1])
    assert got[("bapo - dpo", "knowledge")].slope == pytest.approx(paired.slope)
    assert (got[("bapo - dpo", "knowledge")].lo, got[("bapo - dpo", "knowledge")].adapters) == (paired.lo, 3)
    ref = slope([r.heterogeneity for r in rows[:5]], [r.knowledge_delta for r in rows[:5]])
    dpo = got[("dpo", "knowledge")]
    assert (dpo.slope, dpo.lo, dpo.hi, dpo.adapters, dpo.levels) == (ref.slope, ref.lo, ref.hi, 5, 3)
    assert got[("bapo", "knowledge")].slope == pytest.approx(-0.05)
    # each user one point: DPO's users' means (0, 0.02), (0.5, -0.06), (1, -0.09): slope -0.11, residuals
    # (+1/120, -1/60, +1/120), se sqrt(SSR / 1 / Sxx 0.5) = 0.028868, t(1) = 12.706
    assert (dpo.users_lo, dpo.users_hi) == pytest.approx((-0.11 - 12.706 * 0.028868, -0.11 + 12.706 * 0.028868),
                                                         abs=1e-4)
    assert got[("bapo", "knowledge")].users_lo is None  # two users: no interval
    text = trend_markdown(list(got.values()))
    assert "| dpo | knowledge |" in text and "| [-0.477, +0.257] |" in text and trend_markdown([]) == ""


def test_the_table_gives_each_seeds_own_difference_beside_the_mean():
    from bapo.studies.matched import MatchedRow, matched_markdown

    row = MatchedRow("u", "bapo", "knowledge", "full DPO", 0.015, -0.01, 0.04, 2, 3, [0.01, None, 0.02], 0.005, 0.004)
    line = matched_markdown([row]).splitlines()[-1]
    assert line.endswith("| 2/3 | +0.010, -, +0.020 |") and "| +0.015 | [-0.010, +0.040] |" in line


def test_a_family_is_also_read_at_its_own_default_settings_personalization():
    """BAPO's lambda may reach neither full DPO's margin nor DPO@0.5's; DPO's frontier read where bapo (lambda 1)
    landed still compares the two at equal personalization."""
    from types import SimpleNamespace

    from bapo.studies.matched import matched_rows

    def row(method, seed, margin, knowledge):
        values = {f"{m}_delta": None for m in ("generative_knowledge", "alignment", "refusal_harmful", "drift")}
        return SimpleNamespace(user="u", method=method, seed=seed, personal_margin=margin, knowledge_delta=knowledge,
                               **values)

    rows = [row("dpo", 0, 80.0, -0.08), row("dpo", 1, 100.0, -0.10),
            row("bapo", 0, 20.0, -0.01), row("bapo", 1, 30.0, -0.02),
            row("bapo:0.1", 0, 25.0, -0.02), row("bapo:0.1", 1, 28.0, -0.02)]
    scaled = {0.25: [row("dpo@0.25", 0, 10.0, -0.01), row("dpo@0.25", 1, 10.0, -0.01)],
              0.5: [row("dpo@0.5", 0, 40.0, -0.04), row("dpo@0.5", 1, 50.0, -0.05)]}
    got = {r.level: r for r in matched_rows(rows, scaled)}
    assert set(got) == {"full DPO", "DPO@0.5", "bapo's own"}
    assert got["full DPO"].seeds_in_reach == 0 and got["DPO@0.5"].seeds_in_reach == 0
    own = got["bapo's own"]  # DPO's frontier at 20: -0.01 + (-0.04 + 0.01) / 3 = -0.02; at 30: -0.01 - 0.04 / 2
    assert own.per_seed == pytest.approx([-0.01 + 0.02, -0.02 + 0.03]) and own.seeds_in_reach == 2
    assert own.delta == pytest.approx(0.01)


def test_dpos_frontier_starts_at_the_base_model():
    """A method personalizing less than DPO's weakest measured scale (KL at flip:0.5) is read on the line from the
    base model (scale 0: margin 0, no change) to that scale; below the base model's margin it is beyond reach."""
    from types import SimpleNamespace

    from bapo.studies.matched import matched_rows

    def row(method, seed, margin, knowledge):
        values = {f"{m}_delta": None for m in ("generative_knowledge", "alignment", "refusal_harmful", "drift")}
        return SimpleNamespace(user="u", method=method, seed=seed, personal_margin=margin, knowledge_delta=knowledge,
                               **values)

    rows = [row("dpo", 0, 80.0, -0.08), row("dpo", 1, 100.0, -0.10), row("kl", 0, 2.5, 0.0), row("kl", 1, -1.0, 0.0)]
    scaled = {0.25: [row("dpo@0.25", 0, 10.0, -0.02), row("dpo@0.25", 1, 10.0, -0.02)]}
    # per-item scores: the base model knew items 0 and 1 of 4; DPO@0.25 (seed 0) forgot item 1; KL forgot nothing
    base, weak, kl = (1.0, 1.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), (1.0, 1.0, 0.0, 0.0)
    items = {("u", "base", 0, 0.0): {"knowledge": base}, ("u", "dpo", 0, 0.25): {"knowledge": weak},
             ("u", "kl", 0, 1.0): {"knowledge": kl}}
    (own,) = [r for r in matched_rows(rows, scaled, items) if r.level == "kl's own"]
    # seed 0: DPO's frontier at margin 2.5 is a quarter of the way from the base model (0) to DPO@0.25 (-0.02)
    assert own.per_seed[0] == pytest.approx(0.0 - (-0.02 * 0.25))
    assert own.per_seed[1] is None and own.seeds_in_reach == 1  # seed 1's KL margin is below the base model's


def test_the_slope_s_interval_over_seeds_and_items():
    # three adapters at heterogeneity 0, 0.5, 1, each measured on the same 4 items (per-item changes)
    xs = [0.0, 0.5, 1.0]
    items = [[0.0, 0.0, 1.0, -1.0], [-1.0, 0.0, 0.0, 0.0], [-1.0, -1.0, 0.0, 0.0]]
    ys = [sum(v) / 4 for v in items]  # 0, -0.25, -0.5: on a line, so the residuals' part is 0
    s = slope(xs, ys, items)
    assert s.slope == pytest.approx(-0.5) and s.seed_se == pytest.approx(0.0)
    # each item's own slope: w = (x - 0.5) / Sxx = (-0.5, 0, 0.5) / 0.5 = (-1, 0, 1); b_i = d_3i - d_1i
    by_item = [-1.0, -1.0, -1.0, 1.0]
    assert statistics.fmean(by_item) == pytest.approx(s.slope)
    se = math.sqrt(statistics.variance(by_item) / 4)
    assert s.item_se == pytest.approx(se)
    # the residuals' part is 0, so Welch's degrees of freedom are the items' (3): t = 3.182
    assert s.hi - s.slope == pytest.approx(3.182 * se)
    # without items: the residuals alone, an interval of width 0 here
    assert slope(xs, ys).hi == pytest.approx(-0.5) and slope(xs, ys).item_se is None
    with pytest.raises(ValueError):
        slope(xs, ys, items[:2])


def test_the_trend_reads_per_item_changes_against_the_base_model_and_dpo():
    from types import SimpleNamespace

    from bapo.studies.matched import base_key
    from bapo.studies.tables import RETENTION

    def row(arm, h, knowledge, seed):
        return SimpleNamespace(arm=arm, method=arm, heterogeneity=h, user=f"flip:{h}", seed=seed,
                               **{**{f"{m}_delta": None for m in RETENTION}, "knowledge_delta": knowledge})

    base = [1.0, 1.0, 0.0, 0.0]
    own = {("dpo", 0.0): [1.0, 1.0, 0.0, 1.0], ("dpo", 0.5): [1.0, 0.0, 0.0, 0.0], ("dpo", 1.0): [0.0, 0.0, 0.0, 0.0],
           ("bapo", 0.0): [1.0, 1.0, 0.0, 0.0], ("bapo", 0.5): [1.0, 1.0, 0.0, 0.0], ("bapo", 1.0): [1.0, 0.0, 0.0, 0.0]}
    rows = [row(arm, h, statistics.fmean(v) - statistics.fmean(base), 0) for (arm, h), v in own.items()]
    items = {(f"flip:{h}", arm, 0, 1.0): {"knowledge": v} for (arm, h), v in own.items()}
    items.update({base_key(f"flip:{h}"): {"knowledge": base} for h in (0.0, 0.5, 1.0)})
    got = {(r.method, r.measure): r for r in trend_rows(rows, items)}
    dpo_items = [[a - b for a, b in zip(own[("dpo", h)], base)] for h in (0.0, 0.5, 1.0)]
    ref = slope([0.0, 0.5, 1.0], [r.knowledge_delta for r in rows[:3]], dpo_items)
    assert got[("dpo", "knowledge")].item_se == pytest.approx(ref.item_se) and got[("dpo", "knowledge")].lo == ref.lo
    diff = [[a - b for a, b in zip(own[("bapo", h)], own[("dpo", h)])] for h in (0.0, 0.5, 1.0)]
    paired = slope([0.0, 0.5, 1.0], [statistics.fmean(v) for v in diff], diff)
    assert got[("bapo - dpo", "knowledge")].slope == pytest.approx(paired.slope)
    assert got[("bapo - dpo", "knowledge")].item_se == pytest.approx(paired.item_se)
    assert "| seeds and items |" in trend_markdown(list(got.values()))
    # a point without per-item scores: that measure's interval is over seeds only
    del items[("flip:0.5", "dpo", 0, 1.0)]
    assert trend_rows(rows, items)[0].item_se is None


def test_the_reading_rules_give_each_slope_its_verdict_from_the_wider_interval():
    from bapo.studies.trend import TrendRow, reading, seeds_interval

    def row(method, slope, lo, hi, seed_se=None, measure="generative_knowledge", n=15):
        return TrendRow(method, measure, slope, lo, hi, n, 5, seed_se, None)

    # DPO loses more as the user departs, the interval below 0: the first claim supported for this measure
    assert reading(row("dpo", -0.10, -0.15, -0.05)) == "supported"
    assert reading(row("dpo", 0.10, 0.05, 0.15)) == "refuted"
    assert reading(row("dpo", -0.10, -0.25, 0.05)) == "unresolved (width 0.300)"
    assert reading(row("bapo - dpo", 0.08, 0.01, 0.15)) == "holds the trend down"
    assert reading(row("bapo - dpo", -0.08, -0.15, -0.01)) == "steepens it"
    assert reading(row("dpo", -0.5, -0.9, -0.1, measure="refusal_harmless")) == "-"  # over-refusal: read beside
    # the seeds-only interval: t(13) = 2.160 times the residuals' standard error, about the slope
    assert seeds_interval(row("dpo", -0.10, -0.15, -0.05, seed_se=0.05)) == pytest.approx((-0.208, 0.008))
    # ... wider than the seeds-and-items one here, and crossing 0: the wider decides
    assert reading(row("dpo", -0.10, -0.15, -0.05, seed_se=0.05)) == "unresolved (width 0.216)"
    assert seeds_interval(row("dpo", -0.1, -0.2, 0.0)) is None


def test_the_t_table_matches_students_quantiles():
    stats = pytest.importorskip("scipy.stats", reason="scipy gives the reference quantiles (bapo does not need it)")
    from bapo.studies.matched import t95

    assert max(abs(stats.t.ppf(0.975, df) - t95(df)) for df in range(1, 31)) < 6e-4  # the table's 3 decimals
    assert max(abs(stats.t.ppf(0.975, df) - t95(df)) for df in range(31, 500)) < 2e-3  # the tail's formula
