"""bfloat16 against float32 on this machine: scoring, generation and a training step, in alternating fresh processes.

    python benchmarks/bench_dtype.py [--model smollm2-135m-instruct] [--repeats 3] [--cases score,generate,...]

Each repeat runs every case once per dtype, float32 then bfloat16, each in a fresh process (its own model load, its
own caches, nothing shared), so a slow minute of the machine falls on both sides. Every case is what bapo itself
runs, on the seeded synthetic pairs of ``bench_train.py`` (prompts of ~30 words, responses of ~60):

- ``score``: ``bapo.core.logprobs.score`` (what evaluation and the reference's log-probs run) over 128 responses,
  16 at a time, prompts packed; items/s.
- ``generate``: greedy generation, 16 prompts in one left-padded batch, exactly 64 new tokens each; new tokens/s.
- ``generate-adapter``: the same through a LoRA adapter (r 16, every linear layer) applied as evaluation applies it
  (``bapo.runtime.adapters.applied``: merged in float32, a separate branch in bfloat16).
- ``train-dpo`` / ``train-bapo``: optimizer steps of 4 pairs (forward, backward, AdamW) as ``bapo train`` runs them:
  the trainer's ``batch_pair_logps`` under its LoRA autocast, the reference's log-probs where ``--reference-logps
  auto`` takes them (cached, or for BAPO in bfloat16 from the batch itself); s/step, the first step untimed.
  ``train-bapo-cached`` (not run by default): BAPO with every reference log-prob from the cache, which prices the
  in-batch reference pass.

Prints the machine, the command, each dtype's min / median / max, and bfloat16's speed-up per repeat (min / median /
max of the paired ratios), with the measured matmul peak of each dtype (2048 x 2048, the threads torch uses).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("score", "generate", "generate-adapter", "train-dpo", "train-bapo")
UNITS = {"score": "items/s", "generate": "tokens/s", "generate-adapter": "tokens/s", "train-dpo": "s/step",
         "train-bapo": "s/step", "train-bapo-cached": "s/step"}


def matmul_peak(dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s of the best of repeated n x n matmuls in ``dtype``."""
    import torch

    x, y = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        x @ y
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        x @ y
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def worker(case: str, model_name: str, dtype: str) -> float:
    """One measurement of ``case`` in ``dtype``, in this (fresh) process."""
    import torch

    from bench_train import synthetic_pairs

    from bapo.data.config import DataConfig, renderer
    from bapo.runtime.models import load_model, load_tokenizer, resolve_model

    torch.manual_seed(0)
    path = resolve_model(model_name, None)
    tok = load_tokenizer(path)
    render = renderer(tok, DataConfig())
    rows = synthetic_pairs(128, 30, 60, seed=0)
    model = load_model(path, "cpu", dtype)
    if case == "score":
        from bapo.core.logprobs import score

        seqs = [render.encode(r["prompt"], r[side][0]["content"], "x", "c", []) for r in rows[:64]
                for side in ("chosen", "rejected")]
        score(model, seqs[:16], tok.pad_token_id)  # warm-up
        t = time.perf_counter()
        score(model, seqs, tok.pad_token_id, batch_size=16)
        return len(seqs) / (time.perf_counter() - t)
    if case.startswith("generate"):
        from contextlib import nullcontext

        from bapo.runtime.adapters import applied
        from bapo.runtime.generate import left_pad

        ctx = nullcontext(model)
        if case == "generate-adapter":
            ctx = applied(model, _random_adapter(model_name), 1.0)
        ids, attn = left_pad([render.prompt_ids(r["prompt"]) for r in rows[:16]], tok.pad_token_id)
        with ctx as m, torch.no_grad():
            kw = dict(attention_mask=attn, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                      pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
            m.generate(input_ids=ids[:2], **{**kw, "attention_mask": attn[:2], "max_new_tokens": 4,
                                            "min_new_tokens": 4})  # warm-up
            t = time.perf_counter()
            out = m.generate(input_ids=ids, **kw)
            wall = time.perf_counter() - t
        return (out.shape[1] - ids.shape[1]) * ids.shape[0] / wall
    if case.startswith("train"):
        return _train_step_seconds(path, render, rows[:20], case.split("-")[1], dtype, model, case.endswith("cached"))
    raise ValueError(case)


def _random_adapter(model_name: str) -> str:
    """A LoRA adapter (r 16, every linear layer) with seeded random weights, saved once per process."""
    import torch

    from bapo.runtime.config import LoraSettings
    from bapo.runtime.models import add_lora, load_model, resolve_model

    out = tempfile.mkdtemp(prefix="bench_dtype.")
    torch.manual_seed(1)
    model = add_lora(load_model(resolve_model(model_name, None), "cpu", "float32"), LoraSettings(r=16, alpha=32))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    model.save_pretrained(out)
    return out


def _train_step_seconds(path, render, rows, method: str, dtype: str, model, cached: bool = False) -> float:
    import torch

    from bapo.core.losses import preference_loss
    from bapo.core.tokens import encode_pairs
    from bapo.data.pairs import load_pairs
    from bapo.runtime.config import LoraSettings
    from bapo.runtime.models import add_lora
    from bapo.data.config import DataConfig
    from bapo.runtime.reference import build_examples, load_reference
    from bapo.training.config import TrainConfig
    from bapo.training.run import lora_autocast_dtype, reference_in_batch
    from bapo.training.trainer import PairCollator, batch_pair_logps, lora_autocast

    tmp = Path(tempfile.mkdtemp(prefix="bench_dtype."))
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(model=str(path), data=DataConfig(path=str(data), holdout=0.0), lora=LoraSettings(r=16, alpha=32, dropout=0.0), batch_size=4, dtype=dtype,
        device="cpu", cache_dir=str(tmp / "cache"))
    cfg.loss.method = method
    if cached:
        cfg.reference_logps = "cached"
    pairs = load_pairs(str(data))
    del model  # the reference loads its own
    ref = load_reference(path, render, cfg.cache_dir, "cpu", dtype)
    examples = build_examples(ref, pairs, encode_pairs(pairs, render), cfg.base, cfg.loss.uses_anchor, batch_size=8,
                              show=False)
    model = add_lora(ref.model, cfg.lora)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    collate = PairCollator(ref.pad_id, cfg.loss.uses_anchor)
    batches = [collate(examples[i:i + 4]) for i in range(0, len(examples) - 3, 4)]
    in_batch, autocast = reference_in_batch(cfg), lora_autocast_dtype(cfg)
    times = []
    for b in batches:
        t = time.perf_counter()
        with lora_autocast(model, autocast):
            logps = batch_pair_logps(model, b, cfg.loss.needs_token_kl, in_batch)
        loss, _ = preference_loss(logps, cfg.loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return statistics.mean(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "DTYPE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps({"value": worker(a.worker[0], a.model, a.worker[1])}))
        return

    import torch

    from common import print_header

    print_header()
    print(f"matmul peak, 2048 x 2048: float32 {matmul_peak(torch.float32):.0f} GFLOP/s, "
          f"bfloat16 {matmul_peak(torch.bfloat16):.0f} GFLOP/s")
    cases = a.cases.split(",")
    values: dict[tuple[str, str], list[float]] = {(c, d): [] for c in cases for d in ("float32", "bfloat16")}
    for r in range(a.repeats):
        for c in cases:
            for d in ("float32", "bfloat16"):
                out = subprocess.run([sys.executable, __file__, "--model", a.model, "--worker", c, d],
                                     capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
                if out.returncode:
                    sys.exit(f"{c} in {d} failed:\n{out.stderr[-3000:]}")
                v = json.loads(out.stdout.strip().splitlines()[-1])["value"]
                values[(c, d)].append(v)
                print(f"repeat {r + 1}: {c:<17} {d:<9} {v:8.2f} {UNITS[c]}", flush=True)
    print(f"\n{'case':<17} {'unit':<9} {'float32 min/med/max':>24} {'bfloat16 min/med/max':>24} "
          f"{'bf16 speed-up min/med/max':>26}")
    for c in cases:
        f32, b16 = values[(c, "float32")], values[(c, "bfloat16")]
        ratios = sorted((f / b) if UNITS[c] == "s/step" else (b / f) for f, b in zip(f32, b16))

        def mmm(v, fmt="{:.2f}"):
            v = sorted(v)
            return "/".join(fmt.format(x) for x in (v[0], statistics.median(v), v[-1]))
        print(f"{c:<17} {UNITS[c]:<9} {mmm(f32):>24} {mmm(b16):>24} {mmm(ratios, '{:.2f}x'):>26}")


if __name__ == "__main__":
    main()
