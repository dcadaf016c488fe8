"""Faults of the machine, not of the input: a folder that cannot be written, a full disk (a file size limit), and a
kill during a checkpoint. Each is one line and exit code 2, earlier outputs intact, and a rerun finishes the job."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from tests.helpers import make_pairs, write_jsonl

TRAIN = ["--method", "dpo", "--max-length", "96", "--max-prompt-length", "48", "--device", "cpu", "--lr", "1e-3"]


def bapo(*args: str, limit: int | None = None, cache: Path | None = None) -> subprocess.CompletedProcess:
    def preexec():  # a file size limit: writes past it fail as on a full disk (Python ignores SIGXFSZ)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **({"BAPO_CACHE_DIR": str(cache)} if cache else {})}
    return subprocess.run([sys.executable, "-m", "bapo.cli", *args], capture_output=True, text=True, timeout=600,
                          preexec_fn=preexec, env=env)


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_an_output_folder_under_a_file_is_one_line(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8, 1))
    (tmp_path / "file").write_text("x")
    proc = bapo("train", "--model", tiny_model, "--data", str(data), "--out", str(tmp_path / "file" / "out"),
                "--max-steps", "1", *TRAIN, cache=tmp_path / "cache")
    one_line_error(proc, str(tmp_path / "file" / "out"), "not a folder")


def test_a_full_disk_is_one_line_and_leaves_earlier_outputs_intact(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{**r, "user_id": "u"} for r in make_pairs(30, 2)])
    out = tmp_path / "balanced"
    args = ("balance", "--model", tiny_model, "--data", str(data), "--strategy", "none", "--out", str(out))
    assert bapo(*args, "--budget", "4", cache=tmp_path / "cache").returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = bapo(*args, "--budget", "30", limit=2000, cache=tmp_path / "cache")  # its report is larger than 2 kB
    one_line_error(proc, "cannot write", "file size limit")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file left, nothing half-written
    # the cache itself on a full disk: one line too
    proc = bapo("train", "--model", tiny_model, "--data", str(data), "--out", str(tmp_path / "t"), "--max-steps", "1",
                *TRAIN, limit=4096, cache=tmp_path / "fresh_cache")
    one_line_error(proc, "cannot write")


def test_a_kill_during_a_checkpoint_save_resumes_from_the_last_complete_one(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16, 1))
    common = ("train", "--model", tiny_model, "--data", str(data), "--max-steps", "4", "--save-steps", "2",
              "--batch-size", "2", *TRAIN)
    assert bapo(*common, "--out", str(tmp_path / "whole"), cache=tmp_path / "cache").returncode == 0
    assert bapo(*common, "--out", str(tmp_path / "cut"), cache=tmp_path / "cache").returncode == 0
    cut = tmp_path / "cut"
    # as if killed while writing its last checkpoint: the final outputs and checkpoint-4's trainer state missing
    for name in ("run.json", "adapter_model.safetensors", "adapter_config.json"):
        (cut / name).unlink()
    (cut / "checkpoints" / "checkpoint-4" / "trainer_state.json").unlink()
    shutil.rmtree(cut / "checkpoints" / "checkpoint-4" / "optimizer.pt", ignore_errors=True)
    again = bapo(*common, "--out", str(cut), "--resume", cache=tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-2000:]
    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("whole", "cut"))
    assert all(a[k].allclose(b[k], atol=1e-6) for k in a)
    steps = [[json.loads(x)["step"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
             for d in ("whole", "cut")]
    assert steps[0] == steps[1] and steps[0][-1] == 4  # no step logged twice
