"""What has never run on a GPU, run once on one, in under 8 minutes, with one table at the end.

    bash benchmarks/gpu_check.sh          # (this script, with a wall-clock limit per check)

Prepared for the `device` tool's lent machine (one GPU, no internet, torch/transformers/peft/accelerate installed,
not necessarily bapo's other dependencies): each check is its own subprocess with a time limit; a check whose
packages are missing says which and is skipped, never failed. Models: the tests' tiny random chat model (code
paths) and a random model of SmolLM2-135M's shape (30 layers, 576 wide, vocabulary 49,152; speed), both built here
in seconds (nothing is downloaded). Never part of CI or the tests.

Checks: LoRA training in bfloat16 (auto dtype, BAPO with its in-batch reference) and in float32, full fine-tuning,
``bapo eval`` of the base model and an adapter, ``benchmarks/bench_serve.py``, and the DeepSpeed ZeRO-2 and FSDP
accelerate configs with one process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = int(os.environ.get("GPU_CHECK_LIMIT_S", "100"))  # per check; 7 checks stay under 8 minutes with set-up
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")  # cpu: a smoke test of this script where there is no GPU


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


BAPO_DEPS = ("torch", "transformers", "peft", "accelerate", "safetensors", "typer", "rich", "yaml", "tqdm",
             "matplotlib", "filelock", "sklearn")


def build_models(tmp: Path) -> tuple[Path, Path, Path]:
    """The tiny chat model, a SmolLM2-shaped random one (the tiny tokenizer), and a pair file."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers import build_tiny_model, make_pairs, write_jsonl

    tiny = build_tiny_model(tmp / "tiny")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    shaped = tmp / "smollm2-shaped"
    LlamaForCausalLM(cfg).save_pretrained(shaped)
    tok.save_pretrained(shaped)
    pairs = write_jsonl(tmp / "pairs.jsonl", make_pairs(32, 2))
    return tiny, shaped, pairs


def run(name: str, cmd: list[str], needs: tuple[str, ...] = ()) -> dict:
    gone = missing(*BAPO_DEPS, *needs)
    if gone:
        return {"check": name, "status": "skipped", "seconds": 0.0, "note": f"missing: {', '.join(gone)}"}
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "TQDM_DISABLE": "1", "COLUMNS": "200"}
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=LIMIT_S, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"check": name, "status": "timeout", "seconds": LIMIT_S, "note": f"over {LIMIT_S} s"}
    wall = time.perf_counter() - t
    tail = (p.stdout + p.stderr).strip().splitlines()
    note = next((ln for ln in reversed(tail) if ln.strip()), "")[:110]
    return {"check": name, "status": "ok" if p.returncode == 0 else f"exit {p.returncode}", "seconds": wall,
            "note": note}


def main() -> None:
    import torch

    print(f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; "
          f"missing bapo dependencies: {', '.join(missing(*BAPO_DEPS)) or 'none'}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check."))
    tiny, shaped, pairs = build_models(tmp)
    bapo = [sys.executable, "-m", "bapo.cli"]
    common = ["--data", str(pairs), "--max-steps", "20", "--batch-size", "8", "--base-max-new-tokens", "32",
              "--cache-dir", str(tmp / "cache")]
    acc = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--config_file"]
    checks = [
        ("LoRA bf16 (auto), BAPO, SmolLM2-shaped", bapo + ["train", "--model", str(shaped), "--out", str(tmp / "a"),
                                                           "--device", DEVICE, *common]),
        ("LoRA float32, BAPO, SmolLM2-shaped", bapo + ["train", "--model", str(shaped), "--out", str(tmp / "b"),
                                                       "--device", DEVICE, "--dtype", "float32", *common]),
        ("full fine-tuning bf16, DPO, tiny", bapo + ["train", "--model", str(tiny), "--out", str(tmp / "c"),
                                                     "--device", DEVICE, "--finetune", "full", "--method", "dpo",
                                                     *common]),
        ("eval: base + adapter, tiny", bapo + ["eval", "--model", str(tiny), "--adapters", str(tmp / "c"),
                                               "--device", DEVICE, "--out", str(tmp / "eval"), "--cache-dir",
                                               str(tmp / "cache")]),
        ("bench_serve, tiny", [sys.executable, "benchmarks/bench_serve.py", "--model", str(tiny), "--repeats", "1"],
         ("fastapi", "uvicorn", "openai")),
        ("DeepSpeed ZeRO-2, 1 process, tiny", acc + ["configs/accelerate/deepspeed_zero2.yaml", "-m", "bapo.cli",
                                                     "train", "--model", str(tiny), "--out", str(tmp / "d"), *common],
         ("deepspeed",)),
        ("FSDP, 1 process, full, tiny", acc + ["configs/accelerate/fsdp.yaml", "-m", "bapo.cli", "train", "--model",
                                               str(tiny), "--out", str(tmp / "e"), "--finetune", "full", *common]),
    ]
    rows = []
    try:
        for name, cmd, *needs in checks:
            rows.append(run(name, cmd, *needs))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # models, adapters and caches: nothing is read after the table
    print("\n| check | status | s | last line |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['check']} | {r['status']} | {r['seconds']:.1f} | {r['note'].replace('|', '/')} |")


if __name__ == "__main__":
    main()
