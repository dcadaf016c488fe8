"""Where local generation's time goes: one batch of base responses (``bapo base``'s generation, transformers'
``generate``) under the torch profiler, prefill and decode steps apart.

    python benchmarks/profile_generate.py --data USER.train.jsonl [--batch 16] [--max-new-tokens 96] [--dtype bfloat16]

The batch is the ``--batch`` longest distinct prompts of the pair file (a study user's dialogues: the case where bapo
is furthest behind vLLM), rendered and cut as ``bapo base`` renders them. Times the prefill alone (one forward over
the padded prompts), then the whole greedy generation; the decode steps' time is the rest, divided by the steps
taken. Then the profiler over the generation: operators by self CPU time, and grouped (matmuls, attention, copies
and cache growth, elementwise, other), and how many operator calls a decode step makes. Nothing else may run.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

from common import print_header  # benchmarks/common.py, beside this script

GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::_softmax", "aten::softmax"),
    "copies, cache growth": ("aten::cat", "aten::copy_", "aten::index", "aten::clone", "aten::contiguous",
                             "aten::to", "aten::_to_copy", "aten::slice", "aten::narrow", "aten::expand"),
    "elementwise": ("aten::mul", "aten::add", "aten::silu", "aten::rsqrt", "aten::pow", "aten::mean", "aten::neg",
                    "aten::sub", "aten::div", "aten::where", "aten::masked_fill", "aten::embedding"),
}


def group(name: str) -> str:
    return next((g for g, prefixes in GROUPS.items() if name.startswith(prefixes)), "other")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()

    from bapo.core.tokens import Renderer
    from bapo.data.pairs import load_pairs
    from bapo.runtime.config import BaseResponseConfig
    from bapo.runtime.generate import generate_batch, left_pad, stop_ids
    from bapo.runtime.models import load_model, load_tokenizer, resolve_model

    print_header()
    path = resolve_model(a.model)
    tok = load_tokenizer(path)
    model = load_model(path, "cpu", a.dtype)
    render = Renderer(tok, 2048, 512)
    prompts = list({p.prompt_key: p.messages for f in a.data for p in load_pairs(f)}.values())
    ids = sorted((render.prompt_ids(m)[-render.max_prompt_length:] for m in prompts), key=len)[-a.batch:]
    cfg = BaseResponseConfig(max_new_tokens=a.max_new_tokens)
    stop = stop_ids(model, tok)
    input_ids, attn = left_pad(ids, tok.pad_token_id)
    print(f"{len(ids)} prompts of {min(map(len, ids))}-{max(map(len, ids))} tokens (padded to {input_ids.shape[1]}), "
          f"at most {a.max_new_tokens} new tokens, {a.dtype}")

    generate_batch(model, tok, ids[:2], BaseResponseConfig(max_new_tokens=4), stop)  # warm-up
    with torch.no_grad():
        t = time.perf_counter()
        model(input_ids=input_ids, attention_mask=attn, use_cache=True)
        prefill = time.perf_counter() - t
    t = time.perf_counter()
    texts = generate_batch(model, tok, ids, cfg, stop)
    total = time.perf_counter() - t
    steps = max(len(tok(x, add_special_tokens=False)["input_ids"]) for x in texts)
    new = sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in texts)
    decode = (total - prefill) / max(1, steps)
    print(f"generation {total:.2f} s: prefill {prefill:.2f} s, ~{steps} decode steps at {1000 * decode:.0f} ms each; "
          f"{new} new tokens, {new / total:.0f} tok/s")

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        generate_batch(model, tok, ids, cfg, stop)
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    grouped: dict[str, float] = collections.defaultdict(float)
    calls = 0
    for e in events:
        grouped[group(e.key)] += e.self_cpu_time_total
        calls += e.count
    print(f"\nprofiled: {total_us / 1e6:.2f} s of operator self time, {calls} operator calls "
          f"(~{calls / max(1, steps):.0f} per decode step)")
    for g, us in sorted(grouped.items(), key=lambda kv: -kv[1]):
        print(f"  {g:<22} {us / 1e6:7.2f} s  {100 * us / total_us:5.1f}%")
    print()
    print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40))


if __name__ == "__main__":
    main()
