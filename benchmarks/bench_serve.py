"""Serving many users: ``bapo serve`` answering concurrent requests in shared batches, against the same server
answering the same requests one at a time.

    python benchmarks/bench_serve.py [--model smollm2-135m-instruct] [--users 8] [--requests 32] [--max-tokens 32]

Each repeat starts a fresh ``bapo serve`` process (base model + ``--users`` LoRA adapters made here, random and
strong enough to change answers), warms it up, then sends ``--requests`` greedy chat requests spread over the users
either one at a time (the next after the previous answer) or all at once, with the official openai client. Before any
timing counts, the concurrent answers must equal the one-at-a-time answers request by request. Prints the machine,
the command, completion tokens/s, p50/p95 latency and the server's peak memory for each mode, and the speed-up per
repeat (sequential, concurrent, sequential, concurrent, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_header, print_speedups  # benchmarks/common.py, beside this script

PROMPTS = ["Why is the sky blue?", "Name three rivers in Europe.", "How do I boil an egg?",
           "What is a prime number?", "Suggest a name for a cat.", "Explain what a budget is."]


def make_adapters(model_dir: str, root: Path, users: int) -> None:
    import torch

    from bapo.runtime.config import LoraSettings
    from bapo.runtime.models import add_lora, load_model

    for u in range(users):
        torch.manual_seed(u)
        m = add_lora(load_model(model_dir, "cpu", "float32"), LoraSettings(r=16))
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01)
        m.save_pretrained(root / f"user{u}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: str, adapters: Path, users: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "bapo.cli", "serve", "--model", model, "--adapters", str(adapters), "--port",
           str(port), "--max-adapters", str(users), "--max-batch", "32", "--batch-wait-ms", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import urllib.request

    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"the server did not start:\n{proc.stdout.read()[-3000:]}")


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(port: int, jobs: list[tuple[str, str]], max_tokens: int, concurrent: bool):
    import openai

    async def ask(user: str, prompt: str):
        t = time.perf_counter()
        r = await client.chat.completions.create(model=user, messages=[{"role": "user", "content": prompt}],
                                                 temperature=0, max_tokens=max_tokens)
        return r.choices[0].message.content, r.usage.completion_tokens, time.perf_counter() - t

    async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0,
                                  timeout=600) as client:
        t0 = time.perf_counter()
        if concurrent:
            out = await asyncio.gather(*(ask(u, p) for u, p in jobs))
        else:
            out = [await ask(u, p) for u, p in jobs]
        return out, time.perf_counter() - t0


def measure(a, adapters: Path, concurrent: bool) -> dict:
    proc, port = start(a.model, adapters, a.users)
    try:
        jobs = [(f"user{i % a.users}", PROMPTS[i % len(PROMPTS)]) for i in range(a.requests)]
        asyncio.run(run(port, jobs[: a.users], 4, True))  # warm-up: every adapter loaded once
        out, wall = asyncio.run(run(port, jobs, a.max_tokens, concurrent))
        lat = sorted(x[2] for x in out)
        return {"answers": [x[0] for x in out], "tokens": sum(x[1] for x in out), "wall": wall,
                "p50": statistics.median(lat), "p95": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
                "peak_mb": peak_mb(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    from bapo.runtime.models import resolve_model

    print_header()
    a.model = resolve_model(a.model)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = Path(tmp) / "adapters"
        make_adapters(a.model, adapters, a.users)
        ratios = []
        for rep in range(a.repeats):
            seq = measure(a, adapters, concurrent=False)
            con = measure(a, adapters, concurrent=True)
            if con["answers"] != seq["answers"]:
                diff = sum(x != y for x, y in zip(con["answers"], seq["answers"]))
                sys.exit(f"{diff} of {a.requests} concurrent answers differ from the one-at-a-time ones")
            for name, r in (("one at a time", seq), ("concurrent", con)):
                print(f"repeat {rep + 1} {name:>13}: {r['tokens'] / r['wall']:7.1f} tokens/s, wall {r['wall']:6.1f} s, "
                      f"latency p50 {r['p50']:.2f} s p95 {r['p95']:.2f} s, server peak {r['peak_mb']:.0f} MB")
            ratios.append((con["tokens"] / con["wall"]) / (seq["tokens"] / seq["wall"]))
        print(f"{a.requests} greedy requests over {a.users} users, {a.max_tokens} new tokens at most; answers identical")
        print_speedups(ratios)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
