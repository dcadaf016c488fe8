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
