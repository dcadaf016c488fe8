"""Optional lm-evaluation-harness tasks beside bapo's own (``--lm-eval-tasks``), when ``lm-eval`` is installed."""

from __future__ import annotations

from rich.console import Console


def lm_eval_scores(model, tokenizer, tasks: list[str], batch_size: int, label: str,
                   console: Console) -> dict[str, dict[str, list[float]]]:
    """``{"lm_eval:TASK": {metric: [value]}}`` for ``model`` as it is (aggregates only: the harness gives no per-item
    scores to pair); empty, with a note, when the harness or its data is missing."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        console.print("[yellow]lm-eval is not installed: skipping --lm-eval-tasks (pip install lm-eval)[/]")
        return {}
    try:
        res = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), tasks=tasks)
    except Exception as e:  # its data comes from the hub: offline is the usual failure
        console.print(f"[yellow]lm-eval failed for {label}, skipped: {str(e).splitlines()[0]}[/]")
        return {}
    out = {}
    for task, metrics in res["results"].items():
        vals = {m.split(",")[0]: v for m, v in metrics.items() if isinstance(v, float) and "stderr" not in m}
        out[f"lm_eval:{task}"] = {m: [v] for m, v in vals.items()}
    return out
