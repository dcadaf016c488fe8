"""Where a bapo training job's time goes, against the model FLOP utilisation that bench_train.py prints.

    python benchmarks/profile_train.py [--pairs 48] [--method dpo] [--epochs 2] [--batch-size 4]

The same work as ``bench_train.py`` (its seeded synthetic pairs, LoRA r16 on every linear layer, fp32), run in this
process in the phases of ``bapo.training.run.train``: data and model set-up, the reference's log-probs, the training
steps (forward + backward of every micro-batch, timed by wrapping the Trainer's ``training_step``), the optimizer
(AdamW, timed by torch's global optimizer hooks), and the rest (the Trainer's own loop, logging, saving). Then the
torch profiler over one more training step, its operators grouped: matmuls (with their GFLOP/s against the measured
matmul peak), attention, elementwise, copies, other. Positions counted by a hook on the transformer body: padding
included, against the tokens the packed rows hold.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from bench_train import synthetic_pairs  # benchmarks/, beside this script
from common import Counter, matmul_peak_gflops, print_header

CATEGORIES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear"),
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention"),
    "elementwise": ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::pow", "aten::rsqrt",
                    "aten::mean", "aten::neg", "aten::exp", "aten::log", "aten::sum", "aten::where",
                    "aten::masked_fill", "aten::logsumexp", "aten::softmax", "aten::_softmax", "aten::fill_",
                    "aten::zero_", "aten::sigmoid", "aten::gelu", "aten::gather", "aten::index", "aten::index_add",
                    "aten::threshold", "aten::scatter", "aten::clamp", "aten::sqrt", "aten::lerp", "aten::addcmul",
                    "aten::addcdiv", "aten::maximum", "aten::max"),
    "copies": ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::to", "aten::_to_copy",
               "aten::empty", "aten::resize_"),
}


def category(name: str) -> str:
    for cat, keys in CATEGORIES.items():
        if any(k in name for k in keys):
            return cat
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--method", default="dpo")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from bapo.cli import keep_freed_memory
    from bapo.core.tokens import encode_pairs
    from bapo.data.config import DataConfig, renderer
    from bapo.runtime.config import LoraSettings
    from bapo.runtime.models import load_tokenizer, resolve_model
    from bapo.runtime.reference import build_examples, load_reference
    from bapo.training import run as run_module
    from bapo.training.config import TrainConfig
    from bapo.training.trainer import PreferenceTrainer

    keep_freed_memory()  # as the bapo command does
    print_header()
    tmp = Path(tempfile.mkdtemp(prefix="profile_train."))
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(a.pairs, 30, 60, a.seed)))
    cfg = TrainConfig(model=a.model, out=str(tmp / "out"), cache_dir=str(tmp / "cache"),
                      data=DataConfig(path=str(data), holdout=0.0, max_length=1024, max_prompt_length=512),
                      lora=LoraSettings(r=16, alpha=32, dropout=0.0), epochs=a.epochs, batch_size=a.batch_size,
                      lr=1e-4, warmup_ratio=0.0, seed=a.seed, save_steps=10**9, logging_steps=10)
    cfg.loss.method = a.method
    peak = matmul_peak_gflops()
    resolve_model(cfg.model, cfg.cache_dir)  # the one-time GGUF conversion is not part of a job

    phases: dict[str, float] = collections.defaultdict(float)
    t_job = time.perf_counter()
    t = time.perf_counter()
    train_pairs, held = run_module.load_splits(cfg)
    path = resolve_model(cfg.model, cfg.cache_dir)
    render = renderer(load_tokenizer(path), cfg.data)
    enc = encode_pairs(train_pairs, render)
    ref = load_reference(path, render, cfg.cache_dir, cfg.device, cfg.dtype)
    phases["set-up (data, tokenizer, model load)"] = time.perf_counter() - t
    t = time.perf_counter()
    examples = build_examples(ref, train_pairs, enc, cfg.base, cfg.loss.uses_anchor, batch_size=cfg.batch_size * 2,
                              show=False)
    phases["reference: base responses and log-probs"] = time.perf_counter() - t

    body = ref.model.get_decoder()
    n_body = sum(m.weight.numel() for m in body.modules() if isinstance(m, torch.nn.Linear))
    n_head = ref.model.get_output_embeddings().weight.numel()
    counter = Counter(body, ref.model.get_output_embeddings())

    step_time = [0.0]
    original = PreferenceTrainer.training_step

    def timed_step(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            step_time[0] += time.perf_counter() - t0

    opt_time, opt_start = [0.0], [0.0]
    register_optimizer_step_pre_hook(lambda o, args, kw: opt_start.__setitem__(0, time.perf_counter()))
    register_optimizer_step_post_hook(
        lambda o, args, kw: opt_time.__setitem__(0, opt_time[0] + time.perf_counter() - opt_start[0]))
    PreferenceTrainer.training_step = timed_step
    t = time.perf_counter()
    counter.take()  # what the reference's pass above ran is not training
    result = run_module.fit(cfg, ref, train_pairs, held, examples, time.time())
    fit_wall = time.perf_counter() - t
    train_positions, _ = counter.take()
    phases["training steps: forward + backward"] = step_time[0]
    phases["optimizer (AdamW)"] = opt_time[0]
    phases["Trainer loop, logging, saving"] = fit_wall - step_time[0] - opt_time[0]
    job = time.perf_counter() - t_job

    packed = sum(len(c.prompt) + len(c.response) + len(r.response) for c, r in enc)
    passes = a.epochs
    model_flops = (4 * (n_body + n_head) * packed * passes + 2 * (n_body + n_head) * packed)  # steps + reference pass
    print(f"work: {len(train_pairs)} pairs, {a.method}, {result.steps} steps; packed rows hold {packed} tokens per "
          f"epoch; the body ran {train_positions} positions in training ({train_positions / (packed * passes):.2f}x "
          f"the tokens: padding); measured fp32 matmul peak {peak:.1f} GFLOP/s")
    print(f"\n{'phase':<42} {'s':>7} {'share':>6}")
    for name, s in phases.items():
        print(f"{name:<42} {s:>7.1f} {s / job:>6.0%}")
    print(f"{'job':<42} {job:>7.1f}")
    print(f"model FLOP utilisation: steps counted as 4N per token (forward 2N + backward through activations 2N), the "
          f"reference's pass as 2N: {model_flops / 1e9:.0f} GFLOP in {job:.1f} s = {model_flops / job / 1e9:.1f} GFLOP/s "
          f"= {model_flops / job / 1e9 / peak:.0%} of the peak; steps alone (4N): "
          f"{4 * (n_body + n_head) * packed * passes / step_time[0] / 1e9 / peak:.0%}")

    profile_step(ref, cfg, examples, peak)


def profile_step(ref, cfg, examples, peak) -> None:
    """The torch profiler over one training step (forward, backward, no optimizer), operators grouped."""
    from torch.profiler import ProfilerActivity, profile

    from bapo.core.losses import preference_loss
    from bapo.runtime.models import add_lora
    from bapo.training.trainer import PairCollator, batch_pair_logps

    model = add_lora(ref.model, cfg.lora)
    model.train()
    collate = PairCollator(ref.pad_id, cfg.loss.uses_anchor, cfg.pack_prompts)
    micro = cfg.pairs_per_forward
    batches = [collate(examples[i : i + micro]) for i in range(0, cfg.batch_size, micro)]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        t0 = time.perf_counter()
        for b in batches:
            loss, _ = preference_loss(batch_pair_logps(model, b, cfg.loss.needs_token_kl), cfg.loss)
            loss.backward()
        wall = time.perf_counter() - t0
    by_cat: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for e in prof.key_averages():
        c = category(e.key)
        by_cat[c][0] += e.self_cpu_time_total / 1e6
        by_cat[c][1] += e.flops or 0
    total = sum(v[0] for v in by_cat.values())
    print(f"\ntorch profiler, one training step ({cfg.batch_size} pairs as {len(batches)} micro-batches, forward + "
          f"backward; {wall:.2f} s with the profiler on), own time by operator group:")
    for c, (s, flops) in sorted(by_cat.items(), key=lambda x: -x[1][0]):
        rate = f"{flops / s / 1e9:.0f} GFLOP/s = {flops / s / 1e9 / peak:.0%} of the peak" if flops and s else ""
        print(f"  {c:<12} {s:>6.2f} s {s / total:>5.0%}  {rate}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    main()
