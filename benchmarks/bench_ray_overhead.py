"""What a Ray task costs: ``bapo train --per-user`` on 8 users, the local executor against ``--executor ray``.

    python benchmarks/bench_ray_overhead.py [--users 8] [--pairs 8] [--repeats 3] [--task-cpus 2]

Every run is a fresh ``bapo train --per-user`` process inside a network namespace with loopback alone (``unshare -n``:
Ray listens on the machine's address by default, and these machines send nothing beyond loopback), on DSP's domain
users (../shared/data, as ``bench_many_users.py`` writes them), with the same seed and settings and an empty bapo cache
(the model converted beforehand). With ``--task-cpus`` equal to the machine's cores, one user's task runs at a time,
at the same thread count as the local run: what differs is Ray's own cost (starting a local instance, its worker
processes, each worker loading the model for its first task, the cache through the driver's actor). Repeats alternate
the two (local first on odd repeats, Ray first on even ones). Ray's start-up alone (``ray.init`` of a new local
instance and its shutdown, in a fresh process) is timed apart, as often. Prints the machine, the command, each run's
wall time, min / median / max per side, Ray / local per repeat, and the overhead per user beyond start-up. Nothing
else may run meanwhile.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_many_users import SHARED, write_users  # noqa: E402  (beside this script)
from common import print_header, run_measured  # noqa: E402

NAMESPACE = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
STARTUP = ("import time; t = time.perf_counter(); from bapo.runtime.cluster import connect; "
           "from bapo.runtime.config import ClusterSettings; import ray; connect(ClusterSettings(executor='ray')); "
           "up = time.perf_counter() - t; ray.shutdown(); print(up, time.perf_counter() - t)")


def startup_seconds(env: dict) -> tuple[float, float]:
    """(seconds until Ray is up, seconds until it is shut down again) in a fresh process, imports included."""
    out = subprocess.run([*NAMESPACE, sys.executable, "-c", STARTUP], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"ray.init failed:\n{out.stderr[-3000:]}")
    up, total = map(float, out.stdout.split()[-2:])
    return up, total


def mmm(values: list[float], fmt: str = "{:.1f}") -> str:
    v = sorted(values)
    return " / ".join(fmt.format(x) for x in (v[0], statistics.median(v), v[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--task-cpus", type=float, default=float(os.cpu_count() or 1))
    a = ap.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: this benchmark reads DSP's domain users from ../shared/data")
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        sys.exit("cannot make a network namespace here (unshare -n): Ray is run only inside one")
    from bapo.runtime.models import resolve_model

    print_header()
    model = resolve_model(a.model)  # converted once here, outside the timing
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--per-user", "--model", model, "--method", "bapo", "--epochs", "1", "--batch-size", "4",
              "--holdout", "0.1", "--seed", "42", "--save-steps", "1000"]
    bapo = [*NAMESPACE, sys.executable, "-m", "bapo.cli", "train"]
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    starts: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "users"
        n = write_users(data, a.users, a.pairs)
        for rep in range(a.repeats):
            for side in (("local", "ray") if rep % 2 == 0 else ("ray", "local")):
                extra = ["--executor", "ray", "--task-cpus", f"{a.task_cpus:g}"] if side == "ray" else []
                out, cache = Path(tmp) / f"{side}{rep}", Path(tmp) / f"cache_{side}{rep}"
                wall, peak = run_measured(bapo + ["--data", str(data), "--out", str(out), "--cache-dir", str(cache),
                                                  *common, *extra], env)
                trained = sum(1 for _ in out.glob("*/run.json"))
                if trained != a.users:
                    sys.exit(f"{side}: {trained} of {a.users} users trained")
                walls[side].append(wall)
                print(f"repeat {rep + 1} {side:>5}: {wall:6.1f} s ({trained} users, peak {peak:.0f} MiB in the "
                      f"driver)", flush=True)
            up, total = startup_seconds(env)
            starts.append(up)
            print(f"repeat {rep + 1} ray.init alone: {up:.1f} s up, {total:.1f} s with shutdown", flush=True)
    ratios = [r / lo for r, lo in zip(walls["ray"], walls["local"])]
    per_user = [(r - lo - s) / a.users for r, lo, s in zip(walls["ray"], walls["local"], starts)]
    print(f"\n{a.users} users x {a.pairs} pairs ({n} in all), bapo, 1 epoch, batch 4, task CPUs {a.task_cpus:g}")
    print(f"wall seconds min / median / max: local {mmm(walls['local'])}, ray {mmm(walls['ray'])}")
    print(f"ray / local: {mmm(ratios, '{:.2f}x')}")
    print(f"Ray's start-up (ray.init, fresh process, imports included): {mmm(starts)} s")
    print(f"beyond start-up, per user (ray - local - start-up) / {a.users}: {mmm(per_user)} s")


if __name__ == "__main__":
    main()
