"""Independent jobs (users' adapters, for now) as Ray tasks on a cluster (``--executor ray``).

Ray, not a scheduler written here: it places each task where its declared resources (CPUs, GPUs, memory) are free,
retries a task whose worker or node died (``max_retries``), and the driver waits on the tasks as they finish.

**The cache.** Every task reads and writes the reference cache (base responses, log-probs, scores) through one Ray
actor, :class:`CacheActor`, that holds the driver's own SQLite store on the driver's node: one writer per cache, on a
local disk. SQLite over NFS is not safe (its locks are advisory there, and WAL needs shared memory that spans no
hosts), and per-task caches merged afterwards would compute again what another task had just computed. A task that
dies loses nothing the actor has; its retry reads back what its first try computed.

**Files.** Outputs go, as in a local run, into the output folder, which every node must see at the same path (a
shared filesystem): relative paths are refused (:func:`require_absolute`). Each task writes atomically as locally
(checkpoints, then ``run.json`` last), so a retried task resumes from its checkpoints and never leaves half a result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from bapo import progress
from bapo.errors import BapoError, ConfigError
from bapo.runtime import reference
from bapo.runtime.config import ClusterSettings
from bapo.runtime.store import Store


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("executor: ray is not installed (pip install 'bapo[ray]')") from None
    return ray


def require_absolute(**paths: str) -> None:
    """Under ``--executor ray`` every node reads and writes these paths: a relative one means a different folder on
    each node (its worker's working directory). One line naming the first."""
    for name, path in paths.items():
        if path and not Path(path).is_absolute():
            raise ConfigError(f"{name}: '{path}' is relative; with --executor ray give an absolute path on a "
                              f"filesystem every node of the cluster sees")


def connect(settings: ClusterSettings) -> None:
    """Join the cluster at ``settings.ray_address`` (``auto``: the one running here), or start a new local one; the
    workers import bapo as this process does."""
    ray = _ray()
    if ray.is_initialized():
        return
    env = {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HF_HOME", "BAPO_CACHE_DIR")}
    # empty: "local", a new instance here; Ray's own default would join whatever /tmp/ray/ray_current_cluster names,
    # which a cluster that has since died leaves behind (ray.init then waits on it)
    ray.init(address=settings.ray_address or "local", include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {**env, "TQDM_DISABLE": "1"}})


class CacheActor:
    """The driver's cache (:class:`~bapo.runtime.store.Store`), served to tasks: the one process that writes it."""

    def __init__(self, path: str):
        self.store = Store(path)

    def call(self, method: str, *args):
        return getattr(self.store, method)(*args)


@dataclass
class RemoteStore:
    """A :class:`~bapo.runtime.store.Store` whose every read and write is a call to the driver's :class:`CacheActor`
    (the same methods, so :class:`~bapo.runtime.reference.Reference` takes either)."""

    actor: Any

    def _call(self, method: str, *args):
        return _ray().get(self.actor.call.remote(method, *args))

    def get_generations(self, keys):
        return self._call("get_generations", list(keys))

    def put_generations(self, items):
        self._call("put_generations", items)

    def get_logps(self, keys):
        return self._call("get_logps", list(keys))

    def put_logps(self, items):
        self._call("put_logps", items)

    def get_eval(self, key):
        return self._call("get_eval", key)

    def put_eval(self, key, scores):
        self._call("put_eval", key, scores)

    def get_vectors(self, keys):
        return self._call("get_vectors", list(keys))

    def put_vectors(self, items):
        self._call("put_vectors", items)

    def close(self) -> None:
        pass


_ACTORS: dict[str, Any] = {}  # the driver's cache actors by file, alive as long as the driver


def cache_actor(path: Path):
    """The :class:`CacheActor` over ``path``, pinned to this (the driver's) node, where the file is; one per file."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if str(path) not in _ACTORS:
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        _ACTORS[str(path)] = ray.remote(num_cpus=0)(CacheActor).options(scheduling_strategy=here).remote(str(path))
    return _ACTORS[str(path)]


@dataclass
class Outcome:
    """What the tasks gave: each job's result by its name, and the jobs that failed on their own input, with why."""

    results: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def run_tasks(fn: Callable[..., Any], jobs: Iterable[tuple[str, tuple]], settings: ClusterSettings, label: str,
              show: bool = True) -> Outcome:
    """``fn(*args)`` for every named job, each one Ray task with the settings' resources, under one progress bar.
    A task whose worker or node dies is retried (``settings.task_retries``); one that raises fails alone, named with
    its first line in :attr:`Outcome.failed`, and the rest run on."""
    ray = _ray()
    resources = {"num_cpus": settings.task_cpus, "num_gpus": settings.task_gpus}
    if settings.task_memory_gb:
        resources["memory"] = int(settings.task_memory_gb * 2**30)
    # max_retries: a worker or node that died; an exception of the task's own is not retried (it would fail again)
    remote = ray.remote(fn).options(**resources, max_retries=settings.task_retries, retry_exceptions=False)
    running = {remote.remote(*args): name for name, args in jobs}
    out = Outcome()
    with progress.bar(f"{label} (Ray tasks on {_describe(ray)})", len(running), show) as advance:
        pending = list(running)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                name = running[ref]
                try:
                    out.results[name] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    out.failed[name] = _first_line(e)
                except ray.exceptions.RayError as e:  # its worker or node died on every try
                    out.failed[name] = f"{type(e).__name__} after {settings.task_retries + 1} tries: " + \
                        str(e).strip().splitlines()[0]
                advance(1)
    return out


def _describe(ray) -> str:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)
    return f"{len(nodes)} node{'s' * (len(nodes) != 1)}, {cpus:g} CPUs"


def _first_line(e: Exception) -> str:
    """The task's own error in one line: a :class:`BapoError`'s message, else the exception's type and message."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BapoError):
        return str(cause).splitlines()[0]
    if cause is not None:
        return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    return str(e).strip().splitlines()[-1]


_MODELS: dict[tuple, Any] = {}  # this worker process's loaded model: loaded once, reused by its next tasks


@contextmanager
def task_threads(cpus: float) -> Iterator[None]:
    """This process at a task's torch thread count while inside: where the tasks scored models, the driver reads
    their answers from the cache (on a CPU greedy answers are keyed by the thread count), and computes what is left
    the same way."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cpus)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def in_task(fn: Callable[..., Any], cache, threads: float, *args) -> Any:
    """``fn(*args)`` as a Ray task runs it: the driver's cache through ``cache`` (a :class:`CacheActor`) and the
    worker's loaded model for every reference it opens (:data:`bapo.runtime.reference.IN_TASK`), ``threads`` torch
    threads (the task's CPUs). A task that raises drops the worker's model: it may have been left with an adapter on."""
    import torch

    torch.set_num_threads(max(1, int(threads)))  # the task's CPUs, whatever the worker process started with
    reference.IN_TASK.update(store=RemoteStore(cache), models=_MODELS)
    try:
        return fn(*args)
    except BaseException:
        _MODELS.clear()
        raise
    finally:
        reference.IN_TASK.clear()


def run_in_tasks(fn: Callable[..., Any], jobs: Iterable[tuple[str, tuple]], settings: ClusterSettings, cache_file: Path,
                 label: str, show: bool = True) -> Outcome:
    """:func:`run_tasks` of ``fn`` over ``jobs``, each inside :func:`in_task`: every reference a task opens reads and
    writes the cache at ``cache_file`` through one :class:`CacheActor` on this node."""
    connect(settings)
    cache = cache_actor(cache_file)
    return run_tasks(in_task, ((name, (fn, cache, settings.task_cpus, *args)) for name, args in jobs), settings,
                     label, show)
