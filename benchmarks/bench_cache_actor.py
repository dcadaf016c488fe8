"""The reference cache as Ray tasks see it (``--executor ray``): every read and write a call to one actor on the
driver's node (:class:`bapo.runtime.cluster.CacheActor`), against the same SQLite store opened in the process.

    unshare -n sh -c 'ip link set lo up && exec python benchmarks/bench_cache_actor.py [--entries 20000] [--batch 128]'

Ray only inside a network namespace with loopback alone (it listens on the machine's address otherwise). One Ray
task writes ``--entries`` log-prob entries in batches of ``--batch`` (as the reference step commits them), then
reads them back in the same batches; the same in this process against a local store. Prints the machine, the
command, entries/s each way per side (min / median / max over repeats), and the actor's cost per call. What a
training task spends on the cache is one read of its user's entries, so the figure to compare with is a user's
training time (minutes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_header  # noqa: E402


def work(store, entries: int, batch: int) -> tuple[float, float]:
    """Seconds to write, then read back, ``entries`` log-prob entries in batches."""
    keys = [f"k{i:08d}" for i in range(entries)]
    t = time.perf_counter()
    for i in range(0, entries, batch):
        store.put_logps({k: (-float(j), j) for j, k in enumerate(keys[i : i + batch])})
    put = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, entries, batch):
        got = store.get_logps(keys[i : i + batch])
        assert len(got) == len(keys[i : i + batch])
    return put, time.perf_counter() - t


def in_task(cache, entries: int, batch: int) -> tuple[float, float]:
    from bapo.runtime.cluster import RemoteStore

    return work(RemoteStore(cache), entries, batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import ray

    from bapo.runtime import cluster
    from bapo.runtime.config import ClusterSettings
    from bapo.runtime.store import Store

    print_header()
    cluster.connect(ClusterSettings(executor="ray"))
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            local = Store(Path(tmp) / f"local-{r}.sqlite")
            put, get = work(local, a.entries, a.batch)
            local.close()
            actor = cluster.cache_actor(Path(tmp) / f"actor-{r}.sqlite")
            rput, rget = ray.get(ray.remote(in_task).remote(actor, a.entries, a.batch))
            calls = 2 * -(-a.entries // a.batch)
            for name, v in (("local write", put), ("local read", get), ("actor write", rput), ("actor read", rget)):
                rates.setdefault(name, []).append(a.entries / v)
            print(f"repeat {r + 1}: local write {put:.2f} s, read {get:.2f} s; through the actor write {rput:.2f} s, "
                  f"read {rget:.2f} s ({1000 * (rput + rget - put - get) / calls:.2f} ms more per call)", flush=True)
    print(f"\n{a.entries} entries in batches of {a.batch}; entries/s min / median / max:")
    for name, v in rates.items():
        print(f"  {name:>11}: {min(v):9.0f} / {statistics.median(v):9.0f} / {max(v):9.0f}")


if __name__ == "__main__":
    main()
