"""Preference losses as pure functions of per-sequence log-probabilities.

Every function takes tensors of shape ``(B,)`` (one value per preference pair) and returns per-pair losses of shape
``(B,)``; nothing here knows about models, tokenizers or trainers. Log-probs are *sums* over response tokens unless a
function says otherwise; ``*_len`` tensors hold the number of response tokens.

``PAIRWISE_LOSSES`` maps a name to a pairwise loss and ``BASE_TERMS`` a method to its term on the reference's base
responses (BAPO's anchor and its rivals replay and kl); :func:`preference_loss` combines a pairwise loss with the
optional NLL term on chosen responses and a base term, and returns the scalar loss and its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bapo.core import losses_more as more
from bapo.core.fields import option
from bapo.errors import ConfigError


@dataclass
class LossConfig:
    """Which preference loss, and the BAPO anchor (see ``bapo.core.losses``)."""

    method: str = option("bapo", "Loss: bapo; its rivals replay, kl, dpo+nll; or a pairwise loss (dpo, cdpo, ipo, "
                                 "hinge, robust, simpo, apo_zero, apo_down, sppo_hard, nca_pair, exo_pair, bco_pair, "
                                 "aot, discopop, sigmoid_norm); or kto, for thumbs up/down (unpaired feedback; pairs "
                                 "are unpaired: chosen liked, rejected disliked). Several, comma-separated "
                                 "(dpo,replay,bapo), with a forgetting budget: it ships the one that personalizes "
                                 "most within it; a base-response method may carry its own lambda there "
                                 "(dpo,bapo,bapo:0.1).")
    pref_loss: str = option("dpo", "With bapo, replay or kl: the preference loss the base-response term is added to "
                                   "(kto included).")
    beta: float = option(0.1, "Inverse temperature of the implicit reward (DPO's beta).")
    label_smoothing: float = option(0.1, "Assumed label-flip rate for cdpo, robust, exo_pair and aot.")
    discopop_tau: float = option(0.05, "DiscoPOP's temperature of the blend between its two losses.")
    simpo_gamma: float = option(0.5, "SimPO target margin gamma.")
    desirable_weight: float = option(1.0, "KTO's weight of liked answers (raise it when they are the fewer).")
    undesirable_weight: float = option(1.0, "KTO's weight of disliked answers.")
    rpo_alpha: float = option(0.0, "Weight of an NLL term on chosen responses (RPO); 0 = off (dpo+nll: 0 means 1).")
    anchor_lambda: float = option(1.0, "Weight lambda of the base-response term: BAPO's anchor, replay's NLL, kl's KL.",
                                  flag=("lambda", "anchor-lambda"))
    anchor: str = option("hinge", "BAPO anchor shape: hinge (the paper's max(0, gap)), abs or squared.")
    anchor_reduction: str = option("sum", "Base-response term over tokens: sum (the paper's anchor) or per-token mean.")
    anchor_tolerance: float = option(
        -1.0, "Gap, in nats per token, that BAPO's anchor reads as rounding rather than loss: max(0, gap - tolerance). "
              "-1 (auto): 0 where the reference is computed in the training batch (then it equals the policy bit for "
              "bit at step 0), 1e-5 with a cached float32 reference, 0.05 with a cached 16-bit one (see "
              "docs/losses.md).")

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"loss.method: unknown '{self.method}'; choose one of {', '.join(METHODS)}")
        if self.pref_loss not in PREFERENCE_LOSSES:
            raise ConfigError(f"loss.pref_loss: unknown '{self.pref_loss}'; choose one of {sorted(PREFERENCE_LOSSES)}")
        if self.anchor not in ANCHORS:
            raise ConfigError(f"loss.anchor: unknown '{self.anchor}'; choose one of {sorted(ANCHORS)}")
        if self.anchor_reduction not in ("sum", "mean"):
            raise ConfigError("loss.anchor_reduction: choose sum or mean")
        if self.beta <= 0:
            raise ConfigError("loss.beta: must be positive")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError("loss.label_smoothing: must be in [0, 0.5)")
        if self.pairwise == "exo_pair" and self.label_smoothing <= 0:
            raise ConfigError("loss.label_smoothing: exo_pair needs a positive label-flip rate (its KL target)")
        if self.discopop_tau <= 0:
            raise ConfigError("loss.discopop_tau: must be positive")
        if self.anchor_lambda < 0:
            raise ConfigError("loss.anchor_lambda: must be non-negative")
        if self.anchor_tolerance < 0 and self.anchor_tolerance != -1:
            raise ConfigError("loss.anchor_tolerance: must be >= 0, or -1 (auto)")
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise ConfigError("loss.desirable_weight, loss.undesirable_weight: must be positive")
        if self.unpaired and self.nll_weight > 0:
            raise ConfigError("loss.rpo_alpha: an NLL term on chosen responses needs pairs; kto has none")

    @property
    def uses_anchor(self) -> bool:
        """Whether the loss has a term on the base responses (so they must be generated and scored)."""
        return self.method in BASE_TERMS and self.anchor_lambda > 0

    @property
    def reads_reference_base(self) -> bool:
        """Whether the loss compares the policy's log-likelihood of base responses with the reference's (BAPO's anchor,
        a non-smooth function of the reference's number, so rounding noise in it pushes rather than averages out)."""
        return self.method == "bapo" and self.anchor_lambda > 0

    @property
    def needs_token_kl(self) -> bool:
        """Whether the loss needs the reference's whole next-token distribution on the base responses."""
        return self.method == "kl" and self.anchor_lambda > 0

    @property
    def pairwise(self) -> str:
        if self.method in BASE_TERMS:
            return self.pref_loss
        return "dpo" if self.method == "dpo+nll" else self.method

    @property
    def unpaired(self) -> bool:
        """Whether the loss reads unpaired feedback (one rated answer per example: KTO) rather than pairs."""
        return self.pairwise in UNPAIRED_LOSSES

    @property
    def nll_weight(self) -> float:
        """Weight of the NLL term on chosen responses: ``rpo_alpha``, which ``dpo+nll`` takes as 1 when it is 0."""
        return self.rpo_alpha if self.rpo_alpha > 0 or self.method != "dpo+nll" else 1.0


def dpo_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
    """DPO, sigmoid form (Rafailov et al., NeurIPS 2023, arXiv 2305.18290).

    The policy's implicit reward of a response is ``beta * log(pi/pi_ref)``; the loss is the Bradley-Terry negative
    log-likelihood that the chosen response out-scores the rejected one: ``-log sigmoid(beta * (lr_w - lr_l))``.
    """
    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))


def cdpo_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """Conservative DPO (cDPO; Mitchell, 2023, "A note on DPO with noisy preferences"): DPO with label smoothing.

    Treats each label as flipped with probability ``eps``: ``-(1-eps) log s(beta d) - eps log s(-beta d)``. With eps > 0
    the loss has a finite optimum, so margins stop growing once the pair is fit.
    """
    z = beta * (chosen_logratios - rejected_logratios)
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def robust_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """Robust DPO (Chowdhury et al., ICML 2024, arXiv 2403.00409), TRL's ``robust``.

    An unbiased estimate of the clean-label DPO loss when labels flip with known rate ``eps``:
    ``(-(1-eps) log s(beta d) + eps log s(-beta d)) / (1 - 2 eps)``.
    """
    z = beta * (chosen_logratios - rejected_logratios)
    return (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)


def ipo_loss(chosen_logratios_mean: Tensor, rejected_logratios_mean: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al., AISTATS 2024, arXiv 2310.12036), Eq. 17, with per-token log-ratios as TRL uses.

    Regresses the log-ratio gap onto ``1 / (2 beta)`` instead of pushing it to infinity: ``(d - 1/(2 beta))^2``.
    Takes *per-token mean* log-ratios, so the target does not scale with response length.
    """
    return (chosen_logratios_mean - rejected_logratios_mean - 1 / (2 * beta)) ** 2


def hinge_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
    """SLiC-HF hinge (Zhao et al., 2023, arXiv 2305.10425) on DPO's log-ratios: ``max(0, 1 - beta d)``."""
    return torch.relu(1 - beta * (chosen_logratios - rejected_logratios))


def simpo_loss(chosen_logps_mean: Tensor, rejected_logps_mean: Tensor, beta: float, gamma: float) -> Tensor:
    """SimPO (Meng et al., NeurIPS 2024, arXiv 2405.14734): reference-free, length-normalized.

    The reward is ``beta`` times the per-token mean log-prob; the chosen must beat the rejected by margin ``gamma``:
    ``-log sigmoid(beta (m_w - m_l) - gamma)``.
    """
    return -F.logsigmoid(beta * (chosen_logps_mean - rejected_logps_mean) - gamma)


def nll_loss(chosen_logps: Tensor, chosen_len: Tensor) -> Tensor:
    """RPO's NLL term on chosen responses (Pang et al., 2024, arXiv 2404.19733), TRL's ``rpo_alpha`` term.

    Token-weighted over the batch, as cross-entropy over all chosen tokens: returned per pair so that the *mean*
    over the batch equals ``-sum(logp_w) / sum(len_w)``.
    """
    return -chosen_logps * chosen_logps.numel() / chosen_len.sum().clamp(min=1)


def replay_loss(policy_base_logps: Tensor) -> Tensor:
    """Replay: the negative log-likelihood of the reference's own answers, ``-log pi_theta(y_b|x)``.

    Rehearsal of old outputs is the oldest defence against forgetting (experience replay; on language models, e.g.
    Ouyang et al. 2022's PPO-ptx mixes pre-training gradients in). It is BAPO's anchor without its hinge: the same
    quantity up to the constant ``log pi_ref(y_b|x)``, but it keeps pushing ``y_b`` up after the policy has passed the
    reference, where the hinge stops. Comparing the two shows what the hinge buys. Averaged over a trailing dimension
    of base responses per prompt.
    """
    nll = -policy_base_logps
    return nll.mean(dim=-1) if nll.dim() > 1 else nll


def token_kl(ref_token_logprobs: Tensor, policy_token_logprobs: Tensor) -> Tensor:
    """KL(pi_ref || pi_theta) of the next-token distributions at each position: ``(N, V)`` log-probs in, ``(N,)`` out.

    Summed over the tokens of the reference's own answers this is distillation on them (Hinton et al. 2015; as a
    forgetting defence in language models, e.g. the KL-to-reference penalty of Ziegler et al. 2019, here over the
    full vocabulary rather than the sampled token): the policy is kept near everything the reference would have said
    at each step of its answer, not only near the token it did say.
    """
    return (ref_token_logprobs.exp() * (ref_token_logprobs - policy_token_logprobs)).sum(-1)


def anchor_gap(policy_base_logps: Tensor, ref_base_logps: Tensor) -> Tensor:
    """How far the policy's log-likelihood of the base response sits *below* the reference's (positive = below)."""
    return ref_base_logps - policy_base_logps


def base_anchor(policy_base_logps: Tensor, ref_base_logps: Tensor, kind: str = "hinge",
                tolerance: Tensor | float = 0.0) -> Tensor:
    """BAPO's base anchor (Lee et al., Findings of EMNLP 2024, arXiv 2407.00693).

    Before training, the reference model answers each prompt (its base response ``y_b``). Personalizing must not make
    the model lose what it already said well, so the policy is penalized when its log-likelihood of ``y_b`` falls
    below the reference's: ``max(0, log pi_ref(y_b|x) - log pi_theta(y_b|x))`` (``kind="hinge"``, the paper's form).
    Once the policy is at or above the reference the penalty and its gradient are zero, so the anchor never pulls
    the policy *down* towards the reference. ``abs`` and ``squared`` are two-sided alternatives.

    ``tolerance`` (same shape as the log-probs, or a number) is the gap read as rounding: ``max(0, gap - tolerance)``.
    A hinge has its full gradient for any positive gap, so a reference cached from other batch shapes, which differs
    from the policy at step 0 by rounding alone, would push on every base response from the first step; the paper's
    form is ``tolerance = 0``. Inputs may have a trailing dimension of base responses per prompt; the result is
    averaged over it.
    """
    gap = anchor_gap(policy_base_logps, ref_base_logps)
    if kind == "hinge":
        pen = torch.relu(gap - tolerance)
    elif kind == "abs":
        pen = torch.relu(gap.abs() - tolerance)
    elif kind == "squared":
        pen = torch.relu(gap.abs() - tolerance) ** 2
    else:
        raise ValueError(f"unknown anchor kind {kind!r}; choose one of {sorted(ANCHORS)}")
    return pen.mean(dim=-1) if pen.dim() > 1 else pen


ANCHORS = ("hinge", "abs", "squared")


@dataclass
class PairLogps:
    """Per-sequence log-probs of one batch. Sums over response tokens; shapes ``(B,)``, base ones ``(B, K)``."""

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor
    chosen_len: Tensor
    rejected_len: Tensor
    base: Tensor | None = None
    ref_base: Tensor | None = None
    base_len: Tensor | None = None
    base_kl: Tensor | None = None  # KL(pi_ref || pi_theta) summed over each base response's tokens, (B, K)
    # Unpaired feedback (KTO): True where the rated answer was liked. Then ``chosen`` holds the rated answer and
    # ``rejected`` a mismatched one (another example's answer under this prompt: KTO's KL estimate), see
    # bapo.runtime.reference.Example.
    liked: Tensor | None = None
    # KTO's reference point when it is taken over more than this batch (the global batch of several processes, as
    # TRL gathers it: bapo.training.trainer.shared_reference_point); None: from this batch's mismatched answers.
    z0: Tensor | None = None


PairwiseFn = Callable[[PairLogps, LossConfig], Tensor]


def _lr(p: PairLogps) -> tuple[Tensor, Tensor]:
    return p.chosen - p.ref_chosen, p.rejected - p.ref_rejected


PAIRWISE_LOSSES: dict[str, PairwiseFn] = {
    "dpo": lambda p, c: dpo_loss(*_lr(p), c.beta),
    "cdpo": lambda p, c: cdpo_loss(*_lr(p), c.beta, c.label_smoothing),
    "robust": lambda p, c: robust_loss(*_lr(p), c.beta, c.label_smoothing),
    "hinge": lambda p, c: hinge_loss(*_lr(p), c.beta),
    "ipo": lambda p, c: ipo_loss(
        (p.chosen - p.ref_chosen) / p.chosen_len.clamp(min=1),
        (p.rejected - p.ref_rejected) / p.rejected_len.clamp(min=1),
        c.beta,
    ),
    "simpo": lambda p, c: simpo_loss(
        p.chosen / p.chosen_len.clamp(min=1), p.rejected / p.rejected_len.clamp(min=1), c.beta, c.simpo_gamma
    ),
    # TRL's other pairwise losses (bapo.core.losses_more)
    "apo_zero": lambda p, c: more.apo_zero_loss(*_lr(p), c.beta),
    "apo_down": lambda p, c: more.apo_down_loss(*_lr(p), c.beta),
    "sppo_hard": lambda p, c: more.sppo_hard_loss(*_lr(p), c.beta),
    "nca_pair": lambda p, c: more.nca_pair_loss(*_lr(p), c.beta),
    "exo_pair": lambda p, c: more.exo_pair_loss(*_lr(p), c.beta, c.label_smoothing),
    "bco_pair": lambda p, c: more.bco_pair_loss(*_lr(p), c.beta),
    "aot": lambda p, c: more.aot_loss(p.chosen - p.rejected, p.ref_chosen - p.ref_rejected, c.beta, c.label_smoothing),
    "discopop": lambda p, c: more.discopop_loss(*_lr(p), c.beta, c.discopop_tau),
    "sigmoid_norm": lambda p, c: more.sigmoid_norm_loss(
        (p.chosen - p.ref_chosen) / p.chosen_len.clamp(min=1),
        (p.rejected - p.ref_rejected) / p.rejected_len.clamp(min=1),
        c.beta,
    ),
}
# Losses over unpaired feedback (one rated answer per example, PairLogps.liked): KTO, the rated answers' log-ratios
# against the reference point of the mismatched ones.
UNPAIRED_LOSSES: dict[str, PairwiseFn] = {
    "kto": lambda p, c: more.kto_loss(p.chosen - p.ref_chosen, _liked(p), _z0(p), c.beta,
                                      c.desirable_weight, c.undesirable_weight),
}
PREFERENCE_LOSSES = {**PAIRWISE_LOSSES, **UNPAIRED_LOSSES}


def _liked(p: PairLogps) -> Tensor:
    if p.liked is None:
        raise ValueError("kto needs unpaired feedback: PairLogps.liked (thumbs up or down per example)")
    return p.liked


def _z0(p: PairLogps) -> Tensor:
    return more.kto_reference_point(p.rejected - p.ref_rejected) if p.z0 is None else p.z0


# The term on the reference's base responses of each method that has one: a function of the policy's and the
# reference's log-probs of each base response, the policy's KL from the reference summed over its tokens and the
# gap read as rounding (BAPO's anchor_tolerance over the response's tokens), all ``(B, K)`` (divided by the response
# length under per-token reduction); returns ``(B,)``.
BaseTermFn = Callable[[Tensor, Tensor, "Tensor | None", "Tensor | float", LossConfig], Tensor]
BASE_TERMS: dict[str, BaseTermFn] = {
    "bapo": lambda base, ref_base, kl, tol, c: base_anchor(base, ref_base, c.anchor, tol),
    "replay": lambda base, ref_base, kl, tol, c: replay_loss(base),
    "kl": lambda base, ref_base, kl, tol, c: kl.mean(dim=-1) if kl.dim() > 1 else kl,
}
METHODS = (*BASE_TERMS, "dpo+nll", *PREFERENCE_LOSSES)


def pair_metrics(p: PairLogps, cfg: LossConfig) -> dict[str, Tensor]:
    """Implicit rewards of chosen and rejected responses, their margin and how often it is positive (TRL's names)."""
    chosen_rewards = cfg.beta * (p.chosen - p.ref_chosen).detach()
    rejected_rewards = cfg.beta * (p.rejected - p.ref_rejected).detach()
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": p.chosen.detach().mean(),
        "logps/rejected": p.rejected.detach().mean(),
    }


def feedback_metrics(p: PairLogps, cfg: LossConfig) -> dict[str, Tensor]:
    """KTO's batch: the reference point (``kl``), the mean implicit reward of liked and of disliked answers, and their
    difference as the margin. A batch without liked (or disliked) answers gives NaN there: every batch has the same
    keys, so processes that gather them all call the same collectives (a missing key hung two-process training)."""
    liked = _liked(p)
    rewards = cfg.beta * (p.chosen - p.ref_chosen).detach()
    nan = torch.full((), float("nan"), dtype=rewards.dtype, device=rewards.device)
    up = rewards[liked].mean() if liked.any() else nan
    down = rewards[~liked].mean() if (~liked).any() else nan
    return {"kl": _z0(p), "rewards/chosen": up, "rewards/rejected": down, "rewards/margins": up - down}


def preference_loss(p: PairLogps, cfg: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """The full training objective of one batch and its metrics (detached, averaged over the batch).

    ``L = mean(pairwise) + nll_weight * mean(nll) + anchor_lambda * mean(base term)``, the base term being BAPO's
    anchor, replay's NLL or kl's KL on the reference's base responses (:data:`BASE_TERMS`).
    """
    pair = PREFERENCE_LOSSES[cfg.pairwise](p, cfg)
    loss = pair.mean()
    metrics = {"loss/pref": pair.detach().mean(), **(feedback_metrics(p, cfg) if cfg.unpaired else pair_metrics(p, cfg))}
    if cfg.nll_weight > 0:
        nll = nll_loss(p.chosen, p.chosen_len).mean()
        loss = loss + cfg.nll_weight * nll
        metrics["loss/nll"] = nll.detach()
    if p.base is not None and p.ref_base is not None:
        base, ref_base, kl = p.base, p.ref_base, p.base_kl
        per_token = max(cfg.anchor_tolerance, 0.0)  # -1 (auto) is resolved by the trainer; unresolved, the paper's 0
        tol: Tensor | float = per_token
        if cfg.anchor_reduction == "mean":
            assert p.base_len is not None, "a per-token base term needs base_len"
            n = p.base_len.clamp(min=1)
            base, ref_base, kl = base / n, ref_base / n, None if kl is None else kl / n
        elif per_token > 0:
            assert p.base_len is not None, "a tolerance per token needs base_len"
            tol = per_token * p.base_len
        metrics["anchor/gap"] = anchor_gap(base, ref_base).detach().mean()
        if cfg.uses_anchor:
            if cfg.needs_token_kl and kl is None:
                raise ValueError("method kl needs base_kl: the policy's KL from the reference on the base responses")
            term = BASE_TERMS[cfg.method](base, ref_base, kl, tol, cfg).mean()
            loss = loss + cfg.anchor_lambda * term
            metrics[f"loss/{'anchor' if cfg.method == 'bapo' else cfg.method}"] = term.detach()
    metrics["loss/total"] = loss.detach()
    return loss, metrics
