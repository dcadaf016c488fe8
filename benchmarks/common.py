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
