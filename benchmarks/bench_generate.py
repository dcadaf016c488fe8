"""Base-response generation speed: bapo's batched generation against a plain one-prompt-at-a-time ``generate`` loop.

    python benchmarks/bench_generate.py [--model smollm2-135m-instruct] [--prompts 48] [--max-new-tokens 64]

Both answer the same prompts (the shipped demo prompts, or --data: any prompt/instruction JSONL) greedily with the
same model, stop tokens and length limit. bapo sorts prompts by length and generates ``--batch-size`` at a time with
left padding (``bapo.runtime.generate.generate_batch``, what ``bapo base`` and ``bapo train`` run, here without the cache); the
plain loop calls ``model.generate`` once per prompt. Every answer must be identical before any timing counts.
Prints the machine, the command, generated tokens/s of each, and the speed-up per repeat (A B A B ...).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from common import print_header, print_speedups  # benchmarks/common.py, beside this script


def plain_loop(model, tok, prompts, cfg, stop) -> list[str]:
    out = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([list(ids)])
            y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=cfg.max_new_tokens,
                               do_sample=False, eos_token_id=stop, pad_token_id=tok.pad_token_id, temperature=None,
                               top_p=None, top_k=None)
            out.append(tok.decode(y[0, x.shape[1]:], skip_special_tokens=True).strip())
    return out


def batched(model, tok, prompts, cfg, stop) -> list[str]:
    from bapo.runtime.generate import generate_batch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        for i, t in zip(idx, generate_batch(model, tok, [prompts[i] for i in idx], cfg, stop)):
            texts[i] = t
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the model's dtype (float32: the figures of docs/PERFORMANCE.md)")
    ap.add_argument("--data", default="package:demo_prompts.jsonl")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from bapo.runtime.generate import stop_ids
    from bapo.runtime.config import BaseResponseConfig
    from bapo.data.config import DataConfig, renderer
    from bapo.runtime.models import load_model, load_tokenizer, resolve_model
    from bapo.data.readers import load_prompts

    print_header()
    path = resolve_model(args.model)
    model, tok = load_model(path, "cpu", args.dtype).eval(), load_tokenizer(path)
    render = renderer(tok, DataConfig())
    messages = load_prompts(args.data, limit=args.prompts, seed=0)
    prompts = [tuple(render.prompt_ids(m)) for m in messages]
    cfg = BaseResponseConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    stop = stop_ids(model, tok)
    print(f"model: {args.model}; {len(prompts)} prompts of {sum(map(len, prompts)) / len(prompts):.0f} tokens on "
          f"average; greedy, at most {args.max_new_tokens} new tokens; batch size {args.batch_size}")

    fast = batched(model, tok, prompts, cfg, stop)
    plain = plain_loop(model, tok, prompts, cfg, stop)
    same = sum(a == b for a, b in zip(fast, plain))
    if same != len(prompts):
        sys.exit(f"MISMATCH: batched and plain generation differ on {len(prompts) - same} of {len(prompts)} prompts")
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in plain)
    print(f"check: identical answers for all {len(prompts)} prompts; {n_tokens} generated tokens")

    ratios = []
    print(f"{'repeat':>6} {'plain tok/s':>12} {'bapo tok/s':>11} {'speed-up':>9}")
    for r in range(args.repeats):
        t = time.perf_counter()
        plain_loop(model, tok, prompts, cfg, stop)
        p = n_tokens / (time.perf_counter() - t)
        t = time.perf_counter()
        batched(model, tok, prompts, cfg, stop)
        b = n_tokens / (time.perf_counter() - t)
        ratios.append(b / p)
        print(f"{r + 1:>6} {p:>12.1f} {b:>11.1f} {b / p:>8.2f}x")
    print_speedups(ratios)


if __name__ == "__main__":
    main()
