"""How long ``bapo train --forgetting-budget`` spends probing one adapter after training.

    python benchmarks/bench_budget.py [--model smollm2-135m-instruct] [--budget drift:0.1] [--drift-items 10]
        [--dtype auto] [--repeats 3]

A LoRA adapter (random, strong enough to change answers) on the model is probed the way ``bapo train`` probes it
(:func:`bapo.budget.run.apply_budget`: every scale of ``--budget-scales``, the choice built in), first with an empty
bapo cache (the reference answers the drift prompts, and scores the probes, once: what a user's first adapter pays),
then ``--repeats`` times warm (what every later adapter and user pays). Prints the machine, the command, the dtype and
both times (min / median / max of the warm ones).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import print_header  # benchmarks/common.py, beside this script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--budget", default="drift:0.1")
    ap.add_argument("--drift-items", type=int, default=None, help="default: BudgetSettings' own")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BAPO_CACHE_DIR"] = str(Path(tmp) / "cache")  # cold: a cache of its own
        import torch

        from bapo.budget.probe import Prober
        from bapo.budget.run import apply_budget
        from bapo.data.config import DataConfig, renderer
        from bapo.runtime.config import BudgetSettings, LoraSettings
        from bapo.runtime.models import add_lora, dtype_name, load_model, load_tokenizer, resolve_model
        from bapo.runtime.reference import load_reference

        print_header()
        path = resolve_model(args.model)
        torch.manual_seed(0)
        lora = add_lora(load_model(path, "cpu", "float32"), LoraSettings(r=16))
        with torch.no_grad():
            for n, p in lora.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01)
        adapter = Path(tmp) / "adapter"
        lora.save_pretrained(adapter)
        del lora
        settings = BudgetSettings(spec=args.budget)
        if args.drift_items is not None:
            settings.drift_items = args.drift_items
        t0 = time.perf_counter()
        ref = load_reference(path, renderer(load_tokenizer(path), DataConfig()), device="auto", dtype=args.dtype)
        loading = time.perf_counter() - t0
        print(f"model {args.model} in {dtype_name(next(ref.model.parameters()).dtype)}; budget {args.budget}; "
              f"{settings.drift_items} drift prompts; scales {settings.scales}")
        t0 = time.perf_counter()
        prober = Prober(ref, settings)  # the reference's answers and the base model's probe scores, then cached
        choice = apply_budget(adapter, prober, settings.scales)
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            apply_budget(adapter, Prober(ref, settings), settings.scales)
            warm.append(time.perf_counter() - t0)
        print(f"chosen scale {choice.scale:g}; losses at each scale: "
              f"{[(r.scale, {m: round(v, 3) for m, v in r.losses.items()}) for r in choice.rows]}")
        print(f"loading the reference (bapo train does it once, after training): {loading:.1f} s")
        print(f"first adapter (cold cache): {cold:.1f} s")
        print(f"each later adapter (warm) min/median/max: {min(warm):.1f} / {statistics.median(warm):.1f} / "
              f"{max(warm):.1f} s")


if __name__ == "__main__":
    main()
