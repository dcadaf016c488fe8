"""bapo's multiple-choice scoring against lm-evaluation-harness, each in its own process (``bench_eval.py --against
lm-eval`` runs this). The harness reads the same questions from a local task file (the context bapo scores, the
choices, the gold index; " " before each choice), through its ``hf`` model with the same weights and batch size.

    python benchmarks/lm_eval_peer.py worker {bapo|lm-eval} MODEL TASK_DIR TASK BATCH OUT.json [DTYPE]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from common import run_measured  # benchmarks/common.py, beside this script

HERE = Path(__file__).resolve().parent


def write_task(folder: Path, name: str, items) -> None:
    """A local lm-eval task with exactly bapo's contexts and choices."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"context": it.context, "choices": it.choices, "gold": it.gold} for it in items]
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(folder / f"{name}.jsonl")}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}", "target_delimiter": " ",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}))


def run_side(side: str, model: str, task_dir: Path, task: str, batch: int, out: Path,
             dtype: str = "float32") -> tuple[float, float, dict]:
    """(wall seconds, peak MiB, the worker's JSON) of one side in a fresh process."""
    wall, peak = run_measured([sys.executable, str(HERE / "lm_eval_peer.py"), "worker", side, model, str(task_dir),
                               task, str(batch), str(out), dtype], {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    return wall, peak, json.loads(out.read_text())


def worker(side: str, model_path: str, task_dir: str, task: str, batch: int, out: str, dtype: str) -> None:
    import torch

    from bapo.data.readers import McItem
    from bapo.evaluation.metrics import mc_scores
    from bapo.runtime.models import load_model, load_tokenizer

    model, tok = load_model(model_path, "cpu", dtype), load_tokenizer(model_path)  # the same weights for both sides
    rows = [json.loads(x) for x in (Path(task_dir) / f"{task}.jsonl").read_text().splitlines()]
    items = [McItem(r["context"], r["choices"], r["gold"]) for r in rows]
    t0 = time.perf_counter()
    if side == "bapo":
        got = mc_scores(model, tok, items, batch)
    else:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch, device="cpu")
        res = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=task_dir),
                              log_samples=True, verbosity="ERROR")
        samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
        got = {m: [float(s[m]) for s in samples] for m in ("acc", "acc_norm")}
    seconds = time.perf_counter() - t0
    Path(out).write_text(json.dumps({**got, "seconds": seconds, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    if len(sys.argv) in (8, 9) and sys.argv[1] == "worker":
        worker(*sys.argv[2:6], int(sys.argv[6]), sys.argv[7], sys.argv[8] if len(sys.argv) == 9 else "float32")
    else:
        sys.exit(__doc__)
