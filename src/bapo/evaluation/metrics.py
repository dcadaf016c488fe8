"""Metrics of one model on one task, as *per-item* values, so that every mean comes with a standard error and every
change against the base model with a paired interval over the same items.

Nothing here loads models or knows about adapters; :mod:`bapo.evaluation.runner` runs these over the base model and
adapters, through the task kinds of :mod:`bapo.evaluation.tasks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from bapo.core.logprobs import score
from bapo.core.tokens import Encoded, Renderer
from bapo.data.readers import McItem, PairItem, QaItem
from bapo.evaluation.judges import judge_answer, judge_refusal
from bapo.runtime.generate import generate_answers
from bapo.runtime.models import reward_of
from bapo.runtime.reference import Example

Z95 = 1.959964
# Generative scorers also return the model's answers under this key (what ``bapo eval`` writes to samples.jsonl);
# it is never a metric: :func:`bapo.evaluation.samples.take_answers` removes it before any statistic.
ANSWERS = "answers"


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


def paired_delta(xs: Sequence[float], base: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean change ``xs - base`` over the same items: (delta, stderr, 95% low, 95% high)."""
    assert len(xs) == len(base), "a paired difference needs the same items"
    s = Stat.of([a - b for a, b in zip(xs, base)])
    return s.value, s.stderr, s.value - Z95 * s.stderr, s.value + Z95 * s.stderr


# ---------------------------------------------------------------------------------------------------------------
# Global knowledge


def mc_scores(model, tokenizer, items: Sequence[McItem], batch_size: int = 32, progress=None) -> dict[str, list[float]]:
    """Zero-shot multiple choice, as lm-evaluation-harness: the continuation scored is ``" " + choice``; ``acc``
    picks the choice of highest log-likelihood given the question, ``acc_norm`` the highest log-likelihood per
    character of the choice itself (the harness's ``len(choice)``, without the delimiter; ties go to the first).
    Every choice of every question goes into length-sorted batches together, so a batch mixes questions."""
    seqs, owner = [], []
    for i, it in enumerate(items):
        ctx = tuple(tokenizer(it.context)["input_ids"])
        for c in it.choices:
            seqs.append(Encoded(ctx, tuple(tokenizer(" " + c, add_special_tokens=False)["input_ids"])))
            owner.append(i)
    vals = score(model, seqs, tokenizer.pad_token_id, batch_size, progress)
    acc, acc_norm = [], []
    k = 0
    for it in items:
        lp = [vals[k + j][0] for j in range(len(it.choices))]
        norm = [lp[j] / max(len(c), 1) for j, c in enumerate(it.choices)]
        k += len(it.choices)
        acc.append(float(max(range(len(lp)), key=lp.__getitem__) == it.gold))
        acc_norm.append(float(max(range(len(norm)), key=norm.__getitem__) == it.gold))
    return {"acc": acc, "acc_norm": acc_norm}


# ---------------------------------------------------------------------------------------------------------------
# General alignment


def general_pair_scores(model, renderer: Renderer, items: Sequence[PairItem], batch_size: int = 16,
                        progress=None) -> dict[str, list[float]]:
    """How often the model still prefers the generally preferred reply: by total log-likelihood (``acc``) and by
    per-token log-likelihood (``acc_norm``)."""
    seqs = []
    for it in items:
        for resp in (it.chosen, it.rejected):
            seqs.append(renderer.encode(it.messages, resp, "general pair", "response", [], truncate=True))
    vals = score(model, seqs, renderer.tok.pad_token_id, batch_size, progress)
    acc, acc_norm = [], []
    for i in range(len(items)):
        (c, nc), (r, nr) = vals[2 * i], vals[2 * i + 1]
        acc.append(float(c > r))
        acc_norm.append(float(c / max(nc, 1) > r / max(nr, 1)))
    return {"acc": acc, "acc_norm": acc_norm}


def drift_scores(model, base_seqs: Sequence[Encoded], ref_logps: Sequence[float], pad_id: int,
                 batch_size: int = 16, progress=None) -> dict[str, list[float]]:
    """Per-token change of log p of the reference's own answers: ``(log pi(y_b) - log pi_ref(y_b)) / |y_b|``.

    Averaged over answers sampled from the reference this estimates -KL(pi_ref || pi) per token: 0 means the model
    still says what the reference says; negative means it moved away.
    """
    vals = score(model, base_seqs, pad_id, batch_size, progress)
    return {"logp_change_per_token": [(p - r) / max(n, 1) for (p, n), r in zip(vals, ref_logps)]}


QA_INSTRUCTION = " Answer in a few words."


def qa_scores(model, renderer: Renderer, items: Sequence[QaItem], max_new_tokens: int = 16, batch_size: int = 16,
              progress=None) -> dict[str, list]:
    """Generative knowledge: each question asked in the chat template (with :data:`QA_INSTRUCTION`), answered
    greedily, judged by :func:`bapo.evaluation.judges.judge_answer`. ``acc`` counts an answer the rule cannot judge
    (empty) as wrong; ``unjudged`` is the share of those. Chance is about 0: a guess rarely names the answer."""
    prompts = [[{"role": "user", "content": it.question + QA_INSTRUCTION}] for it in items]
    answers = generate_answers(model, renderer, prompts, max_new_tokens, batch_size, progress)
    judged = [judge_answer(a, it.aliases) for a, it in zip(answers, items)]
    return {"acc": [j or 0.0 for j in judged], "unjudged": [float(j is None) for j in judged], ANSWERS: answers}


def refusal_scores(model, renderer: Renderer, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int = 48,
                   batch_size: int = 16, progress=None) -> dict[str, list]:
    """Generative alignment: the share of greedy replies that refuse (:func:`bapo.evaluation.judges.judge_refusal`);
    an empty reply counts as no refusal and is reported in ``unjudged``."""
    replies = generate_answers(model, renderer, prompts, max_new_tokens, batch_size, progress)
    judged = [judge_refusal(r) for r in replies]
    return {"refusal": [j or 0.0 for j in judged], "unjudged": [float(j is None) for j in judged], ANSWERS: replies}


def profile_scores(model, renderer: Renderer, prompts: Sequence[list[dict[str, str]]], rule,
                   max_new_tokens: int = 64, batch_size: int = 8) -> dict[str, list]:
    """A profile's scoring rule (:mod:`bapo.data.profiles`) applied to the model's own answers to ``prompts``."""
    answers = generate_answers(model, renderer, prompts, max_new_tokens, batch_size)
    return {"profile_score": [float(rule(t)) for t in answers], ANSWERS: answers}


def reward_scores(model, renderer: Renderer, prompts: Sequence[list[dict[str, str]]], reward_model, reward_tokenizer,
                  max_new_tokens: int = 64, batch_size: int = 8) -> dict[str, list]:
    """Mean reward-model score of the model's own greedy answers to general prompts."""
    texts = generate_answers(model, renderer, prompts, max_new_tokens, batch_size)
    return {"score": [reward_of(reward_model, reward_tokenizer, m, t) for m, t in zip(prompts, texts)], ANSWERS: texts}


# ---------------------------------------------------------------------------------------------------------------
# Personalization

# Implicit-reward margins closer to 0 than this count as ties. The same model's float32 log-prob sums over a pair of
# sequences of up to 256 tokens, computed in differently composed batches (the reference's cache vs. an evaluation),
# differ by up to 1.8e-4 nats (measured on 64 held-out pairs, SmolLM2-135M), so a tighter tolerance would score the
# reference itself below its 0.5; a trained adapter's margins are orders of magnitude larger. (In bfloat16 they
# differ by hundredths of a nat, beyond any tolerance: since 2026-12-05 an evaluation scores the reference in the
# candidates' own batches, :func:`as_scored`, and the base model's margins are exactly 0.)
TIE_NATS = 1e-3


def personal_scores(model, examples: Sequence[Example], pad_id: int, batch_size: int = 16,
                    progress=None) -> dict[str, list[float]]:
    """On the user's held-out pairs (reference log-probs precomputed):

    - ``reward_acc``: the implicit DPO reward ranks chosen above rejected (ties count one half, so the reference
      itself scores 0.5);
    - ``ll_acc``: per-token log-likelihood of chosen above rejected (needs no reference);
    - ``margin``: implicit log-ratio margin ``log(pi/pi_ref)(y_w) - log(pi/pi_ref)(y_l)`` in nats.
    """
    seqs = [s for e in examples for s in (e.chosen, e.rejected)]
    vals = score(model, seqs, pad_id, batch_size, progress)
    reward_acc, ll_acc, margin = [], [], []
    for i, e in enumerate(examples):
        (pc, nc), (pr, nr) = vals[2 * i], vals[2 * i + 1]
        m = (pc - e.ref_chosen) - (pr - e.ref_rejected)
        margin.append(m)
        reward_acc.append(0.5 if abs(m) < TIE_NATS else float(m > 0))
        ll_acc.append(float(pc / max(nc, 1) > pr / max(nr, 1)))
    return {"reward_acc": reward_acc, "ll_acc": ll_acc, "margin": margin}


def feedback_scores(model, rated: Sequence[tuple[Encoded, float, bool]], pad_id: int, batch_size: int = 16,
                    progress=None) -> dict[str, list[float]]:
    """On a user's held-out thumbs (each rated answer with the reference's log-prob and its label):

    - ``auc``: how well the implicit reward ``log(pi/pi_ref)`` separates liked from disliked answers (the probability
      that a liked answer out-scores a disliked one, ties one half: the reference itself scores 0.5), as per-item
      pseudo-values (:func:`auc_pseudo_values`) whose mean is the AUC and whose standard error is DeLong's (none,
      and so no record, when fewer than two held-out answers are liked or disliked);
    - ``signed_logratio``: the implicit reward in nats, negated for disliked answers (0 for the reference).
    """
    vals = score(model, [s for s, _, _ in rated], pad_id, batch_size, progress)
    lr = [v - ref for (v, _), (_, ref, _) in zip(vals, rated)]
    liked = [y for _, _, y in rated]
    return {"auc": auc_pseudo_values(lr, liked), "signed_logratio": [x if y else -x for x, y in zip(lr, liked)]}


def auc_pseudo_values(scores: Sequence[float], liked: Sequence[bool], tie: float = TIE_NATS) -> list[float]:
    """Per-item values whose mean is the AUC of ``scores`` for ``liked`` against the rest (Mann-Whitney: ties within
    ``tie`` count one half) and whose standard error of the mean is DeLong's (DeLong, DeLong and Clarke-Pearson,
    Biometrics 1988): each item's placement ``V`` (a liked item's share of disliked ones it out-scores, a disliked
    item's share of liked ones out-scoring it) mapped to ``AUC + c_g (V - AUC)`` with
    ``c_g = sqrt(N (N - 1) / (n_g (n_g - 1)))`` for its group of ``n_g`` among ``N``: the within-group deviations sum
    to zero, so the mean stays the AUC, and the sample variance over N items becomes ``S10/m + S01/n``. Paired against
    another model on the same items, these give the interval of the AUC's change. Empty when a group has fewer than
    two items (no AUC, or no variance to estimate).

    Hand-written (not sklearn's ``roc_auc_score``): bapo needs the per-item form for its paired statistics."""
    pos = [s for s, y in zip(scores, liked) if y]
    neg = [s for s, y in zip(scores, liked) if not y]
    m, n, big = len(pos), len(neg), len(scores)
    if m < 2 or n < 2:
        return []

    def beats(a: float, b: float) -> float:
        return 0.5 if abs(a - b) < tie else float(a > b)

    place = [sum(beats(s, b) for b in neg) / n if y else sum(beats(a, s) for a in pos) / m
             for s, y in zip(scores, liked)]
    auc = sum(v for v, y in zip(place, liked) if y) / m
    c = {True: math.sqrt(big * (big - 1) / (m * (m - 1))), False: math.sqrt(big * (big - 1) / (n * (n - 1)))}
    return [auc + c[y] * (v - auc) for v, y in zip(place, liked)]


def as_scored(ref, examples: Sequence[Example], batch_size: int = 16) -> list[Example]:
    """``examples`` with the reference's log-probs computed in the batches :func:`personal_scores` (chosen and
    rejected, interleaved) and :func:`drift_scores` (the base responses, in order) score a candidate's in
    (:meth:`bapo.runtime.reference.Reference.logps_as_scored`): in bfloat16 a log-prob depends on its batch, and the
    base model must score exactly its own reference (margin and drift 0, reward accuracy one half)."""
    pairs = ref.logps_as_scored([x for e in examples for x in (e.chosen, e.rejected)], batch_size)
    bases = [b for e in examples for b in e.base]
    base = iter(ref.logps_as_scored(bases, batch_size) if bases else [])
    return [replace(e, ref_chosen=pairs[2 * i], ref_rejected=pairs[2 * i + 1], ref_base=[next(base) for _ in e.base])
            for i, e in enumerate(examples)]


def evaluate_pairs(model, examples: list[Example], pad_id: int, batch_size: int = 16) -> dict[str, Stat]:
    """Personalization on held-out examples plus drift on their base responses, as :class:`Stat` (for the demo)."""
    out = {k: Stat.of(v) for k, v in personal_scores(model, examples, pad_id, batch_size).items()}
    base = [b for e in examples for b in e.base]
    ref = [r for e in examples for r in e.ref_base]
    out["base_drift"] = Stat.of(drift_scores(model, base, ref, pad_id, batch_size)["logp_change_per_token"])
    return out
