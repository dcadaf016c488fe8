"""bapo's losses against TRL's DPOTrainer, through TRL's public API only.

A real ``DPOTrainer`` (a tiny model with a fresh LoRA adapter, moved off zero so the policy differs from its
reference) computes its loss on its own first batch with ``compute_loss``; bapo computes the per-sequence log-probs
of the same batch with :func:`bapo.core.logprobs.sequence_logps` (the adapter disabled for the reference) and its
loss with :func:`bapo.core.losses.preference_loss`. Skipped without TRL.
"""

import pytest
import torch

trl = pytest.importorskip("trl")

from bapo.core.logprobs import sequence_logps  # noqa: E402
from bapo.core.losses import LossConfig, PairLogps, preference_loss  # noqa: E402
from bapo.runtime.models import load_model, load_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return [{"prompt": f"Question {i}: which is better?", "chosen": f"- point {i}\n- point {i + 1}",
             "rejected": f"Point {i} and {'more ' * (i % 3)}point {i + 1}."} for i in range(4)]


def trl_batch(cls, config, rows, model_dir, tmp_path, seed=0, **kw):
    """A TRL trainer (``cls``, its config class ``config``) over the tiny model with a LoRA adapter moved off zero
    (seeded), and its first batch, in eval mode."""
    import datasets
    from peft import LoraConfig

    args = config(output_dir=str(tmp_path), per_device_train_batch_size=4, max_length=256, report_to="none",
                  use_cpu=True, dataloader_num_workers=0, seed=0, **kw)
    trainer = cls(model=load_model(model_dir, "cpu", "float32"), args=args, processing_class=load_tokenizer(model_dir),
                  train_dataset=datasets.Dataset.from_list(rows),
                  peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    trainer.model.eval()
    return trainer, next(iter(trainer.get_train_dataloader()))


def pair_logps(model, batch) -> PairLogps:
    """bapo's per-sequence log-probs of a DPOTrainer batch (chosen rows first), the adapter disabled for the
    reference."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "target_mask": torch.nn.functional.pad(batch["completion_mask"][:, 1:].bool(), (0, 1))}
    with torch.no_grad():
        pol, n = sequence_logps(model, inputs)
        with model.disable_adapter():
            ref, _ = sequence_logps(model, inputs)
    b = pol.shape[0] // 2
    return PairLogps(pol[:b], pol[b:], ref[:b], ref[b:], n[:b].float(), n[b:].float())


@pytest.mark.parametrize("ours,theirs", [("dpo", "sigmoid"), ("ipo", "ipo"), ("hinge", "hinge"), ("robust", "robust")])
def test_same_loss_as_trl_on_its_own_batch(ours, theirs, rows, tiny_base_model, tmp_path):
    beta, eps = 0.3, 0.2
    trainer, batch = trl_batch(trl.DPOTrainer, trl.DPOConfig, rows, tiny_base_model, tmp_path, beta=beta,
                               loss_type=[theirs], label_smoothing=eps if theirs == "robust" else 0.0)
    with torch.no_grad():
        expected = trainer.compute_loss(trainer.model, batch).item()
    got, _ = preference_loss(pair_logps(trainer.model, batch), LossConfig(method=ours, beta=beta, label_smoothing=eps))
    assert abs(expected - 0.0) > 1e-3  # a real loss, not a degenerate zero
    assert got.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)

MORE = ["apo_zero", "apo_down", "sppo_hard", "nca_pair", "exo_pair", "bco_pair", "aot", "discopop", "sigmoid_norm"]


def test_trls_other_pairwise_losses_match_on_its_own_batch(rows, tiny_base_model, tmp_path):
    """One DPOTrainer (TRL 1.16), its loss type switched in turn: each of TRL's other pairwise losses against
    bapo's on the same batch, the same LoRA weights and the same beta, label smoothing and DiscoPOP tau."""
    beta, eps, tau = 0.3, 0.2, 0.05
    trainer, batch = trl_batch(trl.DPOTrainer, trl.DPOConfig, rows, tiny_base_model, tmp_path, seed=1, beta=beta,
                               loss_type=["sigmoid"], label_smoothing=eps, discopop_tau=tau)
    p = pair_logps(trainer.model, batch)
    for loss_type in MORE:
        trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
        with torch.no_grad():
            expected = trainer.compute_loss(trainer.model, batch).item()
        got, _ = preference_loss(p, LossConfig(method=loss_type, beta=beta, label_smoothing=eps, discopop_tau=tau))
        assert abs(expected) > 1e-3, loss_type  # a real loss, not a degenerate zero
        assert got.item() == pytest.approx(expected, rel=1e-4, abs=1e-5), loss_type

def test_kto_matches_trls_kto_trainer_on_its_own_batch(tiny_base_model, tmp_path):
    """TRL's KTOTrainer (TRL 1.16) on its first batch: thumbs up and down, the KL reference point from its own
    mismatched prompt-completion pairs; bapo's kto_loss from the per-sequence log-probs of the same sequences."""
    from bapo.core.losses_more import kto_loss, kto_reference_point

    rows = [{"prompt": f"Question {i}: which is better?", "completion": f"- point {i}\n- point {i + 1}" if i % 2 else
             f"Point {i} and {'more ' * (i % 3)}point {i + 1}.", "label": bool(i % 2)} for i in range(4)]
    beta, w_d, w_u = 0.3, 1.0, 1.4
    trainer, batch = trl_batch(trl.KTOTrainer, trl.KTOConfig, rows, tiny_base_model, tmp_path, beta=beta,
                               desirable_weight=w_d, undesirable_weight=w_u, train_sampling_strategy="sequential")
    model = trainer.model

    def logps(prefix):
        inputs = {"input_ids": batch[f"{prefix}input_ids"], "attention_mask": batch[f"{prefix}attention_mask"],
                  "target_mask": torch.nn.functional.pad(batch[f"{prefix}completion_mask"][:, 1:].bool(), (0, 1))}
        pol, _ = sequence_logps(model, inputs)
        with model.disable_adapter():
            ref, _ = sequence_logps(model, inputs)
        return pol - ref

    # LoRA weights moved off zero towards the batch's own text (a few steps of likelihood on the KL sequences), so
    # that the KL estimate is positive and the reference point is live rather than clamped at 0
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    loras = [p for n, p in model.named_parameters() if "lora_" in n]
    opt = torch.optim.SGD(loras, lr=0.05)
    kl_inputs = {"input_ids": batch["KL_input_ids"], "attention_mask": batch["KL_attention_mask"],
                 "target_mask": torch.nn.functional.pad(batch["KL_completion_mask"][:, 1:].bool(), (0, 1))}
    for _ in range(3):
        opt.zero_grad()
        (-sequence_logps(model, kl_inputs)[0].mean()).backward()
        opt.step()
    with torch.no_grad():
        lr, kl_lr = logps(""), logps("KL_")
    with torch.no_grad():
        expected = trainer.compute_loss(model, batch).item()
    liked = torch.as_tensor(batch["label"], dtype=torch.bool)
    z0 = kto_reference_point(kl_lr)
    got = kto_loss(lr, liked, z0, beta, w_d, w_u).mean()
    assert liked.any() and (~liked).any() and abs(expected) > 1e-3
    assert z0.item() > 1e-3 and not torch.equal(kl_lr, lr)  # the reference point is live, from other sequences
    assert got.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
