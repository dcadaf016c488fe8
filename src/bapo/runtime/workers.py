"""Independent jobs (a study's models to score) in several local processes that split the CPU threads.

Why processes: a machine with more cores than one process uses well scores more models at once (on this project's
2-core CPU, 2 x 1 thread gave only 0.95-1.16x of 1 x 2 in float32, docs/PERFORMANCE.md). torch's CPU forward passes
score the same numbers at any thread count (per item: ``benchmarks/profile_eval.py``; a whole study's scores:
tests/studies/test_run.py), but in bfloat16 a greedy answer may change with it (``benchmarks/bench_eval_workers.py``),
so a study scores all its models at the workers' thread count (:func:`bapo.studies.run.evaluate_models`) and the
cache keeps answers apart by it (:func:`bapo.evaluation.tasks.generation_key`). Training does not give the same
numbers (a backward pass's sums may split differently across threads), so it is not run here. Jobs share only the
on-disk cache (SQLite, safe across processes).

Every worker starts fresh (``spawn``: a forked torch process can deadlock), writes its output to ``LOGS/worker-PID.log``
(progress bars of two processes would garble one terminal), and a job's exception is raised again in the caller.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from contextlib import contextmanager
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from bapo import progress


def _start(threads: int, logs: str) -> None:
    """A worker's set-up: its share of the threads, no bars, its output to its own log file."""
    os.environ["TQDM_DISABLE"] = "1"
    log = open(Path(logs) / f"worker-{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115 (open for its lifetime)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    import torch

    torch.set_num_threads(threads)


def worker_threads(workers: int) -> int:
    """Each of ``workers`` processes' equal share of this process's threads."""
    import torch

    return max(1, torch.get_num_threads() // workers)


@contextmanager
def scoring_threads(workers: int) -> Iterator[None]:
    """This process at one worker's share of the threads while inside (as it is with one worker): where a study's
    models are scored by ``workers`` processes, it reads their cached answers, and prices what is left, at their
    thread count (greedy answers on a CPU are keyed by it: :func:`bapo.evaluation.tasks.generation_key`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(worker_threads(workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int, logs: Path, label: str,
             show: bool = True, threads: int = 0) -> list[Any]:
    """``fn(*job)`` for every job, in ``workers`` processes with ``threads`` threads each (0: an equal share of this
    process's, :func:`worker_threads`); results in the order of ``jobs``. A failing job stops the rest (none is
    started after it) and its exception is raised."""
    logs.mkdir(parents=True, exist_ok=True)
    threads = threads or worker_threads(workers)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start, initargs=(threads, str(logs))) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        with progress.bar(f"{label} ({workers} processes x {threads} thread{'s' * (threads > 1)}, logs in {logs})",
                          len(futures), show) as advance:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                advance(len(done))
                for f in done:
                    if f.exception() is not None:
                        for p in pending:
                            p.cancel()
                        raise f.exception()
    return [f.result() for f in futures]
