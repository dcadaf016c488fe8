"""``make demo``: a simulated user who wants every answer as a bullet list, served by DPO and by BAPO.

The data is built from a small bundled prompt set (``resources/demo_prompts.jsonl``): for each question the chosen
response is three sentences as bullets, the rejected one the same sentences as a paragraph. Both adapters train on
the same pairs with the same settings; the table compares them with the untouched model on held-out prompts.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bapo.core.tokens import encode_pairs
from bapo.data.config import DataConfig
from bapo.data.pairs import load_pairs
from bapo.data.profiles import is_bullet_list
from bapo.evaluation.config import EvalConfig
from bapo.evaluation.metrics import Stat, as_scored, evaluate_pairs
from bapo.evaluation.report import write_report
from bapo.evaluation.runner import evaluate
from bapo.io import atomic_write_text, write_json, write_jsonl
from bapo.runtime.adapters import applied
from bapo.runtime.config import BaseResponseConfig
from bapo.runtime.generate import generate_answers
from bapo.runtime.reference import build_examples, open_reference
from bapo.training.config import TrainConfig
from bapo.training.run import train

# The paper's anchor (log-probs summed over the response) and the per-token variant, both at lambda = 1.
DEFAULT_VARIANTS = {"dpo": {"method": "dpo"}, "bapo": {"method": "bapo"},
                    "bapo_mean": {"method": "bapo", "anchor_reduction": "mean"}}


def demo_pairs() -> list[dict]:
    rows = []
    text = resources.files("bapo").joinpath("resources/demo_prompts.jsonl").read_text(encoding="utf-8")
    for line in text.splitlines():
        item = json.loads(line)
        rows.append({"prompt": item["prompt"], "chosen": "\n".join(f"- {s}" for s in item["sentences"]),
                     "rejected": " ".join(item["sentences"]), "user_id": "bullet-lover"})
    return rows


def run_demo(out: Path, model: str = "smollm2-135m-instruct", steps: int = 30, cache_dir: str = "",
             console: Console | None = None, variants: dict[str, dict] | None = None, lr: float = 2e-4,
             max_new_tokens: int = 64) -> dict:
    """Train one adapter per variant (name -> ``LossConfig`` fields) and print the comparison table."""
    console = console or Console()
    variants = variants or DEFAULT_VARIANTS
    methods = tuple(variants)
    t0 = time.time()
    out = Path(out)
    data = out / "user_bullets.jsonl"
    write_jsonl(data, demo_pairs())
    console.rule("[bold]bapo demo: a user who wants bullet lists")
    console.print(f"data: {data} (60 prompts; chosen = bullets, rejected = the same sentences as a paragraph)")

    base_cfg = BaseResponseConfig(max_new_tokens=max_new_tokens)
    adapters = {}
    for method in methods:
        cfg = TrainConfig(model=model, out=str(out / "adapters" / method), cache_dir=cache_dir,
                          data=DataConfig(path=str(data), holdout=0.2), max_steps=steps, batch_size=4, lr=lr,
                          save_steps=max(steps // 2, 1), base=base_cfg)
        for k, v in variants[method].items():
            setattr(cfg.loss, k, v)
        cfg.validate()
        if (Path(cfg.out) / "adapter_config.json").exists():
            console.print(f"[dim]{method}: adapter already trained in {cfg.out}, reusing it[/]")
        else:
            console.rule(f"training {method} ({steps} steps)")
            cfg.resume = (Path(cfg.out) / "checkpoints").exists()
            train(cfg)
        adapters[method] = Path(cfg.out)

    console.rule("evaluation on held-out prompts")
    held = load_pairs(str(adapters[methods[0]] / "holdout.jsonl"))
    limits = DataConfig()
    ref = open_reference(model, limits.max_length, limits.max_prompt_length, cache_dir)
    # the reference's log-probs as the scoring below computes the models' (in bfloat16 they depend on the batch)
    examples = as_scored(ref, build_examples(ref, held, encode_pairs(held, ref.renderer), base_cfg, with_base=True))
    results = {}
    for name in ("base", *methods):
        # peft's separate LoRA layers (no merge), as the demo has always scored its adapters
        with applied(ref.model, None if name == "base" else adapters[name], merge=False) as policy:
            metrics = evaluate_pairs(policy, examples, ref.pad_id)
            # batched as `bapo eval` batches them: in bfloat16 greedy answers depend on their batch, and the two
            # tables below should show the same answers
            texts = generate_answers(policy, ref.renderer, [p.messages for p in held], max_new_tokens,
                                     EvalConfig().generate_batch_size)
        metrics["bullet_rate"] = Stat.of([float(is_bullet_list(t)) for t in texts])
        results[name] = {"metrics": metrics, "sample": texts[0]}

    table = Table(title=f"held-out prompts: {len(held)} (user: bullet-lover)", show_lines=False)
    table.add_column("model")
    cols = [("bullet_rate", "bullet answers ↑"), ("reward_acc", "pref. acc (reward) ↑"),
            ("ll_acc", "pref. acc (LL) ↑"), ("base_drift", "Δ log p(y_b)/token (0 = kept)")]
    for _, title in cols:
        table.add_column(title, justify="right")
    for name, r in results.items():
        table.add_row(name, *[str(r["metrics"][k]) for k, _ in cols])
    console.print(table)
    console.print(f"[bold]first held-out prompt:[/] {held[0].messages[-1]['content']}")
    for name, r in results.items():
        console.print(f"[bold]{name}:[/] {r['sample'][:300]!r}")
    console.rule("bapo eval: knowledge and general alignment kept (default suite)")
    evaluate(EvalConfig(model=model, adapters=[str(adapters[m]) for m in methods], out=str(out / "eval"),
                        cache_dir=cache_dir), console)
    page = write_report(out / "eval", out / "report")
    console.print(f"[bold green]report:[/] {page}")
    seconds = time.time() - t0
    report = {"model": model, "steps": steps, "lr": lr, "held_out": len(held), "seconds": round(seconds, 1),
              "results": {n: {"sample": r["sample"], **{k: vars(v) for k, v in r["metrics"].items()}}
                          for n, r in results.items()}}
    write_json(out / "results.json", report)
    atomic_write_text(out / "results.txt", _plain(table))
    console.print(f"results: {out / 'results.json'}  ({seconds / 60:.1f} min)")
    return report


def _plain(table: Table) -> str:
    c = Console(width=140, record=True, file=open("/dev/null", "w"))
    c.print(table)
    return c.export_text()
