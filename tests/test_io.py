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
