"""The pieces the transformers Trainer needs to minimise bapo's losses: a collator that packs each pair with its base
responses into one row, the per-sequence log-probs of a batch, the Trainer subclass, and its callbacks (metrics file,
progress bar). :mod:`bapo.training.run` puts them together.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from bapo.core.logprobs import (logps_of, pack_groups, packed_logits, packed_logits_parts, packed_logps, pad_batch,
                                per_sequence, sequence_logps)
from bapo.core.losses import LossConfig, PairLogps, preference_loss, token_kl
from bapo.core.losses_more import kto_reference_point
from bapo.io import write_jsonl
from bapo.runtime.reference import Example


class PairCollator:
    """Stacks a batch as one forward pass: B chosen, then B rejected, then B*K base sequences.

    With ``pack`` (the default) each pair is one row ``prompt, chosen, rejected[, base...]``: the prompt is encoded
    once for all its responses (see :func:`bapo.core.logprobs.pack_groups`). Without it, every sequence is its own
    right-padded row.
    """

    def __init__(self, pad_id: int, with_base: bool, pack: bool = True):
        self.pad_id = pad_id
        self.with_base = with_base
        self.pack = pack

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        groups = [[e.chosen, e.rejected, *(e.base if self.with_base else [])] for e in examples]
        batch = {}
        if self.with_base:
            batch["ref_base"] = torch.tensor([e.ref_base for e in examples], dtype=torch.float32)
        if self.pack and all(s.prompt == g[0].prompt for g in groups for s in g):
            batch.update(pack_groups(groups, self.pad_id))
        else:
            seqs = [g[k] for k in range(len(groups[0])) for g in groups]
            batch.update(pad_batch(seqs, self.pad_id))
        batch["ref_chosen"] = torch.tensor([e.ref_chosen for e in examples], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([e.ref_rejected for e in examples], dtype=torch.float32)
        if examples[0].liked is not None:  # unpaired feedback: chosen is the rated answer, rejected a mismatched one
            batch["liked"] = torch.tensor([e.liked for e in examples], dtype=torch.bool)
        return batch


def batch_pair_logps(model, batch: dict[str, torch.Tensor], with_token_kl: bool = False,
                     ref_in_batch: bool = False) -> PairLogps:
    """Run the policy over a collated batch and split its per-sequence log-probs into a :class:`PairLogps`.

    ``ref_in_batch`` takes the reference's log-probs of the base responses from the same batch: the model with its
    LoRA adapter disabled, run once more without gradients (chosen and rejected come from the cache, as for DPO). In
    bfloat16 the cached reference log-probs (computed before training, in other batch shapes) differ from the
    policy's by rounding: at step 0, where the policy is the reference, BAPO's hinge already fired on SmolLM2-135M
    (0.18 nats on average) and pushed on noise. The same batch through the same kernels gives the same numbers: the
    anchor is exactly zero at step 0. The output head runs at the base responses' positions only, in both passes
    (:func:`bapo.core.logprobs.packed_logits_parts`: the same shape, so the same rounding); the reference's head and
    log-softmax over chosen and rejected, which the hinge never reads, are not computed.

    ``with_token_kl`` (method ``kl``; packed batches only) also fills ``base_kl``: the KL of the reference's
    next-token distributions from the policy's, summed over each base response, from that same adapter-disabled pass.
    Either way: one extra forward pass per step, no second model in memory.
    """
    b = batch["ref_chosen"].shape[0]
    packed = "seq" in batch
    base_kl = ref_base = None
    if (with_token_kl or ref_in_batch) and packed:
        at_base = batch["seq"] >= 2 * b
        pair_logits, base_logits = packed_logits_parts(model, batch, [~at_base, at_base])
        with torch.no_grad(), getattr(model, "module", model).disable_adapter():
            ref_logits = packed_logits(model, batch, select=at_base)
        sums, lens = logps_of(pair_logits, batch, ~at_base)
        sums = sums + logps_of(base_logits, batch, at_base)[0]  # disjoint sequences: each sum is one part's, exactly
        if ref_in_batch:
            ref_base = logps_of(ref_logits, batch, at_base)[0][2 * b :]
        if with_token_kl:
            kl = token_kl(torch.log_softmax(ref_logits, -1), torch.log_softmax(base_logits, -1))
            base_kl = per_sequence(kl, batch, select=at_base)
    elif ref_in_batch:  # unpacked rows: the whole batch once more (the rows' shapes are the batch's)
        sums, lens = sequence_logps(model, batch)
        with torch.no_grad(), getattr(model, "module", model).disable_adapter():
            ref_base = sequence_logps(model, batch)[0][2 * b :]
    else:
        sums, lens = packed_logps(model, batch) if packed else sequence_logps(model, batch)
    lens = lens.to(sums.dtype)
    p = PairLogps(sums[:b], sums[b : 2 * b], batch["ref_chosen"], batch["ref_rejected"], lens[:b], lens[b : 2 * b],
                  liked=batch.get("liked"))
    if "ref_base" in batch:
        k = batch["ref_base"].shape[1]
        # base sequences come response-major (all first base responses, then all second...): (K, B) -> (B, K)
        p.base, p.ref_base = sums[2 * b :].view(k, b).T, batch["ref_base"]
        if ref_base is not None:
            p.ref_base = ref_base.view(k, b).T
        p.base_len = lens[2 * b :].view(k, b).T
        if base_kl is not None:
            p.base_kl = base_kl[2 * b :].view(k, b).T
    return p


def shared_reference_point(p: PairLogps) -> None:
    """KTO's reference point z0 over the global batch, every process's mismatched answers together, as TRL gathers
    it: one process's few would make a noisier estimate, and the run would differ from a one-process run of the same
    global batch. Sets ``p.z0``; nothing for pairs or with one process."""
    dist = torch.distributed
    if p.liked is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    logratios = (p.rejected - p.ref_rejected).detach()
    total = torch.stack([logratios.sum(), torch.tensor(float(logratios.numel()), dtype=logratios.dtype,
                                                             device=logratios.device)])
    dist.all_reduce(total)
    p.z0 = kto_reference_point((total[0] / total[1]).reshape(1))


@contextmanager
def lora_autocast(model, dtype: torch.dtype | None):
    """LoRA's branch computed in ``dtype`` (bfloat16) over a base model already in it, its weights staying float32.

    peft casts each LoRA layer's input up to its float32 weights and the sum back down: four full-size copies and
    float32 matmuls per linear layer, forward and backward; on SmolLM2-135M in bfloat16 they took 30% of a training
    step (2026-12-05). Autocast runs the branch in bfloat16 instead (weights cast per call, r x d: small), with
    float32 master weights, gradients and AdamW state: the usual mixed precision. A zero-initialised adapter still
    adds exactly zero, so the in-batch reference's numbers are unchanged. ``dtype`` None: nothing changes.
    """
    if dtype is None:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    device = next(model.parameters()).device.type
    with ExitStack() as stack:
        stack.enter_context(disable_input_dtype_casting(model))
        stack.enter_context(torch.autocast(device, dtype=dtype))
        yield


class PreferenceTrainer(Trainer):
    """The transformers Trainer with bapo's loss; metrics are averaged over the steps between two logs.

    ``autocast_dtype`` (bfloat16 for LoRA over a bfloat16 model) computes the LoRA branch in it: :func:`lora_autocast`.
    """

    def __init__(self, *args, loss_config: LossConfig, ref_in_batch: bool = False,
                 autocast_dtype: torch.dtype | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        self.ref_in_batch = ref_in_batch
        self.autocast_dtype = autocast_dtype
        self.model_accepts_loss_kwargs = False  # the Trainer then scales our loss for gradient accumulation
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with lora_autocast(model, self.autocast_dtype):
            logps = batch_pair_logps(model, inputs, self.loss_config.needs_token_kl, self.ref_in_batch)
        shared_reference_point(logps)
        loss, metrics = preference_loss(logps, self.loss_config)
        # One gather for all metrics, averaged over processes; NaN (a KTO batch without liked or disliked answers)
        # is left out of the means, and a metric NaN everywhere of the logged steps is not logged.
        names = sorted(metrics)
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in names]).reshape(1, -1)
        for k, v in zip(names, self.accelerator.gather(values).nanmean(0).tolist()):
            if not math.isnan(v):
                self._metrics[k].append(v)
        return (loss, {}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update({k: sum(v) / len(v) for k, v in self._metrics.items() if v})
            self._metrics.clear()
        super().log(logs, start_time)


class MetricsFile(TrainerCallback):
    """Per-step metrics as JSONL, rewritten atomically at each log; after ``--resume`` steps past the checkpoint
    are dropped, so the file matches the weights."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        self.rows: list[dict] = []
        if resume_step and path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r.get("step", 0) <= resume_step]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.rows.append({"step": state.global_step, "epoch": round(state.epoch or 0, 4), **logs})
            write_jsonl(self.path, self.rows)


class BarWithMetrics(ProgressCallback):
    """The Trainer's progress bar, showing loss, reward margin and BAPO's anchor gap instead of printing dicts."""

    SHOWN = {"loss": "loss", "rewards/margins": "margin", "rewards/accuracies": "acc", "anchor/gap": "gap"}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, desc="training", dynamic_ncols=True,
                                     initial=state.global_step)
        self.current_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {short: f"{logs[k]:.3g}" for k, short in self.SHOWN.items() if k in logs}
            if shown:
                self.training_bar.set_postfix(shown, refresh=False)
