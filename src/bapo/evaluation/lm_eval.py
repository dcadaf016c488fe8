"""Optional lm-evaluation-harness tasks beside bapo's own (``--lm-eval-tasks``), when ``lm-eval`` is installed."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console


def lm_eval_scores(model, tokenizer, tasks: list[str], batch_size: int, label: str,
                   console: Console) -> dict[str, dict[str, list[float]]]:
    """``{"lm_eval:TASK": {metric: [value]}}`` for ``model`` as it is (aggregates only: the harness gives no per-item
    scores to pair); empty, with a note, when the harness or its data is missing.

    Under torchrun each model is scored by one process (``bapo eval`` splits the models), so the harness runs once per
    model, in the process that owns it, as a single-process evaluation of the model it is handed."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        console.print("[yellow]lm-eval is not installed: skipping --lm-eval-tasks (pip install lm-eval)[/]")
        return {}
    try:
        with _one_process():
            res = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size),
                                  tasks=tasks)
    except Exception as e:  # its data comes from the hub: offline is the usual failure
        console.print(f"[yellow]lm-eval failed for {label}, skipped: {str(e).splitlines()[0]}[/]")
        return {}
    out = {}
    for task, metrics in res["results"].items():
        vals = {m.split(",")[0]: v for m, v in metrics.items() if isinstance(v, float) and "stderr" not in m}
        out[f"lm_eval:{task}"] = {m: [v] for m, v in vals.items()}
    return out


@contextmanager
def _one_process() -> Iterator[None]:
    """The launcher's ``LOCAL_RANK`` hidden from the harness for one call. Handed a loaded model, the harness
    evaluates it in this process alone (its HFLM says rank 0 of 1), but from lm-eval 0.4.11 ``simple_evaluate`` also
    returns None wherever ``LOCAL_RANK`` is not 0 (meant for tensor-parallel launches, where every rank holds a piece
    of one model): the process of rank 1 that owns a model would get no results for it."""
    saved = os.environ.pop("LOCAL_RANK", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["LOCAL_RANK"] = saved
