"""What every A/B speed benchmark here prints: the command and machine first, the ratio summary last."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys


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
