"""Multiple-choice scoring speed: bapo's batched scorer against a plain one-question-at-a-time loop.

    python benchmarks/bench_eval.py [--model smollm2-135m-instruct] [--items 100] [--repeats 3]
    python benchmarks/bench_eval.py --adapter DIR   # an adapter scored merged into the weights vs. unmerged
    python benchmarks/bench_eval.py --against lm-eval --items 200 --repeats 3   # vs lm-evaluation-harness

Both score the same questions of the shipped knowledge set (or --data, llm-foundry JSONL) with the same model; the
plain loop runs one forward pass per choice with full logits, as a straightforward implementation would. The two
must give the same accuracy before any timing counts. Prints the machine, the command, items/s of each, and the
speed-up per repeat (A B A B ...).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from common import matmul_peak_gflops, print_header, print_speedups  # benchmarks/common.py, beside this script


def plain_loop(model, tok, items) -> list[float]:
    correct = []
    with torch.no_grad():
        for it in items:
            ctx = tok(it.context)["input_ids"]
            scores = []
            for c in it.choices:
                ids = ctx + tok(" " + c, add_special_tokens=False)["input_ids"]
                lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                scores.append(sum(lp[t - 1, ids[t]].item() for t in range(len(ctx), len(ids))))
            correct.append(float(scores.index(max(scores)) == it.gold))
    return correct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the model's dtype (float32: the figures of docs/PERFORMANCE.md)")
    ap.add_argument("--data", default="package:knowledge_mc.jsonl")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--adapter", default="", help="compare `bapo eval`'s merged and unmerged scoring of this adapter")
    ap.add_argument("--against", choices=["plain", "lm-eval"], default="plain",
                    help="the peer: a plain loop (default) or lm-evaluation-harness on ARC-Easy and PIQA")
    args = ap.parse_args()
    if args.against == "lm-eval":
        return against_lm_eval(args)

    from bapo.evaluation.metrics import mc_scores
    from bapo.runtime.models import load_model, load_tokenizer, resolve_model
    from bapo.data.readers import load_mc

    print_header()
    path = resolve_model(args.model)
    model, tok = load_model(path, "cpu", args.dtype), load_tokenizer(path)
    items = load_mc(args.data, limit=args.items, seed=0)
    n_choices = sum(len(i.choices) for i in items)
    print(f"model: {args.model}; {len(items)} questions, {n_choices} choices; batch size {args.batch_size}")
    if args.adapter:
        return merged_vs_unmerged(model, tok, items, args)

    batched_acc = mc_scores(model, tok, items, args.batch_size)["acc"]
    plain_acc = plain_loop(model, tok, items)
    if batched_acc != plain_acc:
        sys.exit(f"MISMATCH: batched and plain scoring disagree on {sum(a != b for a, b in zip(batched_acc, plain_acc))} items")
    print(f"check: both give acc = {sum(plain_acc) / len(plain_acc):.3f} on the same items (identical per item)")

    ratios = []
    print(f"{'repeat':>6} {'plain items/s':>14} {'bapo items/s':>13} {'speed-up':>9}")
    for r in range(args.repeats):
        t = time.perf_counter()
        plain_loop(model, tok, items)
        plain = len(items) / (time.perf_counter() - t)
        t = time.perf_counter()
        mc_scores(model, tok, items, args.batch_size)
        fast = len(items) / (time.perf_counter() - t)
        ratios.append(fast / plain)
        print(f"{r + 1:>6} {plain:>14.2f} {fast:>13.2f} {fast / plain:>8.2f}x")
    print_speedups(ratios)


def merged_vs_unmerged(model, tok, items, args) -> None:
    """The same adapter scored through peft's LoRA layers and merged into the weights, as ``bapo eval`` does."""
    from bapo.runtime.adapters import applied
    from bapo.evaluation.metrics import mc_scores

    run = {}
    for merge in (False, True):
        with applied(model, args.adapter, 1.0, merge) as m:
            run[merge] = mc_scores(m, tok, items, args.batch_size)["acc"]
    if run[False] != run[True]:
        sys.exit("MISMATCH: merged and unmerged scoring disagree")
    print(f"adapter: {args.adapter}; check: both give acc = {sum(run[True]) / len(items):.3f} (identical per item)")
    ratios = []
    print(f"{'repeat':>6} {'unmerged items/s':>17} {'merged items/s':>15} {'speed-up':>9}")
    for r in range(args.repeats):
        rate = {}
        for merge in (False, True):
            with applied(model, args.adapter, 1.0, merge) as m:
                t = time.perf_counter()
                mc_scores(m, tok, items, args.batch_size)
                rate[merge] = len(items) / (time.perf_counter() - t)
        ratios.append(rate[True] / rate[False])
        print(f"{r + 1:>6} {rate[False]:>17.2f} {rate[True]:>15.2f} {ratios[-1]:>8.2f}x")
    print_speedups(ratios)


def against_lm_eval(args) -> None:
    """ARC-Easy and PIQA from ../shared/data through bapo and through lm-evaluation-harness, each side in a fresh
    process per repeat (alternating); per-item agreement on acc and acc_norm is checked before any timing counts."""
    import tempfile
    from pathlib import Path

    from lm_eval_peer import run_side, write_task  # benchmarks/lm_eval_peer.py, beside this script

    from bapo.data.readers import load_mc
    from bapo.runtime.models import load_tokenizer, resolve_model

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "knowledge"
    if not shared.exists():
        sys.exit(f"{shared} is absent: this comparison reads ARC-Easy and PIQA from ../shared/data")
    print_header()
    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    peak = matmul_peak_gflops() * 1e9  # FLOP/s
    print(f"model: {args.model} in {args.dtype} (both sides); {args.items} questions per task; batch size "
          f"{args.batch_size}; measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        for task in ("arc_easy", "piqa"):
            items = load_mc(str(shared / f"{task}.jsonl"), limit=args.items, seed=0)
            name = f"bapo_{task}"
            write_task(Path(tmp), name, items)
            flops = scoring_flops(path, tok, items)
            runs = {side: [] for side in ("lm-eval", "bapo")}
            for r in range(args.repeats):
                for side in runs:
                    runs[side].append(run_side(side, path, Path(tmp), name, args.batch_size,
                                               Path(tmp) / f"{side}.json", args.dtype))
                if r == 0:
                    check_agreement(task, runs["bapo"][0][2], runs["lm-eval"][0][2], args.dtype)
            report(task, len(items), runs, flops, peak)


def check_agreement(task: str, mine: dict, theirs: dict, dtype: str = "float32") -> None:
    """Per-item equality of acc and acc_norm. In float32 any difference stops the benchmark; in bfloat16 the two
    sides batch differently, so a near-tie between two choices may turn on rounding: the items that differ are
    counted and printed, with both sides' accuracies."""
    differ = {}
    for metric in ("acc", "acc_norm"):
        if len(mine[metric]) != len(theirs[metric]):
            sys.exit(f"MISMATCH on {task}: {len(mine[metric])} items scored by bapo, {len(theirs[metric])} by lm-eval")
        differ[metric] = sum(a != b for a, b in zip(mine[metric], theirs[metric]))
        if differ[metric] and dtype == "float32":
            sys.exit(f"MISMATCH on {task}: bapo and lm-eval disagree on {metric} for {differ[metric]} items")
    n = len(mine["acc"])
    said = "identical per item in both" if not any(differ.values()) else (
        f"per item: acc differs on {differ['acc']} of {n}, acc_norm on {differ['acc_norm']} of {n}")
    print(f"{task}: check ({dtype}): bapo acc {sum(mine['acc']) / n:.3f}, acc_norm {sum(mine['acc_norm']) / n:.3f}; "
          f"lm-eval acc {sum(theirs['acc']) / n:.3f}, acc_norm {sum(theirs['acc_norm']) / n:.3f}; {said}")


def report(task: str, n: int, runs: dict, flops: float, peak: float) -> None:
    ratios = []
    for r, (theirs, mine) in enumerate(zip(runs["lm-eval"], runs["bapo"]), 1):
        rate = {k: n / v[2]["seconds"] for k, v in (("lm-eval", theirs), ("bapo", mine))}
        ratios.append(rate["bapo"] / rate["lm-eval"])
        print(f"{task} repeat {r}: lm-eval {rate['lm-eval']:6.2f} items/s (wall {theirs[0]:5.1f} s, peak "
              f"{theirs[1]:.0f} MB) | bapo {rate['bapo']:6.2f} items/s (wall {mine[0]:5.1f} s, peak {mine[1]:.0f} MB, "
              f"{flops / mine[2]['seconds'] / peak:.0%} of the matmul peak) | {ratios[-1]:.2f}x")
    print(f"{task}: ", end="")
    print_speedups(ratios)


def scoring_flops(path: str, tok, items) -> float:
    """Forward FLOPs of bapo's scoring: 2 x (non-embedding parameters) per token it processes (each question's
    context once, every choice after it) plus the output head at the choices' tokens only."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        n = sum(p.numel() for name, p in AutoModelForCausalLM.from_config(cfg).named_parameters()
                if "embed" not in name and "lm_head" not in name)
    head = cfg.hidden_size * cfg.vocab_size
    total = 0.0
    for it in items:
        ctx = len(tok(it.context)["input_ids"])
        ch = sum(len(tok(" " + c, add_special_tokens=False)["input_ids"]) for c in it.choices)
        total += 2 * n * (ctx + ch) + 2 * head * ch
    return total


if __name__ == "__main__":
    main()
