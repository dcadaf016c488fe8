"""Retention at matched personalization and a trend's slope, on constructed points (issue 29's readings)."""

import math

import numpy as np
import pytest

from bapo.studies.matched import FrontierPoint as P
from bapo.studies.matched import matched, read_at, slope


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
