"""How the reference's greedy generation is batched, on one prompt set: bapo's length-sorted static batches at
several sizes, with transformers' static KV cache, and transformers' continuous batching (``generate_batch``).

    python benchmarks/bench_generate_batching.py MODE [--prompts 200] [--data PAIRS.jsonl ...] [--dtype bfloat16]

MODE: ``static16`` (bapo's default: batches of 16), ``staticN`` (batches of N), ``staticNs`` (the same with
``cache_implementation="static"``), ``staticNsc`` (that, and the forward compiled with ``torch.compile``, its
compilation timed in) or ``cb`` (``model.generate_batch``). One mode per process, one run: call it
alternately for a comparison, nothing else running. The prompts: the distinct prompts of ``--data`` pair files (a
study user), else the first AlpacaEval instructions (../shared/data/prompts). Prints one JSON line: wall seconds of
the generation alone, tokens (the answers re-encoded), tokens/s.
"""

from __future__ import annotations

import argparse
import json
import time

from bench_engine import prompts  # benchmarks/bench_engine.py, beside this script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--data", nargs="*", default=[])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    a = ap.parse_args()

    from transformers import GenerationConfig

    from bapo.core.tokens import Renderer
    from bapo.runtime.config import BaseResponseConfig
    from bapo.runtime.generate import generate_batch, stop_ids
    from bapo.runtime.models import load_model, load_tokenizer, resolve_model

    path = resolve_model("smollm2-135m-instruct", None)
    tok, model = load_tokenizer(path), load_model(path, "cpu", a.dtype)
    render = Renderer(tok, 2048, 512)
    ids = [render.prompt_ids(m)[-512:] for m in prompts(a.prompts, a.data)]
    stop = stop_ids(model, tok)
    t = time.perf_counter()
    if a.mode.startswith("static"):
        size = int(a.mode[6:].rstrip("sc") or 16)
        if a.mode[6:].lstrip("0123456789").startswith("s"):
            model.generation_config.cache_implementation = "static"
        if a.mode.endswith("c"):
            import torch

            model.forward = torch.compile(model.forward, dynamic=True)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        texts = [""] * len(ids)
        for s in range(0, len(order), size):
            chunk = order[s : s + size]
            answers = generate_batch(model, tok, [ids[i] for i in chunk], BaseResponseConfig(a.max_new_tokens), stop)
            for i, text in zip(chunk, answers):
                texts[i] = text
    elif a.mode == "cb":
        cfg = GenerationConfig(max_new_tokens=a.max_new_tokens, do_sample=False, eos_token_id=stop,
                               pad_token_id=tok.pad_token_id)
        out = model.generate_batch(inputs=ids, generation_config=cfg)
        texts = [tok.decode(o.generated_tokens, skip_special_tokens=True).strip() for o in out.values()]
    else:
        raise SystemExit(f"unknown mode {a.mode}")
    wall = time.perf_counter() - t
    tokens = sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in texts)
    print(json.dumps({"mode": a.mode, "prompts": len(ids), "dtype": a.dtype, "seconds": round(wall, 2),
                      "tokens": tokens, "tokens_per_s": round(tokens / wall, 1)}))


if __name__ == "__main__":
    main()
