"""Metrics: exact values on constructed cases, agreement with direct per-choice computation, paired deltas."""

import math

import pytest
import torch

from bapo.evaluation.metrics import Stat, mc_scores, paired_delta
from bapo.runtime.models import load_model, load_tokenizer
from bapo.data.readers import McItem


class Unigram(torch.nn.Module):
    """A 'language model' whose next-token distribution ignores the context: log p(token) = table[token]."""

    def __init__(self, logp: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logp.clone())
        self.config = type("C", (), {})()
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, use_cache=False, **kwargs):
        b, l = input_ids.shape
        return type("O", (), {"logits": self.logits.expand(b, l, -1)})()


def test_mc_accuracy_exact_on_a_constructed_case(tiny_model):
    tok = load_tokenizer(tiny_model)
    vocab = tok.get_vocab()
    table = torch.full((len(vocab),), -8.0)
    table[vocab["a"]] = -0.1
    table[vocab[" "]] = -0.5
    model = Unigram(torch.log_softmax(table, 0))
    items = [
        McItem("Question: q1\nAnswer:", ["zzz", "aaa", "bbb"], 1),  # 'aaa' is likeliest: right
        McItem("Question: q2\nAnswer:", ["aaa", "zz"], 1),  # 'aaa' is likeliest: wrong
        # total log-likelihood prefers the short 'a'; per character the long 'aaaaaaaa' wins (gold 1)
        McItem("Question: q3\nAnswer:", ["a", "aaaaaaaa", "zz"], 1),
    ]
    got = mc_scores(model, tok, items)
    assert got["acc"] == [1.0, 0.0, 0.0]
    assert got["acc_norm"] == [1.0, 0.0, 1.0]


def test_acc_norm_divides_by_the_choice_characters_as_lm_eval_does(tiny_model):
    """lm-evaluation-harness: ``argmax(lls / len(choice))``, the choice without its leading space. Here the space is
    cheap and 'a' dear, so per character of the choice 'aa' wins, while per byte of ' ' + choice 'a' would."""
    tok = load_tokenizer(tiny_model)
    vocab = tok.get_vocab()
    table = torch.full((len(vocab),), -8.0)
    table[vocab["a"]], table[vocab[" "]] = -1.0, 2.0
    model = Unigram(torch.log_softmax(table, 0))
    lp = torch.log_softmax(table, 0)
    space, a = -lp[vocab[" "]].item(), -lp[vocab["a"]].item()
    assert (space + 2 * a) / 2 < space + a and (space + 2 * a) / 3 > (space + a) / 2  # the two rules disagree
    got = mc_scores(model, tok, [McItem("Question: q\nAnswer:", ["a", "aa"], 1)])
    assert got == {"acc": [0.0], "acc_norm": [1.0]}


def test_mc_acc_agrees_with_a_direct_per_choice_computation(tiny_model):
    model, tok = load_model(tiny_model), load_tokenizer(tiny_model)
    items = [McItem(f"Question: what is {i}?\nAnswer:", [f"{i}", f"not {i}", "maybe", f"{i}{i}x"], i % 4)
             for i in range(12)]
    got = mc_scores(model, tok, items, batch_size=5)

    def ll(ctx, cont):
        c = tok(ctx)["input_ids"]
        ids = c + tok(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
        return sum(lp[t - 1, ids[t]].item() for t in range(len(c), len(ids)))

    direct = []
    for it in items:
        scores = [ll(it.context, " " + ch) for ch in it.choices]
        direct.append(float(scores.index(max(scores)) == it.gold))
    assert got["acc"] == direct


def test_stat_and_paired_delta_by_hand():
    s = Stat.of([1.0, 0.0, 1.0, 1.0])
    assert s.value == 0.75 and s.n == 4 and s.stderr == pytest.approx(math.sqrt(0.25 / 4))
    d, se, lo, hi = paired_delta([1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0])  # differences 1, 0, 0, 1
    assert d == 0.5 and se == pytest.approx(math.sqrt((4 * 0.25 / 3) / 4))
    assert lo == pytest.approx(0.5 - 1.959964 * se) and hi == pytest.approx(0.5 + 1.959964 * se)


def test_personal_reward_acc_counts_float_noise_as_a_tie_and_real_margins_by_sign(tiny_model):
    from bapo.runtime.reference import Example
    from bapo.evaluation.metrics import TIE_NATS, personal_scores
    from bapo.core.logprobs import score
    from bapo.core.tokens import Encoded

    model = load_model(tiny_model)
    seqs = [Encoded((7, 8, 9), (10, 11, 12)), Encoded((7, 8, 9), (20, 21)), Encoded((7, 8), (30, 31, 32, 33)),
            Encoded((7, 8), (40,))]
    (c1, _), (r1, _), (c2, _), (r2, _) = score(model, seqs, 0)
    noise = TIE_NATS / 3  # as when the reference's log-probs were computed in another batch
    examples = [Example(seqs[0], seqs[1], c1 + noise, r1 - noise, [], [], []),  # margin -2/3 TIE: a tie
                Example(seqs[2], seqs[3], c2 - 0.5, r2, [], [], [])]  # the model likes chosen 0.5 nats more: right
    out = personal_scores(model, examples, 0)
    assert out["reward_acc"] == [0.5, 1.0]
    assert out["margin"] == pytest.approx([-2 * noise, 0.5], abs=1e-5)


def test_auc_pseudo_values_give_the_mann_whitney_auc_and_delongs_standard_error():
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from bapo.evaluation.metrics import auc_pseudo_values

    rng = np.random.default_rng(0)
    liked = [bool(x) for x in rng.integers(0, 2, 40)]
    scores = [float(rng.normal(0.8 if y else 0.0)) for y in liked]
    scores[3] = scores[4] = 0.25  # a tie counts one half
    z = auc_pseudo_values(scores, liked)
    s = Stat.of(z)
    assert s.value == pytest.approx(roc_auc_score(liked, scores), abs=1e-12)
    # DeLong's variance from its structural components, computed here directly
    pos = np.array([x for x, y in zip(scores, liked) if y])
    neg = np.array([x for x, y in zip(scores, liked) if not y])
    h = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = h.mean(1), h.mean(0)
    var = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    assert s.stderr == pytest.approx(math.sqrt(var), rel=1e-9)
    # the reference scores every answer alike: AUC exactly 0.5 with no spread; one class alone: no AUC
    assert set(auc_pseudo_values([0.0] * 6, [True, False] * 3)) == {0.5}
    assert auc_pseudo_values([1.0, 2.0, 3.0], [True, True, True]) == []


def test_as_scored_gives_each_sequence_the_reference_value_computed_in_the_scored_order():
    from bapo.core.tokens import Encoded
    from bapo.evaluation.metrics import as_scored
    from bapo.runtime.reference import Example

    class Ref:  # the log-prob of a sequence is its response's first token; remembers each call's list and batch
        calls = []

        def logps_as_scored(self, seqs, batch_size):
            self.calls.append(([s.response[0] for s in seqs], batch_size))
            return [float(s.response[0]) for s in seqs]

    def enc(t):
        return Encoded((1,), (t,))

    examples = [Example(enc(10), enc(11), 0.0, 0.0, [enc(12), enc(13)], [0.0, 0.0], ["a", "b"]),
                Example(enc(20), enc(21), 0.0, 0.0, [enc(22)], [0.0], ["c"])]
    ref = Ref()
    got = as_scored(ref, examples, batch_size=5)
    assert ref.calls == [([10, 11, 20, 21], 5), ([12, 13, 22], 5)]  # personal_scores' order, then drift_scores'
    assert [(e.ref_chosen, e.ref_rejected, e.ref_base) for e in got] == [(10, 11, [12, 13]), (20, 21, [22])]
    assert got[0].base_texts == ["a", "b"] and examples[0].ref_chosen == 0.0  # the rest kept, the input untouched
