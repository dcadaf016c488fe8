"""bapo's losses against TRL's DPOTrainer on the same per-token log-probs.

TRL computes its loss inside ``DPOTrainer._compute_loss``; we call that method on a stand-in trainer whose model
returns the per-token log-probs we choose, so both sides see exactly the same inputs. Skipped without TRL.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl")

from bapo.core.losses import LossConfig, PairLogps, preference_loss  # noqa: E402

B, L = 4, 7


class _Accel:
    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather


def _trl_loss(loss_type, beta, eps, token_logps, mask, ref_c, ref_r):
    """Run TRL's own loss code; the stand-in model hands back ``token_logps`` as its log-probs."""

    def model(**kw):
        z = torch.zeros(2 * B, L - 1)
        return SimpleNamespace(log_probs=token_logps, entropy=z, mean_logits=z, is_top1=z.bool(), aux_loss=None)

    model.training = True
    fake = SimpleNamespace(
        model=model, accelerator=_Accel(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=eps,
        use_weighting=False, _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
        args=SimpleNamespace())
    inputs = {"input_ids": torch.ones(2 * B, L, dtype=torch.long), "attention_mask": torch.ones(2 * B, L),
              "completion_mask": mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    return trl.DPOTrainer._compute_loss(fake, model, inputs, False)


@pytest.mark.parametrize("ours,theirs", [("dpo", "sigmoid"), ("ipo", "ipo"), ("hinge", "hinge"), ("robust", "robust")])
def test_same_numbers_as_trl(ours, theirs):
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2 * B, L, dtype=torch.long)
    for i, n in enumerate([3, 5, 2, 6, 4, 1, 6, 3]):
        mask[i, L - n:] = 1  # completion tokens at the end
    token_logps = -torch.rand(2 * B, L - 1, generator=g) * 3 * mask[:, 1:]
    ref = -torch.rand(2 * B, generator=g) * 8
    expected = _trl_loss(theirs, 0.3, 0.2, token_logps, mask, ref[:B], ref[B:])

    sums, lens = token_logps.sum(1), mask[:, 1:].sum(1).float()
    p = PairLogps(sums[:B], sums[B:], ref[:B], ref[B:], lens[:B], lens[B:])
    got, _ = preference_loss(p, LossConfig(method=ours, beta=0.3, label_smoothing=0.2))
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
