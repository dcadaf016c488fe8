"""Issue 28: bfloat16 against float32 on the same study (studies/dtype.yaml run once per dtype). Prints, as markdown:

1. the base model, item by item: on each task and metric, the share of items whose score is the same in both dtypes,
   each dtype's mean, and the difference (bfloat16 - float32) with its paired 95% interval;
2. every adapter's study measures side by side (study.json's rows);
3. each adapter's training loss at a few steps in both dtypes, and a figure of the whole curves.

    python studies/dtype_table.py study_dtype_float32 study_dtype_bfloat16 --figure docs/figures/dtype_loss.png

Reads only what the studies wrote (eval/item_scores.json, study.json, cells/*/metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MEASURES = ["personal_reward_acc", "personal_margin", "knowledge_delta", "generative_knowledge_delta",
            "alignment_delta", "refusal_harmful_delta", "refusal_harmless_delta", "drift_delta"]


def paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of b - a and its 95% interval (normal approximation over items)."""
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def agreement(f32: dict, bf16: dict) -> list[str]:
    lines = ["| task | metric | items | same score | float32 | bfloat16 | bf16 - f32 [95% CI] |", "|---|---|---|---|---|---|---|"]
    for task, metrics in f32["base"].items():
        for metric, a in metrics.items():
            b = bf16["base"].get(task, {}).get(metric)
            if b is None or len(b) != len(a) or len(a) < 2:
                continue
            same = sum(abs(x - y) < 1e-9 for x, y in zip(a, b)) / len(a)
            d, lo, hi = paired(a, b)
            lines.append(f"| {task} | {metric} | {len(a)} | {same:.1%} | {sum(a) / len(a):.4f} | {sum(b) / len(b):.4f} "
                         f"| {d:+.4f} [{lo:+.4f}, {hi:+.4f}] |")
    return lines


def measures(f32: dict, bf16: dict) -> list[str]:
    lines = ["| adapter | measure | float32 | bfloat16 | difference |", "|---|---|---|---|---|"]
    for r32, r16 in zip(f32["rows"], bf16["rows"]):
        for m in MEASURES:
            a, b = r32.get(m), r16.get(m)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                lines.append(f"| {r32['user']} {r32['method']} s{r32['seed']} | {m} | {a:+.4f} | {b:+.4f} | {b - a:+.4f} |")
    return lines


def losses(study: Path) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for cell in sorted((study / "cells").iterdir()):
        rows = [json.loads(x) for x in (cell / "metrics.jsonl").read_text().splitlines() if x.strip()]
        out[cell.name] = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    return out


def curves(a: dict, b: dict, figure: Path | None) -> list[str]:
    lines = ["| adapter | step | float32 loss | bfloat16 loss |", "|---|---|---|---|"]
    for name, pts in a.items():
        other = dict(b.get(name, []))
        n = len(pts)
        for i in sorted({0, n // 4, n // 2, 3 * n // 4, n - 1}):
            step, loss = pts[i]
            lines.append(f"| {name} | {step} | {loss:.4f} | {other.get(step, float('nan')):.4f} |")
    if figure:
        fig, axes = plt.subplots(1, len(a), figsize=(5 * len(a), 3.5), squeeze=False)
        for ax, (name, pts) in zip(axes[0], a.items()):
            ax.plot(*zip(*pts), label="float32")
            if b.get(name):
                ax.plot(*zip(*b[name]), label="bfloat16", linestyle="--")
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.set_ylabel("training loss")
            ax.legend()
        fig.tight_layout()
        figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(figure, dpi=110)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("float32", type=Path)
    ap.add_argument("bfloat16", type=Path)
    ap.add_argument("--figure", type=Path)
    args = ap.parse_args()
    items = [json.loads((s / "eval" / "item_scores.json").read_text()) for s in (args.float32, args.bfloat16)]
    studies = [json.loads((s / "study.json").read_text()) for s in (args.float32, args.bfloat16)]
    print("### The base model, item by item\n")
    print("\n".join(agreement(*items)))
    print("\n### Every study measure\n")
    print("\n".join(measures(*studies)))
    print("\n### Training loss\n")
    print("\n".join(curves(losses(args.float32), losses(args.bfloat16), args.figure)))


if __name__ == "__main__":
    main()
