"""Training speed: bapo against TRL's DPOTrainer on the same work, side by side.

    python benchmarks/bench_train.py [--model smollm2-135m-instruct] [--pairs 48] [--epochs 2] [--repeats 2]
                                     [--cases dpo,bapo] [--data pairs.jsonl]

Same model, same LoRA (rank 16, alpha 32, all linear layers), same preference pairs, batch size, learning rate and
number of optimizer steps, in one dtype on CPU (`--dtype`, float32 by default: the figures of docs/PERFORMANCE.md;
bfloat16: both load the model in bfloat16, TRL with its `bf16` mixed precision, bapo with its LoRA autocast). Each run is a fresh subprocess (so peak memory is its own) and the whole
training job is timed, data preparation and reference log-probs included; bapo's base-response generation is timed
separately (TRL has no such step). Runs alternate TRL, bapo, TRL, bapo... Before any timing, both must compute the
same DPO loss on the same first batch from the same (perturbed, so policy != reference) LoRA weights.

TRL twice, as users would: at its defaults (reference log-probs computed on the fly, gradient checkpointing on) and at
its best for a user with memory to spare (precompute_ref_log_probs=True, gradient checkpointing off), apart from the
shared settings above; runs alternate TRL, TRL-best, bapo. Needs the `bench` extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import matmul_peak_gflops  # benchmarks/common.py, beside this script

WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do their "
         "time if will way about many then them write would like so these her long make thing see him two has look "
         "more day could go come did number sound no most people my over know water than call first who may down "
         "side been now find any new work part take get place made live where after back little only round man year "
         "came show every good me give our under name very through just form sentence great think say help low line").split()


def synthetic_pairs(n: int, prompt_words: int, response_words: int, seed: int) -> list[dict]:
    """Seeded pairs of random common words: prompts of ``prompt_words`` and responses of about ``response_words``."""
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "."

    return [{"prompt": [{"role": "user", "content": text(prompt_words)}],
             "chosen": [{"role": "assistant", "content": text(response_words + rng.randint(-8, 8))}],
             "rejected": [{"role": "assistant", "content": text(response_words + rng.randint(-8, 8))}]}
            for _ in range(n)]


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------------
# Workers (each run in its own process)


def worker_trl_best(a) -> dict:
    """TRL set up by a user with memory to spare: reference log-probs computed once before training, and no
    gradient checkpointing."""
    return worker_trl(a, best=True)


def worker_trl(a, best: bool = False) -> dict:
    import datasets
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    from bapo.runtime.models import load_model, load_tokenizer

    rows = [json.loads(x) for x in Path(a.data).read_text().splitlines()]
    model, tok = load_model(a.model_path, "cpu", a.dtype), load_tokenizer(a.model_path)
    set_seed(a.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, per_device_train_batch_size=a.batch_size, learning_rate=a.lr,
                         num_train_epochs=a.epochs, beta=0.1, loss_type=["sigmoid"], max_length=1024,
                         report_to="none", save_strategy="no", logging_steps=10, seed=a.seed, use_cpu=True,
                         dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type="linear",
                         bf16=a.dtype == "bfloat16",
                         **({"precompute_ref_log_probs": True, "gradient_checkpointing": False} if best else {}))
        trainer = DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tok, peft_config=lora_config())
        trainer.train()
        steps = trainer.state.global_step
    return {"wall": time.perf_counter() - t0, "steps": steps, "rss_mb": peak_rss_mb()}


def worker_bapo(a) -> dict:
    from bapo.cli import keep_freed_memory
    from bapo.runtime.reference import open_reference
    from bapo.data.config import DataConfig
    from bapo.runtime.config import LoraSettings
    from bapo.training.config import TrainConfig
    from bapo.data.pairs import load_pairs
    from bapo.training.run import train

    keep_freed_memory()  # as the bapo command does (a library call leaves the allocator alone)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model=a.model_path, out=f"{tmp}/out", cache_dir=f"{tmp}/cache",
                          data=DataConfig(path=a.data, holdout=0.0, max_length=1024, max_prompt_length=512),
                          lora=LoraSettings(r=16, alpha=32, dropout=0.0), epochs=a.epochs, batch_size=a.batch_size,
                          lr=a.lr, warmup_ratio=0.0, seed=a.seed, save_steps=10**9, logging_steps=10,
                          dtype=a.dtype, device="cpu")
        cfg.loss.method = a.case
        cfg.base.max_new_tokens = a.base_tokens
        gen = 0.0
        if a.case == "bapo":  # the base-response step, timed on its own
            pairs = load_pairs(a.data)
            ref = open_reference(a.model_path, cfg.data.max_length, cfg.data.max_prompt_length, cfg.cache_dir,
                                 "cpu", a.dtype)
            t0 = time.perf_counter()
            ref.generate(list({p.prompt_key: p.messages for p in pairs}.values()), cfg.base, show=False)
            gen = time.perf_counter() - t0
            del ref
        t0 = time.perf_counter()
        res = train(cfg)
        wall = time.perf_counter() - t0
        base = [json.loads(x) for x in Path(cfg.out, "base_responses.jsonl").read_text().splitlines()] \
            if a.case == "bapo" else []
    return {"wall": wall, "steps": res.steps, "rss_mb": peak_rss_mb(), "gen_wall": gen,
            "base_texts": [b["base_responses"][0] for b in base]}


def worker_check(a) -> dict:
    """Both implementations' DPO loss on TRL's first batch, from the same perturbed LoRA weights."""
    import datasets
    import torch
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    from bapo.core.losses import LossConfig
    from bapo.core.logprobs import sequence_logps
    from bapo.core.losses import PairLogps, preference_loss
    from bapo.runtime.models import load_model, load_tokenizer

    rows = [json.loads(x) for x in Path(a.data).read_text().splitlines()]
    tok = load_tokenizer(a.model_path)
    set_seed(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(output_dir=tmp, per_device_train_batch_size=a.batch_size, beta=0.1, loss_type=["sigmoid"],
                         max_length=1024, report_to="none", use_cpu=True, seed=a.seed, dataloader_num_workers=0)
        # A fresh adapter (so TRL's reference is the adapter-disabled base), then moved off zero: policy != reference.
        trainer = DPOTrainer(model=load_model(a.model_path, "cpu", a.dtype), args=args, processing_class=tok,
                             train_dataset=datasets.Dataset.from_list(rows), peft_config=lora_config())
        model = trainer.model
        g = torch.Generator().manual_seed(a.seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        batch = next(iter(trainer.get_train_dataloader()))
        model.eval()
        with torch.no_grad():
            trl_loss = trainer.compute_loss(trainer.model, batch).item()
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                      "target_mask": torch.nn.functional.pad(batch["completion_mask"][:, 1:].bool(), (0, 1))}
            pol, n = sequence_logps(model, inputs)
            with model.disable_adapter():
                ref, _ = sequence_logps(model, inputs)
    b = pol.shape[0] // 2
    loss, _ = preference_loss(PairLogps(pol[:b], pol[b:], ref[:b], ref[b:], n[:b].float(), n[b:].float()),
                              LossConfig(method="dpo", beta=0.1))
    return {"trl": trl_loss, "bapo": loss.item()}


# ---------------------------------------------------------------------------------------------------------------
# Driver


def run_worker(kind: str, a, case: str = "dpo") -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--case", case, "--model-path", a.model_path, "--data", a.data,
           "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--epochs", str(a.epochs), "--seed", str(a.seed),
           "--base-tokens", str(a.base_tokens), "--dtype", a.dtype]
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{kind} worker failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="", help="TRL-format JSONL pairs (default: a seeded synthetic set)")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--prompt-words", type=int, default=30)
    ap.add_argument("--response-words", type=int, default=60)
    ap.add_argument("--base-tokens", type=int, default=64, help="max_new_tokens of bapo's base responses")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cases", default="dpo,bapo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="both sides compute in it (float32: the figures of docs/PERFORMANCE.md)")
    ap.add_argument("--out", default="", help="also write the figures as JSON here")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--case", default="dpo", help=argparse.SUPPRESS)
    ap.add_argument("--model-path", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        out = {"trl": worker_trl, "trl-best": worker_trl_best, "bapo": worker_bapo, "check": worker_check}[a.worker](a)
        print(json.dumps(out))
        return

    import torch

    from bapo.data.config import DataConfig, renderer

    from bapo.training.config import TrainConfig
    from bapo.data.pairs import load_pairs
    from bapo.runtime.models import load_tokenizer, resolve_model
    from bapo.core.tokens import encode_pairs

    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.platform()}; {os.cpu_count()} CPUs; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; python {platform.python_version()}")
    import transformers
    import trl

    print(f"libraries: transformers {transformers.__version__}, trl {trl.__version__}")
    a.model_path = resolve_model(a.model)
    tmpdir = tempfile.mkdtemp(prefix="bench_train.")
    if not a.data:
        a.data = str(Path(tmpdir) / "pairs.jsonl")
        rows = synthetic_pairs(a.pairs, a.prompt_words, a.response_words, a.seed)
        Path(a.data).write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs(a.data)
    enc = encode_pairs(pairs, renderer(load_tokenizer(a.model_path), DataConfig(max_length=1024, max_prompt_length=512)))
    p_len = sum(len(c.prompt) for c, _ in enc) / len(enc)
    r_len = sum(len(c.response) + len(r.response) for c, r in enc) / (2 * len(enc))
    pair_tokens = sum(len(c.ids) + len(r.ids) for c, r in enc)
    # what bapo's packed rows actually run through the model: each prompt once, then every response
    packed_tokens = sum(len(c.prompt) + len(c.response) + len(r.response) for c, r in enc)
    steps = int(-(-len(pairs) // a.batch_size) * a.epochs)
    print(f"work: {len(pairs)} pairs, prompt {p_len:.0f} tokens, responses {r_len:.0f} tokens on average; batch "
          f"{a.batch_size}, lr {a.lr}, {a.epochs:g} epochs = {steps} optimizer steps; LoRA r16/alpha32 all-linear; {a.dtype}")
    print(f"bapo runs each step as micro-batches of {TrainConfig(batch_size=a.batch_size).pairs_per_forward} pairs "
          "(same gradient, less activation memory); TRL as one batch with its default gradient checkpointing")

    check = run_worker("check", a)
    diff = abs(check["trl"] - check["bapo"])
    print(f"check: first-batch DPO loss TRL {check['trl']:.6f}, bapo {check['bapo']:.6f}, |diff| {diff:.2e}")
    tolerance = 1e-4 if a.dtype == "float32" else 2e-2  # bfloat16: two sets of kernels, each rounding on its own
    if diff > tolerance:
        sys.exit(f"FAIL: the two implementations disagree on the loss (over {tolerance:g}); timings would not compare "
                 "the same work")

    peak = matmul_peak_gflops()
    n_params = _body_params(a.model_path)
    results = {"check": check, "peak_gflops": peak, "cases": {}}
    for case in a.cases.split(","):
        print(f"\ncase {case} (bapo) against TRL sigmoid at its defaults (trl) and at its best (trl-best: "
              "precompute_ref_log_probs, no gradient checkpointing)")
        print(f"{'rep':>3} {'impl':>8} {'wall s':>8} {'pairs/s':>8} {'tok/s':>8} {'peak MB':>8} {'ratio':>6}")
        rows = []
        for rep in range(a.repeats):
            t = run_worker("trl", a)
            tb = run_worker("trl-best", a)
            b = run_worker("bapo", a, case)
            extra = extra_packed = 0
            if case == "bapo":  # the base sequence of each pair is trained on too
                extra, extra_packed = _base_tokens(a, pairs, b["base_texts"])
            b["processed_s"] = (packed_tokens + extra_packed) * a.epochs / b["wall"]
            for name, r, tokens in (("trl", t, pair_tokens), ("trl-best", tb, pair_tokens), ("bapo", b, pair_tokens + extra)):
                r["pairs_s"] = len(pairs) * a.epochs / r["wall"]
                r["tokens_s"] = tokens * a.epochs / r["wall"]
            ratio, ratio_best = b["pairs_s"] / t["pairs_s"], b["pairs_s"] / tb["pairs_s"]
            rows.append({"trl": t, "trl-best": tb, "bapo": {k: v for k, v in b.items() if k != "base_texts"},
                         "ratio": ratio, "ratio_best": ratio_best})
            for name, r in (("trl", t), ("trl-best", tb), ("bapo", b)):
                shown = f"{ratio:.2f}x/{ratio_best:.2f}x" if name == "bapo" else ""
                print(f"{rep + 1:>3} {name:>8} {r['wall']:>8.1f} {r['pairs_s']:>8.2f} {r['tokens_s']:>8.0f} "
                      f"{r['rss_mb']:>8.0f} {shown:>6}")
            if case == "bapo":
                print(f"    base-response generation (separate, once per prompt): {b['gen_wall']:.1f} s")
        best = sorted(r["ratio_best"] for r in rows)
        mem_best = [r["bapo"]["rss_mb"] / r["trl-best"]["rss_mb"] for r in rows]
        print(f"ratio bapo/TRL-at-its-best pairs/s min/median/max: {best[0]:.2f}x / {statistics.median(best):.2f}x / "
              f"{best[-1]:.2f}x; peak memory bapo/TRL-at-its-best median {statistics.median(mem_best):.2f}")
        ratios = sorted(r["ratio"] for r in rows)
        mem = [r["bapo"]["rss_mb"] / r["trl"]["rss_mb"] for r in rows]
        tok_s = statistics.median(r["bapo"]["processed_s"] for r in rows)
        flops_per_token = 4 * n_params  # LoRA: forward 2N + backward through activations 2N; frozen weights get no grads
        mfu = tok_s * flops_per_token / (peak * 1e9)
        print(f"ratio bapo/TRL pairs/s min/median/max: {ratios[0]:.2f}x / {statistics.median(ratios):.2f}x / "
              f"{ratios[-1]:.2f}x; peak memory bapo/TRL median {statistics.median(mem):.2f}")
        print(f"bapo model FLOP utilisation: ~{flops_per_token / 1e6:.0f} MFLOP per processed token (prompts once) x "
              f"{tok_s:.0f} tok/s "
              f"= {tok_s * flops_per_token / 1e9:.1f} GFLOP/s of a measured {peak:.0f} GFLOP/s matmul peak = {mfu:.1%}")
        results["cases"][case] = rows
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))


def _body_params(model_path: str) -> int:
    """Parameters that do matmul work per token: everything but the input embedding (a lookup)."""
    from bapo.runtime.models import load_model

    m = load_model(model_path, "cpu", "float32")
    emb = m.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in m.parameters())
    tied = m.get_output_embeddings().weight is m.get_input_embeddings().weight
    return total if tied else total - emb  # a tied head is counted once, as the output projection


def _base_tokens(a, pairs, texts) -> tuple[int, int]:
    """Tokens of the base sequences: as whole sequences, and as the responses that packing adds."""
    from bapo.data.config import DataConfig, renderer
    from bapo.runtime.models import load_tokenizer

    r = renderer(load_tokenizer(a.model_path), DataConfig(max_length=1024, max_prompt_length=512))
    enc = [r.encode(p.messages, t, "", "", [], truncate=True) for p, t in zip(pairs, texts)]
    return sum(len(e.ids) for e in enc), sum(len(e.response) for e in enc)


if __name__ == "__main__":
    main()
