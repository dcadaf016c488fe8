"""Outputs are written whole or not at all."""

import json

import pytest

from bapo import io


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "out.json"
    io.write_json(target, {"a": 1})
    io.write_jsonl(tmp_path / "rows.jsonl", [{"x": 1}, {"x": "é"}])
    assert json.loads(target.read_text()) == {"a": 1}
    assert [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()] == [{"x": 1}, {"x": "é"}]
    io.atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    io.atomic_write_text(target, "old")

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_text(target, "new and longer")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_dead_writers_temporary_is_removed_and_a_live_writers_is_kept(tmp_path):
    import os
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".out.json.{host}-{dead.pid}.abc.tmp"
    live = tmp_path / f".out.json.{host}-{os.getppid()}.def.tmp"  # another process, still running, writing out.json
    stale.write_text("half")
    live.write_text("half")
    io.write_json(tmp_path / "out.json", {"a": 1})
    assert not stale.exists() and live.exists() and json.loads((tmp_path / "out.json").read_text()) == {"a": 1}


def _write_many(path: str, i: int) -> None:
    for r in range(50):
        io.write_json(path, {"writer": i, "round": r, "pad": "x" * 1000})


def test_processes_writing_one_file_at_once_all_succeed_and_leave_it_whole(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.starmap(_write_many, [(str(tmp_path / "out.json"), i) for i in range(4)])  # raises if any write failed
    assert json.loads((tmp_path / "out.json").read_text())["round"] == 49
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
