"""The kill harness: each long command is killed (SIGKILL) at seeded random moments and rerun, the same command each
time. Every rerun completes, no output file is ever half-written, and the final outputs equal an uninterrupted run's.

Checkpoints are the Trainer's internal state, written in place: a kill can leave the newest one partial, which a
resume passes over (see bapo.training.run.last_complete_checkpoint); every other file bapo writes is renamed into
place whole."""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.helpers import make_pairs, write_jsonl

SMALL = ["--max-length", "96", "--max-prompt-length", "48", "--device", "cpu"]


def whole(folder: Path, finished: bool = True) -> None:
    """Every output under ``folder`` is complete: every JSON, JSONL, YAML and safetensors file parses (JSONL to its
    last newline); once ``finished``, no temporary file is left (a kill may leave one, hidden, beside its target: the
    next write of that target removes it). Checkpoints are skipped (see the module docstring)."""
    for f in folder.rglob("*"):
        if not f.is_file() or "checkpoints" in f.parts:
            continue
        if f.name.endswith(".tmp") or ".saving" in f.parts:
            assert not finished, f"left behind: {f}"
            continue
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".jsonl":
            text = f.read_text()
            assert not text or text.endswith("\n"), f"cut JSONL: {f}"
            [json.loads(x) for x in text.splitlines() if x.strip()]
        elif f.suffix == ".yaml":
            yaml.safe_load(f.read_text())
        elif f.suffix == ".safetensors":
            load_file(str(f))


def run(cmd: list[str], env: dict) -> float:
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.time() - t0


def kill_and_rerun(cmd: list[str], out: Path, env: dict, seconds: float, seed: int, kills: int = 2) -> None:
    """Start ``cmd``, SIGKILL it at a seeded moment within its uninterrupted run time ``seconds``, check the outputs;
    ``kills`` times; then rerun it to the end."""
    rng = random.Random(seed)
    for _ in range(kills):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            proc.wait(timeout=rng.uniform(0.3 * seconds, 0.95 * seconds))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if out.exists():
            whole(out, finished=False)
    run(cmd, env)
    whole(out)


@pytest.fixture
def env(tmp_path):
    return {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"}


def bapo(*args: str) -> list[str]:
    return [sys.executable, "-m", "bapo.cli", *args]


def cache(env: dict, path: Path) -> dict:
    return {**env, "BAPO_CACHE_DIR": str(path)}


def test_train_killed_and_rerun_gives_the_uninterrupted_adapter(tmp_path, tiny_model, env):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(24, 1))
    args = ["train", "--model", tiny_model, "--data", str(data), "--method", "bapo", "--max-steps", "8",
            "--save-steps", "2", "--batch-size", "2", "--lr", "1e-3", "--base-batch-size", "4", "--resume", *SMALL]
    seconds = run(bapo(*args, "--out", str(tmp_path / "whole")), cache(env, tmp_path / "c1"))
    kill_and_rerun(bapo(*args, "--out", str(tmp_path / "killed")), tmp_path / "killed", cache(env, tmp_path / "c2"),
                   seconds, seed=1, kills=3)
    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("whole", "killed"))
    assert all(a[k].allclose(b[k], atol=1e-5) for k in a)


def test_base_and_eval_killed_and_rerun_give_the_uninterrupted_outputs(tmp_path, tiny_model, env):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(40, 1))
    base = ["base", "--model", tiny_model, "--data", str(data), "--batch-size", "4", "--max-new-tokens", "24", *SMALL]
    seconds = run(bapo(*base, "--out", str(tmp_path / "b1.jsonl")), cache(env, tmp_path / "c1"))
    kill_and_rerun(bapo(*base, "--out", str(tmp_path / "b2" / "base.jsonl")), tmp_path / "b2",
                   cache(env, tmp_path / "c2"), seconds, seed=2)
    one = [json.loads(x) for x in (tmp_path / "b1.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "b2" / "base.jsonl").read_text().splitlines()]
    assert [r["base_responses"] for r in one] == [r["base_responses"] for r in two]

    adapter = tmp_path / "adapter"
    run(bapo("train", "--model", tiny_model, "--data", str(data), "--method", "dpo", "--max-steps", "2",
             "--out", str(adapter), *SMALL), cache(env, tmp_path / "c1"))
    suite = tmp_path / "suite.yaml"
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"query": f"Question: What is {i} plus 1?\nAnswer:",
                                              "choices": [str(i + 1), str(i + 2), "x"], "gold": 0} for i in range(60)])
    suite.write_text(yaml.safe_dump({"tasks": [{"name": "sums", "kind": "mc", "path": str(mc)}]}))
    ev = ["eval", "--model", tiny_model, "--adapters", str(adapter), "--suite", str(suite), *SMALL]
    seconds = run(bapo(*ev, "--out", str(tmp_path / "e1")), cache(env, tmp_path / "c3"))
    kill_and_rerun(bapo(*ev, "--out", str(tmp_path / "e2")), tmp_path / "e2", cache(env, tmp_path / "c4"), seconds, 3)
    r1, r2 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("e1", "e2"))
    values = [[(r["model"].split("/")[-1], r["task"], r["metric"], round(r["value"], 6)) for r in x["records"]]
              for x in (r1, r2)]
    assert values[0] == values[1]


def test_per_user_training_killed_and_rerun_gives_every_users_adapter(tmp_path, tiny_model, env):
    rows = [r for u in ("ann", "bob", "cat") for r in make_pairs(10, 1, user=u)]
    data = write_jsonl(tmp_path / "users.jsonl", rows)
    args = ["train", "--per-user", "--model", tiny_model, "--data", str(data), "--method", "dpo", "--max-steps", "4",
            "--save-steps", "2", "--batch-size", "2", "--lr", "1e-3", *SMALL]
    seconds = run(bapo(*args, "--out", str(tmp_path / "whole")), cache(env, tmp_path / "c1"))
    kill_and_rerun(bapo(*args, "--out", str(tmp_path / "killed")), tmp_path / "killed", cache(env, tmp_path / "c2"),
                   seconds, seed=4, kills=3)
    for u in ("ann", "bob", "cat"):
        a, b = (load_file(str(tmp_path / d / u / "adapter_model.safetensors")) for d in ("whole", "killed"))
        assert all(a[k].allclose(b[k], atol=1e-5) for k in a), u


@pytest.mark.slow
def test_study_killed_and_rerun_gives_the_uninterrupted_table(tmp_path, tiny_model, env):
    from bapo.options import dump_yaml
    from tests.studies.test_run import mini_data
    from bapo.data.users import Sources
    from bapo.studies.config import StudyConfig, study_training

    train = study_training()
    train.model, train.epochs, train.batch_size, train.lr, train.save_steps = tiny_model, 1, 2, 5e-3, 2
    train.base.max_new_tokens, train.data.max_length, train.data.max_prompt_length = 6, 128, 64
    cfg = StudyConfig(users=["flip:0", "flip:1"], methods=["dpo", "bapo"], pairs_per_user=8, holdout_pairs=4,
                      eval_items=0, alignment_items=0, drift_prompts=3,
                      sources=Sources(data_dir=str(mini_data(tmp_path / "data"))), train=train)
    tables = []
    for name, kills in (("whole", 0), ("killed", 3)):
        cfg.out = str(tmp_path / name)
        (tmp_path / f"{name}.yaml").write_text(dump_yaml(cfg))
        cmd = bapo("study", "--config", str(tmp_path / f"{name}.yaml"))
        if kills:
            kill_and_rerun(cmd, tmp_path / name, cache(env, tmp_path / "c2"), seconds, seed=5, kills=kills)
        else:
            seconds = run(cmd, cache(env, tmp_path / "c1"))
        rows = list(csv.DictReader((tmp_path / name / "table.csv").open()))
        # every number but the wall-clock ones (what each cell's training took: train_seconds)
        tables.append([{k: v.replace(str(tmp_path / name), "X") for k, v in r.items() if not k.endswith("_seconds")}
                       for r in rows])
        assert all(float(r["train_seconds"]) > 0 for r in rows)
    assert tables[0] == tables[1] and len(tables[0]) == 4
