"""TRL's other pairwise preference losses, as pure functions of per-sequence log-ratios (``log pi - log pi_ref``,
summed over response tokens), each citing its paper and cross-checked against TRL's DPOTrainer on its own batch
(``tests/core/test_losses_vs_trl.py``). Shapes ``(B,)`` in and out, as in :mod:`bapo.core.losses`; ``d`` below is
``lr_w - lr_l``, the chosen's log-ratio minus the rejected's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def apo_zero_loss(lr_w: Tensor, lr_l: Tensor, beta: float) -> Tensor:
    """APO-zero (D'Oosterlinck et al., 2024, arXiv 2408.06266, Eq. 7): for chosen answers better than the model's
    own, push the chosen's likelihood up and the rejected's down, each on its own: ``1 - s(b lr_w) + s(b lr_l)``."""
    return 1 - torch.sigmoid(beta * lr_w) + torch.sigmoid(beta * lr_l)


def apo_down_loss(lr_w: Tensor, lr_l: Tensor, beta: float) -> Tensor:
    """APO-down (same paper, Eq. 8): for chosen answers worse than the model's own, push both down, the rejected
    more: ``s(b lr_w) + 1 - s(b d)``."""
    return torch.sigmoid(beta * lr_w) + 1 - torch.sigmoid(beta * (lr_w - lr_l))


def sppo_hard_loss(lr_w: Tensor, lr_l: Tensor, beta: float) -> Tensor:
    """SPPO with hard win probabilities (Wu et al., 2024, arXiv 2405.00675, Eq. 4.7 with P = 1 for the winner, 0 for
    the loser): each log-ratio regressed to ``+-1/(2 b)``: ``(lr_w - 1/(2b))^2 + (lr_l + 1/(2b))^2``."""
    return (lr_w - 0.5 / beta) ** 2 + (lr_l + 0.5 / beta) ** 2


def nca_pair_loss(lr_w: Tensor, lr_l: Tensor, beta: float) -> Tensor:
    """NCA for pairs (Chen et al., NeurIPS 2024, arXiv 2402.05369): absolute rewards rather than their difference,
    so the chosen's likelihood is kept from falling: ``-log s(b lr_w) - log s(-b lr_w)/2 - log s(-b lr_l)/2``."""
    return -F.logsigmoid(beta * lr_w) - 0.5 * F.logsigmoid(-beta * lr_w) - 0.5 * F.logsigmoid(-beta * lr_l)


def exo_pair_loss(lr_w: Tensor, lr_l: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """EXO for pairs (Ji et al., ICML 2024, arXiv 2402.00856, Eq. 16): the reverse KL from the policy's preference
    ``q = softmax(b lr)`` over {chosen, rejected} to the labels' ``[1 - eps, eps]`` (eps > 0: the target must be a
    distribution the KL is finite against)."""
    z = beta * (lr_w - lr_l)
    return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-label_smoothing))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(label_smoothing)))


def bco_pair_loss(lr_w: Tensor, lr_l: Tensor, beta: float) -> Tensor:
    """BCO for pairs (Jung et al., 2024, arXiv 2404.04656), as TRL computes it (without BCO's running reward mean):
    each answer classified on its own reward, chosen as good and rejected as bad: ``-log s(b lr_w) - log s(-b lr_l)``."""
    return -F.logsigmoid(beta * lr_w) - F.logsigmoid(-beta * lr_l)


def aot_loss(logratio: Tensor, ref_logratio: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """AOT, paired (Melnyk et al., NeurIPS 2024, arXiv 2406.05882): distributional alignment by optimal transport in
    one dimension. The batch's policy margins ``log pi(w) - log pi(l)`` and reference margins are each *sorted*, and
    cDPO's loss applied to the sorted differences: the policy's margin distribution must dominate the reference's
    (so this loss, unlike the others, depends on the whole batch)."""
    delta = torch.sort(logratio, dim=0).values - torch.sort(ref_logratio, dim=0).values
    return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


def discopop_loss(lr_w: Tensor, lr_l: Tensor, beta: float, tau: float) -> Tensor:
    """DiscoPOP (Chris Lu et al., NeurIPS 2024, arXiv 2406.08414, Eq. 5), the loss an LLM-driven search discovered:
    DPO's logistic loss and an exponential one, blended by ``m = s(b d / tau)``: ``(1 - m) (-log s(b d)) + m e^(-b d)``."""
    z = beta * (lr_w - lr_l)
    m = torch.sigmoid(z / tau)
    return (1 - m) * -F.logsigmoid(z) + m * torch.exp(-z)


def sigmoid_norm_loss(lr_w_mean: Tensor, lr_l_mean: Tensor, beta: float) -> Tensor:
    """DPO on per-token mean log-ratios (TRL's ``sigmoid_norm``; length-normalized DPO as in, e.g., the SimPO paper's
    ablations, Meng et al. 2024, arXiv 2405.14734): ``-log s(b (m_w - m_l))``."""
    return -F.logsigmoid(beta * (lr_w_mean - lr_l_mean))


def kto_reference_point(kl_logratios: Tensor) -> Tensor:
    """KTO's reference point z0 (Ethayarajh et al., ICML 2024, arXiv 2402.01306, Eq. 7): an estimate of
    KL(pi_theta || pi_ref) from the log-ratios of *mismatched* prompt-completion pairs of the batch (each prompt with
    another example's completion, as TRL builds them), averaged, clamped at 0 and not differentiated."""
    return kl_logratios.mean().clamp(min=0).detach()


def kto_loss(logratios: Tensor, liked: Tensor, z0: Tensor, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> Tensor:
    """KTO (Ethayarajh et al., ICML 2024, arXiv 2402.01306, Eq. 7) for unpaired feedback: one completion per example,
    ``liked`` True for a thumbs up. A liked completion's loss is ``w_d (1 - s(b (lr - z0)))``, a disliked one's
    ``w_u (1 - s(b (z0 - lr)))``: each is pushed past the reference point z0 (:func:`kto_reference_point`) on its
    side. Per example, ``(B,)``; TRL's batch loss is the mean over examples."""
    liked_loss = desirable_weight * (1 - torch.sigmoid(beta * (logratios - z0)))
    disliked_loss = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratios)))
    return torch.where(liked, liked_loss, disliked_loss)
