"""Which pairs to keep: the strategies of ``bapo balance`` as pure functions of pair counts, embeddings and gradients.

Every function is deterministic for a seed and never returns more than the budget. Pools (one per prompt) list their
candidate pairs with the *primary* pair first: the one a one-pair-per-prompt data set would hold.

BPO (Wang et al., NAACL 2025, arXiv 2411.10914) is known to us only from its abstract and summaries; its code was
never published. What is implemented here, and where it guesses, is marked ``[BPO]`` (stated by the paper) or
``[GUESS]`` (our choice where the paper's details are unknown to us).
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.cluster import KMeans

from bapo.errors import ConfigError


@dataclass(frozen=True)
class Pick:
    """One kept pair: pair ``pair`` of pool ``pool``, and why it was kept (for the report)."""

    pool: int
    pair: int
    reason: str
    cluster: int = -1       # bpo: the gradient cluster it stands for
    distance: float = 0.0   # bpo: its distance to that cluster's centre (unit-length gradients)


def square_root_split(budget: int, breadth: int, depth: int, max_depth: int) -> tuple[int, int]:
    """(P, D) with P x D <= B: D = ``depth``, or by default the largest divisor of B not above sqrt(B) nor
    ``max_depth`` (what one prompt's candidates can give), so that P x D = B exactly; P = ``breadth`` or B // D."""
    cap = max(1, min(math.isqrt(budget), max_depth))
    d = depth or max(k for k in range(1, cap + 1) if budget % k == 0)
    p = breadth or budget // d
    if p * d > budget:
        raise ConfigError(f"breadth x depth: {p} x {d} = {p * d} pairs exceeds the budget of {budget}")
    if p < 1:
        raise ConfigError(f"depth: {d} pairs per prompt exceeds the budget of {budget}")
    return p, d


def choose_none(pair_counts: Sequence[int], budget: int, seed: int) -> list[Pick]:
    """The data as it is: ``budget`` prompts in a seeded order, the primary pair of each."""
    order = [i for i in seeded_order(len(pair_counts), seed) if pair_counts[i] > 0]
    return [Pick(i, 0, "one pair per prompt") for i in order[:budget]]


def choose_uniform(pair_counts: Sequence[int], breadth: int, depth: int, seed: int) -> list[Pick]:
    """``breadth`` prompts with at least ``depth`` pairs each, ``depth`` pairs of each drawn at random: P x D pairs."""
    rng = random.Random(seed)
    eligible = [i for i in seeded_order(len(pair_counts), seed) if pair_counts[i] >= depth]
    if len(eligible) < breadth:
        raise ConfigError(f"uniform: {breadth} prompts with {depth} pairs each are needed; only {len(eligible)} have "
                          f"that many (lower --depth or --breadth, or raise --responses)")
    return [Pick(i, j, f"uniform {breadth} x {depth}") for i in eligible[:breadth]
            for j in sorted(rng.sample(range(pair_counts[i]), depth))]


def representatives(points: np.ndarray, k: int, seed: int) -> list[list[int]]:
    """[BPO] breadth: k-means of the prompts' embeddings; for each of the ``k`` clusters, its members ordered by
    distance to the centre (the first is the prompt kept; the others stand in when it yields no pair).
    Clusters are listed by size, largest first."""
    labels, dist = _kmeans(points, k, seed)
    clusters = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    clusters = [c for c in clusters if len(c)]
    clusters.sort(key=lambda c: (-len(c), int(c.min())))
    return [[int(i) for i in c[np.argsort(dist[c], kind="stable")]] for c in clusters]


def choose_by_gradient(grads: np.ndarray, budget: int, k: int, seed: int) -> list[tuple[int, int, float]]:
    """[BPO] depth: cluster the pairs' (projected) loss gradients and keep the pairs nearest the cluster centres.

    [GUESS] Gradients are scaled to unit length first (their direction, not their size, says what a pair teaches),
    clustered by k-means into ``k`` groups, and kept round-robin: every cluster, largest first, gives its nearest
    remaining pair, until ``budget`` pairs are kept. A prompt therefore gets as much depth as the number of distinct
    directions its pairs reach near a centre. Returns (row, cluster, distance) per kept pair, in order of keeping.
    """
    unit = grads / np.maximum(np.linalg.norm(grads, axis=1, keepdims=True), 1e-12)
    labels, dist = _kmeans(unit, k, seed)
    queues = [list(np.flatnonzero(labels == c)[np.argsort(dist[labels == c], kind="stable")])
              for c in range(int(labels.max()) + 1)]
    queues.sort(key=lambda q: (-len(q), int(min(q)) if q else 0))
    kept: list[tuple[int, int, float]] = []
    while len(kept) < budget and any(queues):
        for q in queues:
            if q and len(kept) < budget:
                row = int(q.pop(0))
                kept.append((row, int(labels[row]), float(dist[row])))
    return kept


def _kmeans(points: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and each point's distance to its centre; ``k`` is lowered to the number of distinct points."""
    distinct = len(np.unique(points, axis=0))
    k = max(1, min(k, distinct))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's memory-leak note on Windows/MKL is not ours to act on
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(points.astype(np.float64))
    dist = np.linalg.norm(points - km.cluster_centers_[km.labels_], axis=1)
    return km.labels_, dist


def seeded_order(n: int, seed: int) -> list[int]:
    """0..n-1 in an order fixed by ``seed``: the order in which prompts are examined."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order
