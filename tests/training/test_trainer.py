"""Regression check for the optimised training step: on a small model and a few batches, the loss of bapo's batched,
response-positions-only step equals a straightforward implementation (one sequence at a time, full logits, plain
formulas), for DPO and BAPO. Speed targets live in benchmarks/bench_train.py, not here."""

import math

import pytest
import torch

from bapo.runtime.reference import Example
from bapo.data.config import DataConfig, renderer
from bapo.runtime.config import LoraSettings
from bapo.core.losses import LossConfig
from bapo.runtime.models import add_lora, load_model, load_tokenizer
from bapo.training.trainer import PairCollator, batch_pair_logps
from bapo.core.losses import preference_loss


def plain_logp(model, seq) -> float:
    ids = torch.tensor([seq.ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logp[t - 1, seq.ids[t]] for t in range(len(seq.prompt), len(seq.ids)))


def plain_loss(model, examples, beta, lam):
    """The paper's formula written out, one sequence at a time."""
    total = 0.0
    for e in examples:
        lw, ll = plain_logp(model, e.chosen) - e.ref_chosen, plain_logp(model, e.rejected) - e.ref_rejected
        total = total - torch.nn.functional.logsigmoid(beta * (lw - ll))
        if lam:
            anchors = [torch.relu(rb - plain_logp(model, b)) for b, rb in zip(e.base, e.ref_base)]
            total = total + lam * sum(anchors) / len(anchors)
    return total / len(examples)


@pytest.mark.parametrize("method,pack,k", [("dpo", True, 1), ("bapo", True, 1), ("bapo", True, 2), ("bapo", False, 2)])
def test_batched_step_equals_the_straightforward_loss(tiny_model, method, pack, k):
    tok = load_tokenizer(tiny_model)
    r = renderer(tok, DataConfig())
    torch.manual_seed(0)
    model = add_lora(load_model(tiny_model), LoraSettings(r=4))
    with torch.no_grad():  # move off the reference so every term is live
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)

    def enc(q, a):
        return r.encode([{"role": "user", "content": q}], a, "x", "c", [])

    examples = [Example(enc(f"Question {i}" + "?" * i, "- yes\n- sure" * (i % 3 + 1)), enc(f"Question {i}" + "?" * i, "No."),
                        -20.0 - i, -8.0 + i,
                        [enc(f"Question {i}" + "?" * i, "Maybe, it depends." * (i % 2 + j + 1)) for j in range(k)],
                        [-15.0 - 2 * i - 5 * j for j in range(k)], ["..."] * k) for i in range(6)]
    cfg = LossConfig(method=method, beta=0.2, anchor_lambda=0.7)
    for chunk in (examples[:3], examples[3:]):
        batch = PairCollator(tok.pad_token_id, with_base=method == "bapo", pack=pack)(chunk)
        assert ("seq" in batch) == pack
        got, metrics = preference_loss(batch_pair_logps(model, batch), cfg)
        want = plain_loss(model, chunk, 0.2, 0.7 if method == "bapo" else 0.0)
        assert got.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-5)
        if method == "bapo":
            assert metrics["loss/anchor"].item() > 0 and math.isfinite(metrics["anchor/gap"].item())


def plain_kl(model, seq) -> float:
    """KL(pi_ref || pi_theta) summed over the response, one sequence, full logits, adapter off for the reference."""
    ids = torch.tensor([seq.ids])
    pol = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    with model.disable_adapter():
        ref = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    span = slice(len(seq.prompt) - 1, len(seq.ids) - 1)
    return (ref[span].exp() * (ref[span] - pol[span])).sum().item()


@pytest.mark.parametrize("k", [1, 2])
def test_token_kl_of_base_responses_equals_the_straightforward_one(tiny_model, k):
    tok = load_tokenizer(tiny_model)
    r = renderer(tok, DataConfig())
    torch.manual_seed(1)
    model = add_lora(load_model(tiny_model), LoraSettings(r=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)

    def enc(q, a):
        return r.encode([{"role": "user", "content": q}], a, "x", "c", [])

    examples = [Example(enc(f"Q{i}?", "- yes"), enc(f"Q{i}?", "No."), -9.0, -7.0,
                        [enc(f"Q{i}?", "It depends" + "." * (i + j)) for j in range(k)], [-12.0] * k, ["..."] * k)
                for i in range(3)]
    batch = PairCollator(tok.pad_token_id, with_base=True)(examples)
    p = batch_pair_logps(model, batch, with_token_kl=True)
    want = [[plain_kl(model, e.base[j]) for j in range(k)] for e in examples]
    assert p.base_kl.shape == (3, k) and p.base_kl.flatten().tolist() == pytest.approx(sum(want, []), rel=1e-4, abs=1e-6)
    assert min(sum(want, [])) > 0  # the adapter moved the policy: a real KL
    loss, metrics = preference_loss(p, LossConfig(method="kl", anchor_lambda=1.0))
    assert metrics["loss/kl"].item() == pytest.approx(sum(sum(w) / k for w in want) / 3, rel=1e-4)
