"""An evaluation's generation: answers in larger, length-sorted batches against 16 at a time in the items' order.

    python benchmarks/bench_eval_generate.py [--adapter DIR] [--task triviaqa|refusal_harmless] [--items 128]
                                             [--batch-sizes 16,32,64] [--dtype bfloat16] [--repeats 3]

A study's evaluation generates 1,400 greedy answers per model (TriviaQA 1,000 of 16 tokens, refusals 400 of 32);
with an adapter applied unmerged (bfloat16) that was 40% of one model's evaluation (docs/PERFORMANCE.md). A decoding
step of a 135M model on a CPU costs about the same for 16 rows as for 64 (per-layer overhead and reading the weights,
not arithmetic), so fewer, fuller batches should cost less per answer. Both arms answer the items of ``--task`` from
../shared/data through ``--adapter`` (default: a seeded random LoRA adapter, r 16, every linear layer), alternating
A B A B in one process: A is ``generate_batch`` over the items 16 at a time in their order (bapo's evaluation before
2026-12-05 20:40), B is ``bapo.runtime.generate.generate_answers`` at each batch size. Prints answers/s, each arm's
accuracy (TriviaQA) or refusal rate, and how many answers differ from A's: in bfloat16 a greedy answer depends on its
batch (rounding in padded rows), so some do.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import print_header, print_speedups  # benchmarks/common.py, beside this script

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = {"triviaqa": ("knowledge/triviaqa_sm_sub.jsonl", 16), "refusal_harmless":
         ("prompts/alpaca_eval_instructions.jsonl", 32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--adapter", default="", help="a PEFT adapter folder (default: a seeded random one)")
    ap.add_argument("--task", default="triviaqa", choices=sorted(TASKS))
    ap.add_argument("--items", type=int, default=128)
    ap.add_argument("--batch-sizes", default="16,32,64")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    from bapo.data.config import DataConfig, renderer
    from bapo.data.readers import load_prompts, load_qa
    from bapo.evaluation.judges import judge_answer, judge_refusal
    from bapo.evaluation.metrics import QA_INSTRUCTION
    from bapo.runtime.adapters import applied
    from bapo.runtime.config import BaseResponseConfig
    from bapo.runtime.generate import generate_answers, generate_batch, stop_ids
    from bapo.runtime.models import load_model, load_tokenizer, resolve_model

    print_header()
    path, max_new = SHARED / TASKS[a.task][0], TASKS[a.task][1]
    if a.task == "triviaqa":
        items = load_qa(str(path), a.items, 0)
        prompts = [[{"role": "user", "content": it.question + QA_INSTRUCTION}] for it in items]
        judge = [lambda t, it=it: judge_answer(t, it.aliases) for it in items]
    else:
        prompts = load_prompts(str(path), a.items, 1)
        judge = [judge_refusal] * len(prompts)
    model_path = resolve_model(a.model, None)
    tok = load_tokenizer(model_path)
    render = renderer(tok, DataConfig())
    model = load_model(model_path, "cpu", a.dtype)
    if not a.adapter:
        from bench_dtype import _random_adapter
        a.adapter = _random_adapter(a.model)
    sizes = [int(b) for b in a.batch_sizes.split(",")]

    def old(m) -> list[str]:
        ids = [render.prompt_ids(p)[-render.max_prompt_length:] for p in prompts]
        cfg, stop = BaseResponseConfig(max_new_tokens=max_new), stop_ids(m, tok)
        return [t for i in range(0, len(ids), 16) for t in generate_batch(m, tok, ids[i:i + 16], cfg, stop)]

    def timed(fn) -> tuple[float, list[str]]:
        t = time.perf_counter()
        with torch.no_grad():
            texts = fn()
        return len(prompts) / (time.perf_counter() - t), texts

    def rate(texts: list[str]) -> float:
        return sum(j(t) or 0.0 for j, t in zip(judge, texts)) / len(texts)

    with applied(model, a.adapter, 1.0) as m:
        generate_answers(m, render, prompts[:4], max_new, 4)  # warm-up
        ratios: dict[int, list[float]] = {b: [] for b in sizes}
        for r in range(a.repeats):
            base, texts_a = timed(lambda: old(m))
            line = f"repeat {r + 1}: A (16, items' order) {base:6.2f} answers/s, {a.task} {rate(texts_a):.3f}"
            for b in sizes:
                speed, texts_b = timed(lambda: generate_answers(m, render, prompts, max_new, b))
                ratios[b].append(speed / base)
                differ = sum(x != y for x, y in zip(texts_a, texts_b))
                line += f" | B{b} {speed:6.2f}/s ({speed / base:.2f}x) {rate(texts_b):.3f}, {differ} differ"
            print(line, flush=True)
    print(f"{a.dtype}, {len(prompts)} {a.task} items, at most {max_new} new tokens, adapter {a.adapter}")
    for b in sizes:
        print(f"B at batch {b}: ", end="")
        print_speedups(ratios[b])


if __name__ == "__main__":
    main()
