"""Generation through a LoRA adapter with the output head's input made contiguous (``bapo.runtime.models.
contiguous_head_input``, what every model bapo loads gets) against the same without it.

    python benchmarks/bench_head.py [--model smollm2-135m-instruct] [--dtype bfloat16] [--repeats 5]
                                    [--max-new-tokens 16]

transformers slices the prefill's last position before the head (``hidden[:, -1:]``, strided); torch's matmul folds
a strided 3D input into one mm only when the weight requires grad, and peft freezes the base weights once an adapter
is applied (they stay frozen after ``unload``), so the head then runs a bmm over its weight expanded once per
sequence. Both arms answer the same 16 prompts greedily with ``generate_batch`` (what ``bapo eval`` runs) through a
seeded random adapter (r 16, every linear layer), alternating A B A B in one process; the answers must be identical
before any timing counts. Default: ``--max-new-tokens 16``, TriviaQA's in the study suite (one prefill per 16 tokens).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench_dtype import _random_adapter
from bench_train import synthetic_pairs
from common import print_header, print_speedups  # benchmarks/common.py, beside this script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    a = ap.parse_args()

    from bapo.data.config import DataConfig, renderer
    from bapo.runtime.adapters import applied
    from bapo.runtime.config import BaseResponseConfig
    from bapo.runtime.generate import generate_batch
    from bapo.runtime.models import load_model, load_tokenizer, resolve_model

    print_header()
    torch.manual_seed(0)
    path = resolve_model(a.model, None)
    tok = load_tokenizer(path)
    render = renderer(tok, DataConfig())
    prompts = [render.prompt_ids(r["prompt"]) for r in synthetic_pairs(16, 30, 60, seed=0)]
    model = load_model(path, "cpu", a.dtype)
    head = model.get_output_embeddings()
    hooks = dict(head._forward_pre_hooks)  # the contiguous-input hook load_model registered
    cfg = BaseResponseConfig(max_new_tokens=a.max_new_tokens)
    stop = [tok.eos_token_id]

    def run(contiguous: bool) -> tuple[float, list[str]]:
        head._forward_pre_hooks.clear()
        if contiguous:
            head._forward_pre_hooks.update(hooks)
        t = time.perf_counter()
        with torch.no_grad():
            texts = generate_batch(m, tok, prompts, cfg, stop)
        wall = time.perf_counter() - t
        return sum(len(tok(x)["input_ids"]) for x in texts) / wall, texts

    with applied(model, _random_adapter(a.model), 1.0) as m:
        run(True)  # warm-up
        ratios = []
        for r in range(a.repeats):
            plain, t_plain = run(False)
            fixed, t_fixed = run(True)
            if t_plain != t_fixed:
                raise SystemExit("the two arms answered differently: no timing counts")
            ratios.append(fixed / plain)
            print(f"repeat {r + 1}: without {plain:7.1f} tokens/s, contiguous head {fixed:7.1f} tokens/s "
                  f"({fixed / plain:.2f}x)", flush=True)
    print(f"{a.dtype}, 16 prompts, {a.max_new_tokens} new tokens, through a LoRA adapter")
    print_speedups(ratios)


if __name__ == "__main__":
    main()
