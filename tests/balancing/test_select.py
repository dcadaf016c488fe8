"""The strategies as pure functions: budgets, P x D, one representative per prompt cluster, gradient clusters."""

import numpy as np
import torch
import pytest

from bapo.balancing.candidates import pools_from_pairs, scored_pool
from bapo.balancing.features import CountSketch
from bapo.balancing.select import (choose_by_gradient, choose_none, choose_uniform, representatives, seeded_order,
                                   square_root_split)
from bapo.data.pairs import PreferencePair
from bapo.errors import ConfigError


def test_square_root_split_respects_the_budget_and_the_candidates():
    assert square_root_split(64, 0, 0, 15) == (8, 8)
    assert square_root_split(32, 0, 0, 15) == (8, 4)
    assert square_root_split(64, 0, 0, 6) == (16, 4)    # a prompt's candidates give at most 6 pairs; 4 divides 64
    assert square_root_split(10, 0, 0, 15) == (5, 2)    # P x D = B exactly
    assert square_root_split(7, 0, 0, 15) == (7, 1)
    assert square_root_split(64, 0, 6, 15) == (10, 6)   # a depth asked for: P = B // D
    assert square_root_split(64, 4, 4, 15) == (4, 4)
    with pytest.raises(ConfigError, match="exceeds the budget"):
        square_root_split(10, 4, 4, 15)


def test_none_keeps_one_primary_pair_per_prompt_within_the_budget():
    counts = [3, 0, 1, 2, 5, 1]
    picks = choose_none(counts, 4, seed=1)
    assert len(picks) == 4 and len({p.pool for p in picks}) == 4
    assert all(p.pair == 0 and counts[p.pool] > 0 for p in picks)
    assert [p.pool for p in picks] == [i for i in seeded_order(6, 1) if counts[i]][:4]
    assert len(choose_none(counts, 100, seed=1)) == 5  # never more pairs than prompts that have one


def test_uniform_gives_p_times_d_and_is_seeded():
    counts = [6, 1, 6, 6, 2, 6, 6]
    picks = choose_uniform(counts, 3, 4, seed=0)
    assert len(picks) == 12
    per_prompt = {}
    for p in picks:
        per_prompt.setdefault(p.pool, set()).add(p.pair)
    assert len(per_prompt) == 3 and all(len(v) == 4 for v in per_prompt.values())
    assert all(counts[i] >= 4 for i in per_prompt)
    assert picks == choose_uniform(counts, 3, 4, seed=0)
    assert picks != choose_uniform(counts, 3, 4, seed=5)
    with pytest.raises(ConfigError, match="only 5 have"):
        choose_uniform(counts, 6, 3, seed=0)


def test_bpo_breadth_keeps_one_prompt_per_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    points = np.concatenate([c + rng.normal(0, 0.3, (5, 2)) for c in centres])  # prompts 0-4, 5-9, 10-14
    clusters = representatives(points, 3, seed=0)
    kept = [c[0] for c in clusters]
    assert sorted(k // 5 for k in kept) == [0, 1, 2]
    for c in clusters:  # members ordered by distance to their centre, all of one group
        assert len({i // 5 for i in c}) == 1
        d = np.linalg.norm(points[c] - points[c].mean(0), axis=1)
        assert d[0] == pytest.approx(d.min())


def test_gradient_clusters_separate_opposite_directions_and_the_budget_holds():
    rng = np.random.default_rng(1)
    direction = rng.normal(size=16)
    grads = np.concatenate([direction + rng.normal(0, 0.05, (6, 16)), -direction + rng.normal(0, 0.05, (6, 16))])
    kept = choose_by_gradient(grads, 4, 2, seed=0)
    assert len(kept) == 4
    clusters = {}
    for row, cluster, _ in kept:
        clusters.setdefault(cluster, set()).add(row // 6)
    assert len(clusters) == 2 and all(len(groups) == 1 for groups in clusters.values())  # one group per cluster
    assert len(choose_by_gradient(grads, 50, 2, seed=0)) == 12  # at most every pair


def test_count_sketch_is_seeded_and_keeps_inner_products_roughly():
    a, b = np.random.default_rng(0).normal(size=(2, 5000)).astype(np.float32)
    s1, s2 = CountSketch([2000, 3000], 256, seed=3), CountSketch([2000, 3000], 256, seed=3)
    pa = s1([torch.tensor(a[:2000]), torch.tensor(a[2000:])])
    assert torch.equal(pa, s2([torch.tensor(a[:2000]), torch.tensor(a[2000:])]))
    pb = s1([torch.tensor(b[:2000]), torch.tensor(b[2000:])])
    assert float(pa @ pa) == pytest.approx(float(a @ a), rel=0.25)
    assert float(pa @ -pa) == pytest.approx(-float(a @ a), rel=0.25)
    assert abs(float(pa @ pb)) < 0.3 * float(a @ a)  # near-orthogonal stays near-orthogonal


def test_scored_pool_orders_every_distinct_score_pair_best_against_worst_first():
    pool = scored_pool([{"role": "user", "content": "q"}], ["bb", "a", "ccc", "a", " "], lambda m, t: len(t))
    assert pool.responses == ["bb", "a", "ccc"]  # duplicates and empty answers dropped
    assert pool.pairs[0] == (2, 1)  # ccc over a
    assert sorted(pool.pairs) == [(0, 1), (2, 0), (2, 1)]
    tied = scored_pool([{"role": "user", "content": "q"}], ["x", "y"], lambda m, t: 1.0)
    assert tied.pairs == []


def test_pools_from_pairs_group_the_data_by_prompt():
    pairs = [PreferencePair((("user", f"q{i % 2}"),), f"good{i}", "bad", "u") for i in range(5)]
    pools = pools_from_pairs(pairs)
    assert [len(p.pairs) for p in pools] == [3, 2]
    assert pools[0].pair(0, "u", "x").chosen == "good0" and pools[0].pair(1, "u", "x").rejected == "bad"
