"""``bapo train``: preference pairs in, a personalized LoRA adapter out.

Reads top to bottom like the algorithm: validate the data, let the reference model write its base responses and
score every sequence once (cached), wrap the model with LoRA, then minimise the preference loss plus BAPO's anchor
with the transformers Trainer (so ``accelerate launch`` and its DeepSpeed/FSDP configs work unchanged).
"""

from __future__ import annotations

import importlib.util
import json
import resource
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback

from bapo.data.config import renderer
from bapo.errors import ConfigError
from bapo.io import atomic_write_text, move_files_into, write_json, write_jsonl
from bapo.options import dump_yaml
from bapo.runtime import distributed
from bapo.runtime.models import add_lora, dtype_name, load_tokenizer, resolve_device, resolve_dtype, resolve_model
from bapo.runtime.reference import Example, Reference, build_examples, load_reference
from bapo.training.config import TrainConfig
from bapo.training.items import Item, check_encodable, encode_items, load_splits
from bapo.training.trainer import BarWithMetrics, MetricsFile, PairCollator, PreferenceTrainer


@dataclass
class TrainResult:
    """What a training run produced: where, from how many pairs, in how many steps and seconds."""

    out: Path
    train_examples: int
    holdout_examples: int
    steps: int
    seconds: float
    budget_scale: float | None = None  # the scale a forgetting budget built in (bapo.budget); None without one


def _check_out(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    if cfg.resume or not out.exists():
        return out
    if (out / "adapter_config.json").exists() or (out / "run.json").exists():
        raise ConfigError(f"out: {out} already holds a trained adapter or model; choose another --out")
    if (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
        raise ConfigError(f"out: {out} holds checkpoints of an unfinished run; add --resume to continue it")
    return out


def training_arguments(cfg: TrainConfig, ckpt_dir: Path) -> TrainingArguments:
    """The transformers Trainer's arguments for ``cfg`` (checkpoints in ``ckpt_dir``)."""
    micro = cfg.pairs_per_forward
    has_tb = importlib.util.find_spec("tensorboard") is not None
    return TrainingArguments(
        # A step of batch_size pairs runs as batch_size/micro forward-backward passes: the Trainer averages their
        # losses, so the gradient is that of the whole batch while only one micro-batch's activations are alive.
        output_dir=str(ckpt_dir), per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg.grad_accum * (cfg.batch_size // micro),
        # A float warmup_steps below 1 is a fraction of all steps (transformers >= 5, pinned in pyproject.toml).
        learning_rate=cfg.lr, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, lr_scheduler_type="linear", logging_steps=cfg.logging_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed, data_seed=cfg.seed,
        remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=False,
        report_to=["tensorboard"] if has_tb else "none", disable_tqdm=False,
        use_cpu=resolve_device(cfg.device).type == "cpu", **_mixed_precision(cfg),
    )


def _mixed_precision(cfg: TrainConfig) -> dict[str, bool]:
    """Full fine-tuning keeps float32 weights for AdamW and autocasts to the dtype asked for; LoRA loads the base
    model in that dtype (peft keeps the adapter in float32), so it needs no autocast."""
    if cfg.finetune != "full":
        return {}
    dtype = compute_dtype(cfg)
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def reference_in_batch(cfg: TrainConfig) -> bool:
    """Whether training takes the reference's log-probs from its own batch (``reference_logps``; see
    :func:`bapo.training.trainer.batch_pair_logps`): ``auto`` does for BAPO's anchor where LoRA trains in a 16-bit
    dtype. There cached numbers from other batch shapes differ from the policy's by rounding, and the hinge
    ``max(0, ref - policy)`` turns that symmetric noise into a push on every base response (0.18 nats at step 0 on
    SmolLM2-135M in bfloat16). The pairwise losses compare differences through a smooth function, where the same
    noise averages out, so they keep the cache and its saved forward pass per step; in float32 the cache agrees with
    the policy to ~1e-6 nats anyway."""
    if cfg.reference_logps != "auto":
        return cfg.reference_logps == "in-batch"
    return cfg.finetune == "lora" and compute_dtype(cfg) != torch.float32 and cfg.loss.reads_reference_base


# The gap, in nats per token, between a cached reference's log-prob of a base response and the policy's at step 0:
# rounding from other batch shapes alone. Measured 2026-12-06 (docs/losses.md): largest batch mean over 16 steps of
# 4 pairs, float32 8.8e-7 (SmolLM2-135M; up to 1.2e-7 on tiny Llama 3, Qwen 2.5/3, Mistral, Gemma 2/3, Phi-3, OLMo 2
# models), bfloat16 2.0e-2 (SmolLM2-135M; 5.4e-5 on the tiny ones). The tolerances are ~10x and ~2.5x those.
ROUNDING_PER_TOKEN = {torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 5e-2}


def anchor_tolerance(cfg: TrainConfig) -> float:
    """``loss.anchor_tolerance`` resolved: as given, or (auto) 0 where the reference is computed in the training
    batch, which makes it equal the policy bit for bit at step 0, and the dtype's rounding where it is cached."""
    if cfg.loss.anchor_tolerance >= 0:
        return cfg.loss.anchor_tolerance
    return 0.0 if reference_in_batch(cfg) else ROUNDING_PER_TOKEN.get(compute_dtype(cfg), 5e-2)


def lora_autocast_dtype(cfg: TrainConfig) -> torch.dtype | None:
    """bfloat16 where LoRA trains over a bfloat16 model (its branch then computes in bfloat16, see
    :func:`bapo.training.trainer.lora_autocast`); None elsewhere. Not float16: its narrow range would need a loss
    scaler for the branch's gradients, so there peft's float32 branch stays."""
    return torch.bfloat16 if cfg.finetune == "lora" and compute_dtype(cfg) == torch.bfloat16 else None


def compute_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype training computes in (full fine-tuning: float32 weights autocast to it)."""
    return resolve_dtype(cfg.dtype, resolve_device(cfg.device))


def train(cfg: TrainConfig) -> TrainResult:
    """Train one LoRA adapter (or, with ``finetune: full``, every weight); the Python twin of ``bapo train``."""
    t0 = time.time()
    cfg.validate()
    _check_out(cfg)
    ref, train_pairs, held_pairs, examples = reference_step(cfg)
    return fit(cfg, ref, train_pairs, held_pairs, examples, t0)


def reference_step(cfg: TrainConfig, ref: Reference | None = None) -> tuple[Reference, list[Item], list[Item],
                                                                              list[Example]]:
    """Steps 1 and 2 of a run: its pairs, and their base responses and reference log-probs (cached). ``ref``: a
    reference already loaded for the same model, dtype and data options (a study's cells share one). Run alone
    first, it fills the cache a run's training then reads: tasks that train side by side then compute nothing of the
    reference's, so none of them caches numbers from batches that depend on which task came first."""
    # 1. Data, validated and tokenized before any model is loaded.
    train_pairs, held_pairs = load_splits(cfg)
    model_path = resolve_model(cfg.model, cfg.cache_dir)
    render = renderer(load_tokenizer(model_path), cfg.data) if ref is None else ref.renderer
    train_enc = encode_items(train_pairs, render, cfg.seed)
    check_encodable(held_pairs, render)  # fail now, not at evaluation time

    # 2. The reference model: base responses and reference log-probs, cached.
    if ref is None:
        ref = load_reference(model_path, render, cfg.cache_dir, cfg.device,
                             "float32" if cfg.finetune == "full" else cfg.dtype, cfg.engine)
    examples = build_examples(ref, train_pairs, train_enc, cfg.base, cfg.loss.uses_anchor,
                              batch_size=cfg.batch_size * 2, base_logps=not reference_in_batch(cfg))
    return ref, train_pairs, held_pairs, examples


def fit(cfg: TrainConfig, ref: Reference, train_pairs: list[Item], held_pairs: list[Item],
        examples: list[Example], t0: float) -> TrainResult:
    """Steps 3 and 4 of a run: train on ``examples`` over the reference's own model and write the output directory.
    With LoRA the adapter is taken off afterwards, so ``ref.model`` is the plain base model again (the next user of
    ``bapo train --per-user`` starts from it)."""
    out = Path(cfg.out)
    with_base = cfg.loss.uses_anchor
    if distributed.is_main():
        write_run_files(cfg, train_pairs, held_pairs, examples)

    # 3. LoRA on the same weights (or every weight): the reference is never needed again.
    set_seed(cfg.seed)
    model = add_lora(ref.model, cfg.lora) if cfg.finetune == "lora" else ref.model.requires_grad_(True)
    model.train()
    ckpt_dir = out / "checkpoints"
    last = last_complete_checkpoint(ckpt_dir) if cfg.resume else None
    resume_step = int(Path(last).name.split("-")[-1]) if last else 0
    trainer = PreferenceTrainer(model=model, args=training_arguments(cfg, ckpt_dir), train_dataset=examples,
                                data_collator=PairCollator(ref.pad_id, with_base, cfg.pack_prompts),
                                loss_config=replace(cfg.loss, anchor_tolerance=anchor_tolerance(cfg)),
                                ref_in_batch=reference_in_batch(cfg),
                                autocast_dtype=lora_autocast_dtype(cfg), callbacks=[MetricsFile(out / "metrics.jsonl", resume_step)])
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(BarWithMetrics())
    trainer.train(resume_from_checkpoint=last)

    # 4. A standard PEFT adapter directory (or Hugging Face model directory), plus what it took to make it.
    # The Trainer writes files in place: into a fresh folder beside OUT, then each renamed into OUT (a kill leaves
    # every file of OUT whole; run.json, written last, marks the run finished).
    staging = out / ".saving"
    if distributed.is_main():
        shutil.rmtree(staging, ignore_errors=True)
    distributed.barrier()  # a slower process must not clear the folder the main one is already saving into
    trainer.save_model(str(staging))  # by the main process only
    if distributed.is_main():
        if cfg.finetune == "full":
            ref.tokenizer.save_pretrained(str(staging))  # so from_pretrained(out) opens a whole model
        move_files_into(staging, out)
    if cfg.finetune == "lora":
        ref.model = model.unload().eval()  # the LoRA layers out, the base weights as they were
    result = TrainResult(out, len(examples), len(held_pairs), trainer.state.global_step, time.time() - t0)
    computed = distributed.gather(dict(ref.computed))  # what each process generated and scored itself
    if not distributed.is_main():
        return result
    write_json(out / "run.json", {
        "model": cfg.model, "model_path": str(getattr(ref.model.config, "_name_or_path", "")),
        "model_fingerprint": ref.fingerprint, "method": cfg.loss.method, "finetune": cfg.finetune,
        "peak_rss_mb": peak_rss_mb(), "train_pairs": result.train_examples,
        "train_data": "rated answers" if cfg.loss.unpaired else "pairs",
        "holdout_pairs": result.holdout_examples, "steps": result.steps, "seconds": round(result.seconds, 1),
        "processes": distributed.world_size(), "reference_work_by_rank": computed,
        "dtype": dtype_name(compute_dtype(cfg)), "dtype_asked": cfg.dtype,
        "reference_logps": "in-batch" if reference_in_batch(cfg) else "cached", "anchor_tolerance": anchor_tolerance(cfg),
        "chat_template": {"enable_thinking": cfg.data.enable_thinking, "system_folded": ref.renderer.fold_system},
    })
    return result


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest checkpoint the Trainer finished writing (its ``trainer_state.json``, written last, parses): a kill
    or a full disk during a save leaves a partial folder, which resuming passes over."""
    done = []
    for d in ckpt_dir.glob("checkpoint-*") if ckpt_dir.exists() else []:
        try:
            json.loads((d / "trainer_state.json").read_text())
            done.append((int(d.name.split("-")[-1]), str(d)))
        except (OSError, ValueError):
            continue
    return max(done)[1] if done else None


def write_run_files(cfg: TrainConfig, train_pairs: list[Item], held_pairs: list[Item],
                    examples: list[Example]) -> None:
    """config.yaml, the train/holdout split and the base responses, written before training starts."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    write_jsonl(out / "train.jsonl", [p.to_record() for p in train_pairs])
    write_jsonl(out / "holdout.jsonl", [p.to_record() for p in held_pairs])
    if cfg.loss.uses_anchor:
        write_jsonl(out / "base_responses.jsonl", [
            {"prompt": p.to_record()["prompt"], "base_responses": e.base_texts,
             **({} if reference_in_batch(cfg) else {"ref_logps": e.ref_base})}  # in-batch: computed while training
            for p, e in zip(train_pairs, examples)])


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB), for run.json."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
