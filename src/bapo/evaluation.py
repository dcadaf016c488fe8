"""Held-out evaluation of a policy against its reference: personalization gained, and drift on the reference's own
answers. (The full suite with knowledge and general alignment arrives with ``bapo eval``.)

Everything is a mean over items with its standard error, so a reader can tell a change from noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from bapo.base import Example
from bapo.logprobs import score


@dataclass(frozen=True)
class Stat:
    """A mean over ``n`` items with its standard error."""

    value: float
    stderr: float
    n: int

    @classmethod
    def of(cls, xs: Sequence[float]) -> "Stat":
        n = len(xs)
        if n == 0:
            return cls(float("nan"), float("nan"), 0)
        mean = sum(xs) / n
        var = sum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
        return cls(mean, math.sqrt(var / n), n)

    def __str__(self) -> str:
        return f"{self.value:.3f} ± {self.stderr:.3f}"


def evaluate_pairs(model, examples: list[Example], pad_id: int, batch_size: int = 16) -> dict[str, Stat]:
    """Preference and drift metrics of ``model`` on held-out examples (reference log-probs precomputed).

    - ``reward_acc``: the implicit DPO reward ranks chosen above rejected (ties count one half, so the reference
      itself scores 0.5).
    - ``ll_acc``: the per-token log-likelihood of chosen is above that of rejected (needs no reference).
    - ``margin``: mean implicit log-ratio margin ``(log pi/pi_ref)(y_w) - (log pi/pi_ref)(y_l)``, in nats.
    - ``base_drift``: mean per-token change of log p(y_b) against the reference; negative means the model moved
      away from what the reference itself says (an estimate of -KL(ref || policy) per token).
    """
    seqs = [s for e in examples for s in (e.chosen, e.rejected)] + [b for e in examples for b in e.base]
    vals = score(model, seqs, pad_id, batch_size)
    pairs, base_vals = vals[: 2 * len(examples)], vals[2 * len(examples):]
    reward_acc, ll_acc, margin = [], [], []
    for i, e in enumerate(examples):
        (pc, nc), (pr, nr) = pairs[2 * i], pairs[2 * i + 1]
        m = (pc - e.ref_chosen) - (pr - e.ref_rejected)
        margin.append(m)
        reward_acc.append(0.5 if abs(m) < 1e-4 else float(m > 0))
        ll_acc.append(float(pc / max(nc, 1) > pr / max(nr, 1)))
    ref_base = [r for e in examples for r in e.ref_base]
    drift = [(p - r) / max(n, 1) for (p, n), r in zip(base_vals, ref_base)]
    return {"reward_acc": Stat.of(reward_acc), "ll_acc": Stat.of(ll_acc), "margin": Stat.of(margin),
            "base_drift": Stat.of(drift)}
