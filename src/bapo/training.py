"""``bapo train``: preference pairs in, a personalized LoRA adapter out.

Reads top to bottom like the algorithm: validate the data, let the reference model write its base responses and
score every sequence once (cached), wrap the model with LoRA, then minimise the preference loss plus BAPO's anchor
with the transformers Trainer (so ``accelerate launch`` and its DeepSpeed/FSDP configs work unchanged).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from bapo.base import Example, build_examples, load_reference
from bapo.config import LossConfig, TrainConfig, dump_yaml
from bapo.data import PreferencePair, load_pairs, split_holdout
from bapo.errors import ConfigError
from bapo.io import atomic_write_text, write_json, write_jsonl
from bapo.logprobs import pack_groups, packed_logps, pad_batch, sequence_logps
from bapo.losses import PairLogps, preference_loss
from bapo.models import add_lora, load_tokenizer, resolve_model
from bapo.tokens import Renderer, encode_pairs


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of returning large blocks to the OS at once.

    Every training step frees and re-allocates the same activation-sized buffers; by default glibc unmaps blocks above
    a dynamic threshold and the next step pays page faults to map them again (measured: half the minor faults and a
    few percent of step time on CPU). Same effect as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``, set from
    inside the process. A no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks below 1 GiB from the heap
    except (OSError, AttributeError):
        pass


class PairCollator:
    """Stacks a batch as one forward pass: B chosen, then B rejected, then B*K base sequences.

    With ``pack`` (the default) each pair is one row ``prompt, chosen, rejected[, base...]``: the prompt is encoded
    once for all its responses (see :func:`bapo.logprobs.pack_groups`). Without it, every sequence is its own
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
        return batch


def batch_pair_logps(model, batch: dict[str, torch.Tensor]) -> PairLogps:
    """Run the policy over a collated batch and split its per-sequence log-probs into a :class:`PairLogps`."""
    sums, lens = packed_logps(model, batch) if "seq" in batch else sequence_logps(model, batch)
    lens = lens.to(sums.dtype)
    b = batch["ref_chosen"].shape[0]
    p = PairLogps(sums[:b], sums[b : 2 * b], batch["ref_chosen"], batch["ref_rejected"], lens[:b], lens[b : 2 * b])
    if "ref_base" in batch:
        k = batch["ref_base"].shape[1]
        # base sequences come response-major (all first base responses, then all second...): (K, B) -> (B, K)
        p.base, p.ref_base = sums[2 * b :].view(k, b).T, batch["ref_base"]
        p.base_len = lens[2 * b :].view(k, b).T
    return p


class PreferenceTrainer(Trainer):
    """The transformers Trainer with bapo's loss; metrics are averaged over the steps between two logs."""

    def __init__(self, *args, loss_config: LossConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        self.model_accepts_loss_kwargs = False  # the Trainer then scales our loss for gradient accumulation
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = preference_loss(batch_pair_logps(model, inputs), self.loss_config)
        for k, v in metrics.items():
            self._metrics[k].append(self.accelerator.gather_for_metrics(v.reshape(1)).mean().item())
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


@dataclass
class TrainResult:
    out: Path
    train_examples: int
    holdout_examples: int
    steps: int
    seconds: float


def _check_out(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    if cfg.resume or not out.exists():
        return out
    if (out / "adapter_config.json").exists():
        raise ConfigError(f"out: {out} already holds a trained adapter; choose another --out")
    if (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
        raise ConfigError(f"out: {out} holds checkpoints of an unfinished run; add --resume to continue it")
    return out


def load_splits(cfg: TrainConfig) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The training pairs and the held-out pairs (a separate file, or a seeded split by prompt)."""
    pairs = load_pairs(cfg.data.path, cfg.data.split, cfg.data.user)
    if cfg.data.eval_path:
        return pairs, load_pairs(cfg.data.eval_path, cfg.data.split, cfg.data.user)
    return split_holdout(pairs, cfg.data.holdout, cfg.seed)


def train(cfg: TrainConfig) -> TrainResult:
    """Train one LoRA adapter; the Python twin of ``bapo train``."""
    t0 = time.time()
    cfg.validate()
    keep_freed_memory()
    out = _check_out(cfg)

    # 1. Data, validated and tokenized before any model is loaded.
    train_pairs, held_pairs = load_splits(cfg)
    model_path = resolve_model(cfg.model, cfg.cache_dir)
    tokenizer = load_tokenizer(model_path)
    renderer = Renderer(tokenizer, cfg.data)
    train_enc = encode_pairs(train_pairs, renderer)
    encode_pairs(held_pairs, renderer)  # fail now, not at evaluation time

    # 2. The reference model: base responses and reference log-probs, cached.
    ref = load_reference(model_path, renderer, cfg.cache_dir)
    model, fp = ref.model, ref.fingerprint
    with_base = cfg.loss.uses_anchor
    examples = build_examples(ref, train_pairs, train_enc, cfg.base, with_base, batch_size=cfg.batch_size * 2)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    write_jsonl(out / "train.jsonl", [p.to_record() for p in train_pairs])
    write_jsonl(out / "holdout.jsonl", [p.to_record() for p in held_pairs])
    if with_base:
        write_jsonl(out / "base_responses.jsonl", [
            {"prompt": p.to_record()["prompt"], "base_responses": e.base_texts, "ref_logps": e.ref_base}
            for p, e in zip(train_pairs, examples)])

    # 3. LoRA on the same weights: the reference is never needed again.
    set_seed(cfg.seed)
    micro = cfg.pairs_per_forward
    model = add_lora(model, cfg.lora)
    model.train()
    ckpt_dir = out / "checkpoints"
    last = get_last_checkpoint(str(ckpt_dir)) if cfg.resume and ckpt_dir.exists() else None
    resume_step = int(Path(last).name.split("-")[-1]) if last else 0
    has_tb = importlib.util.find_spec("tensorboard") is not None
    args = TrainingArguments(
        # A step of batch_size pairs runs as batch_size/micro forward-backward passes: the Trainer averages their
        # losses, so the gradient is that of the whole batch while only one micro-batch's activations are alive.
        output_dir=str(ckpt_dir), per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg.grad_accum * (cfg.batch_size // micro),
        learning_rate=cfg.lr, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, lr_scheduler_type="linear", logging_steps=cfg.logging_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed, data_seed=cfg.seed,
        remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=False, report_to=["tensorboard"] if has_tb else "none",
        disable_tqdm=False,
    )
    trainer = PreferenceTrainer(model=model, args=args, train_dataset=examples,
                                data_collator=PairCollator(tokenizer.pad_token_id, with_base, cfg.pack_prompts),
                                loss_config=cfg.loss,
                                callbacks=[MetricsFile(out / "metrics.jsonl", resume_step)])
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(BarWithMetrics())
    trainer.train(resume_from_checkpoint=last)

    # 4. A standard PEFT adapter directory, plus what it took to make it.
    trainer.save_model(str(out))
    result = TrainResult(out, len(examples), len(held_pairs), trainer.state.global_step, time.time() - t0)
    write_json(out / "run.json", {
        "model": cfg.model, "model_path": model_path, "model_fingerprint": fp, "method": cfg.loss.method,
        "train_pairs": result.train_examples, "holdout_pairs": result.holdout_examples, "steps": result.steps,
        "seconds": round(result.seconds, 1),
    })
    return result
