"""Two processes (torchrun, gloo on CPU) train the adapter one process trains with the same global batch, and split
the reference's work between them: each generates and scores a share, both get all of it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers import make_pairs, write_jsonl

COMMON = ["--method", "bapo", "--max-steps", "4", "--max-length", "96", "--max-prompt-length", "48",
          "--base-max-new-tokens", "8", "--base-batch-size", "4", "--device", "cpu", "--dtype", "float32",
          "--lr", "1e-3", "--seed", "3"]  # float32: the processes' gradients then agree to float rounding


def train(tmp_path, model, out, batch_size, launcher=()) -> subprocess.CompletedProcess:
    cmd = [*launcher, "-m", "bapo.cli", "train", "--model", model, "--data", str(tmp_path / "pairs.jsonl"),
           "--out", str(tmp_path / out), "--batch-size", str(batch_size), *COMMON]
    proc = subprocess.run(cmd if launcher else [sys.executable, *cmd], capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                               "BAPO_CACHE_DIR": str(tmp_path / f"cache_{out}")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_train_the_single_process_adapter_and_share_the_reference_work(tmp_path, tiny_model, launcher):
    write_jsonl(tmp_path / "pairs.jsonl", make_pairs(20, 1))
    train(tmp_path, tiny_model, "one", 4)
    runner = {"torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
              "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "--main_process_port", "0"]}[launcher]
    proc = train(tmp_path, tiny_model, "two", 2, runner)  # 2 processes x 2 pairs = the same global batch of 4
    assert proc.stdout.count("adapter written") == 1  # the main process reports
    one, two = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2) and one["steps"] == two["steps"] == 4
    # each process generated and scored a share of the reference's work, together all of it
    shares = two["reference_work_by_rank"]
    assert all(s.get("generations", 0) > 0 and s.get("logps", 0) > 0 for s in shares)
    for kind in ("generations", "logps"):
        assert sum(s[kind] for s in shares) == one["reference_work_by_rank"][0][kind]
    r1, r2 = ([json.loads(x) for x in (tmp_path / d / "base_responses.jsonl").read_text().splitlines()]
              for d in ("one", "two"))
    assert [r["base_responses"] for r in r1] == [r["base_responses"] for r in r2]  # the same texts
    assert [x for r in r1 for x in r["ref_logps"]] == pytest.approx([x for r in r2 for x in r["ref_logps"]], rel=1e-5)
    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("one", "two"))
    # Gradients agree to float rounding (gloo's all-reduce sums in another order); AdamW's first steps can turn a
    # rounding difference in a near-zero gradient into a step of up to lr, hence the bound: lr x steps.
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3 * 4
    assert max(a[k].abs().max().item() for k in a) > 1e-2  # the adapters did move
    m1, m2 = ((tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("one", "two"))
    assert json.loads(m1[0])["grad_norm"] == pytest.approx(json.loads(m2[0])["grad_norm"], rel=1e-5)


def test_two_processes_split_an_evaluation_and_report_the_single_process_scores(tmp_path, tiny_model):
    write_jsonl(tmp_path / "pairs.jsonl", make_pairs(20, 1))
    for name in ("a", "b", "c"):
        train(tmp_path, tiny_model, name, 4)
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"query": f"Question: What is {i} plus 1?\nAnswer:",
                                              "choices": [str(i + 1), str(i + 2), "x"], "gold": 0} for i in range(12)])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {w}."} for w in "abcdef"])
    (tmp_path / "suite.yaml").write_text(f"tasks:\n  - {{name: sums, kind: mc, path: {mc}}}\n"
                                         f"  - {{name: drift, kind: drift, path: {prompts}, max_new_tokens: 6}}\n")
    ev = ["-m", "bapo.cli", "eval", "--model", tiny_model, "--suite", str(tmp_path / "suite.yaml"), "--device", "cpu",
          "--max-length", "96", "--max-prompt-length", "48", "--adapters", *(str(tmp_path / n) for n in "abc"),
          "--lm-eval-tasks", "fake_task"]
    # lm-evaluation-harness's stand-in (tests/fakes/lm_eval): returns results only where LOCAL_RANK is 0, as 0.4.13 does
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1] / "fakes")}
    results, harness = [], []
    for out, launcher in (("e1", [sys.executable]),
                          ("e2", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])):
        log = tmp_path / f"lm_eval_{out}.jsonl"
        proc = subprocess.run([*launcher, *ev, "--out", str(tmp_path / out)], capture_output=True, text=True,
                              timeout=600, env={**env, "BAPO_CACHE_DIR": str(tmp_path / f"cache_{out}"),
                                                "FAKE_LM_EVAL_LOG": str(log)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads((tmp_path / out / "results.json").read_text()))
        harness.append([json.loads(x) for x in log.read_text().splitlines()])
    one, two = results
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["models_scored_by_rank"] == [2, 2]  # base, a, b, c: two models each
    assert [(r["model"], r["task"], r["metric"], r["value"], r["delta"]) for r in one["records"]] == \
        [(r["model"], r["task"], r["metric"], r["value"], r["delta"]) for r in two["records"]]
    # the harness ran once per model (not once per process), two models in each process, and every model's result
    # reached the table, those of the process of rank 1 included
    assert len(harness[0]) == len(harness[1]) == 4 and sorted(h["rank"] for h in harness[1]) == ["0", "0", "1", "1"]
    assert sorted(r["model"] for r in two["records"] if r["task"] == "lm_eval:fake_task") == ["a", "b", "base", "c"]


def test_two_processes_train_every_users_adapter_as_one_process_does(tmp_path, tiny_model):
    """bapo train --per-user under torchrun: each user's adapter as the single-process job's."""
    rows = [r for u in ("ann", "bob") for r in make_pairs(10, 1, user=u)]
    write_jsonl(tmp_path / "users.jsonl", rows)
    common = ["-m", "bapo.cli", "train", "--per-user", "--model", tiny_model, "--data", str(tmp_path / "users.jsonl"),
              *COMMON[:-4], "--lr", "1e-3"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    for out, batch, launcher in (("one", "4", [sys.executable]),
                                 ("two", "2", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                               "--nproc_per_node", "2"])):
        proc = subprocess.run([*launcher, *common, "--batch-size", batch, "--out", str(tmp_path / out)],
                              capture_output=True, text=True, timeout=600,
                              env={**env, "BAPO_CACHE_DIR": str(tmp_path / f"cache_{out}")})
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "two" / "users.csv").read_text().count("\n") == 3
    for user in ("ann", "bob"):
        a, b = (load_file(str(tmp_path / d / user / "adapter_model.safetensors")) for d in ("one", "two"))
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3 * 4, user


def test_two_processes_take_ktos_reference_point_over_the_global_batch(tmp_path, tiny_model):
    """KTO's z0 is the mean log-ratio of every process's mismatched answers (TRL gathers it): two processes of 2 rated
    answers train the adapter of one process with a micro-batch of 4, and log the same z0. Each process's own z0
    (its 2 answers) would not."""
    write_jsonl(tmp_path / "pairs.jsonl", make_pairs(20, 1))
    kto = ["--method", "kto", *COMMON[2:]]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    for out, batch, launcher in (("one", ["--batch-size", "4", "--micro-batch-size", "4"], [sys.executable]),
                                 ("two", ["--batch-size", "2", "--micro-batch-size", "2"],
                                  [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                   "2"])):
        proc = subprocess.run([*launcher, "-m", "bapo.cli", "train", "--model", tiny_model, "--data",
                               str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / out), *batch, *kto],
                              capture_output=True, text=True, timeout=600,
                              env={**env, "BAPO_CACHE_DIR": str(tmp_path / f"cache_{out}")})
        assert proc.returncode == 0, proc.stderr[-3000:]
    m1, m2 = ([json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("one", "two"))
    steps = [m for m in m1 if "kl" in m]
    assert len(steps) >= 3 and max(m["kl"] for m in steps) > 1e-3  # z0 is not stuck at its clamp
    # the loss of each step depends on z0 (logged kl: the mean of the processes' z0s would match it either way)
    for key in ("kl", "loss"):
        assert [m[key] for m in steps] == pytest.approx([m[key] for m in m2 if "kl" in m], rel=1e-5, abs=1e-7), key
    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("one", "two"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3 * 4
