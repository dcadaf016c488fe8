"""What the benchmarks here share: the command and machine first, the ratio summary last, and the peers' servers
started the same way."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def print_header() -> None:
    import torch

    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")


def print_speedups(ratios: list[float]) -> None:
    r = sorted(ratios)
    print(f"speed-up min/median/max: {r[0]:.2f}x / {statistics.median(r):.2f}x / {r[-1]:.2f}x")


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak resident MiB) of one command in its own process, from its own rusage (os.wait4), not the
    whole benchmark's. Its stderr goes to a file (a pipe nobody reads would stall a chatty process); on failure the
    benchmark stops with its tail."""
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryFile(mode="w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env={**os.environ, "TQDM_DISABLE": "1", **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if status:
            err.seek(0)
            sys.exit(f"failed: {shlex.join(cmd)}\n{err.read()[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def matmul_peak_gflops(sizes: tuple[int, ...] = (1024, 2048), seconds: float = 3.0, warmup: int = 3) -> float:
    """GFLOP/s of the best round of fp32 n x n matmuls (rounds of about 0.1 s, about ``seconds`` per size), with the
    threads torch uses here: the peak that model FLOP utilisation is measured against. Every benchmark uses this one
    definition: on this shared machine one short probe reads anywhere from 130 to 185 GFLOP/s (2026-11-24), so the
    best of several sizes over a few seconds is taken."""
    import time

    import torch

    best = 0.0
    for n in sizes:
        x, y = torch.randn(n, n), torch.randn(n, n)
        for _ in range(warmup):
            x @ y
        t = time.perf_counter()
        x @ y
        per_round = max(1, int(0.1 / max(time.perf_counter() - t, 1e-6)))
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            for _ in range(per_round):
                x @ y
            best = max(best, per_round * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


class Counter:
    """Positions through the body and rows through the output head, counted by forward hooks."""

    def __init__(self, body, head):
        self.positions = self.head_rows = 0
        body.register_forward_pre_hook(self._body, with_kwargs=True)
        head.register_forward_pre_hook(self._head)

    def _body(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:  # called with embeddings
            ids = kwargs["inputs_embeds"][..., 0]
        self.positions += ids.numel()

    def _head(self, module, args):
        self.head_rows += args[0].numel() // args[0].shape[-1]

    def take(self) -> tuple[int, int]:
        out = (self.positions, self.head_rows)
        self.positions = self.head_rows = 0
        return out


def wait_up(proc: subprocess.Popen, url: str, log: Path, name: str, minutes: int = 15) -> None:
    """Wait until ``url`` answers; exit with the server's log named when it dies or does not answer in time."""
    for _ in range(60 * minutes):
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"{name} exited; see {log}")
            time.sleep(1)
    proc.kill()
    sys.exit(f"{name} did not start in {minutes} minutes; see {log}")


def start_vllm(python: str, model_dir: Path, port: int, log: Path, dtype: str, lora_rank: int = 0,
               lora_modules: list[str] | None = None) -> tuple[subprocess.Popen, float]:
    """vLLM's OpenAI server (``python``: its own environment, benchmarks/vllm_env.sh) on loopback, serving
    ``model_dir`` as ``base``, and its start-up seconds. ``lora_rank``: LoRA enabled up to that rank, adapters loaded
    at run time (``/v1/load_lora_adapter``) or named at start (``lora_modules``, ``NAME=PATH`` each)."""
    t = time.perf_counter()
    lora = ["--enable-lora", "--max-lora-rank", str(lora_rank)] if lora_rank else []
    if lora_modules:
        lora += ["--max-loras", str(len(lora_modules)), "--lora-modules", *lora_modules]
    proc = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                             "--served-model-name", "base", "--dtype", dtype, "--max-model-len", "2048",
                             "--gpu-memory-utilization", "0.15", "--host", "127.0.0.1", "--port", str(port), *lora],
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"} if lora_rank else {})})
    wait_up(proc, f"http://127.0.0.1:{port}/v1/models", log, "vLLM")
    return proc, time.perf_counter() - t
