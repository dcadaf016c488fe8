"""Multiple-choice scoring speed: bapo's batched scorer against a plain one-question-at-a-time loop.

    python benchmarks/bench_eval.py [--model smollm2-135m-instruct] [--items 100] [--repeats 3]
    python benchmarks/bench_eval.py --adapter DIR   # an adapter scored merged into the weights vs. unmerged

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

from common import print_header, print_speedups  # benchmarks/common.py, beside this script


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
    ap.add_argument("--data", default="package:knowledge_mc.jsonl")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--adapter", default="", help="compare `bapo eval`'s merged and unmerged scoring of this adapter")
    args = ap.parse_args()

    from bapo.evaluation.metrics import mc_scores
    from bapo.runtime.models import load_model, load_tokenizer, resolve_model
    from bapo.data.readers import load_mc

    print_header()
    path = resolve_model(args.model)
    model, tok = load_model(path), load_tokenizer(path)
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


if __name__ == "__main__":
    main()
