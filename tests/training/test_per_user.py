"""``bapo train --per-user``: many users' adapters in one job, each as if trained alone."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bapo.data.config import DataConfig
from bapo.errors import DataError
from bapo.training import per_user
from bapo.training.config import TrainConfig
from bapo.training.per_user import train_per_user
from bapo.training.run import train
from tests.helpers import make_pairs, write_jsonl


def cfg_for(tiny_model, data: Path, out: Path, cache: Path, **kw) -> TrainConfig:
    cfg = TrainConfig(model=tiny_model, out=str(out), cache_dir=str(cache), data=DataConfig(path=str(data), holdout=0.25),
                      max_steps=3, batch_size=2, lr=5e-3, save_steps=100, **kw)
    cfg.base.max_new_tokens = 6
    return cfg


def adapter(folder) -> dict:
    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def test_users_trained_together_equal_each_trained_alone(tmp_path, tiny_model):
    rows = make_pairs(8, 1, user="ann") + [{**r, "prompt": r["prompt"] + " (b)", "chosen": r["chosen"] + "!"}
                                           for r in make_pairs(6, 1, user="bo")]
    data = write_jsonl(tmp_path / "all.jsonl", rows)
    together = train_per_user(cfg_for(tiny_model, data, tmp_path / "many", tmp_path / "c1", per_user=True))
    assert [u.user for u in together.users] == ["ann", "bo"] and [u.pairs for u in together.users] == [6, 4]
    assert (tmp_path / "many" / "users.csv").read_text().startswith("user,pairs,holdout_pairs,steps,final_loss")
    for user in ("ann", "bo"):
        alone = cfg_for(tiny_model, data, tmp_path / f"alone_{user}", tmp_path / f"c_{user}")  # its own cache
        alone.data.user = user
        train(alone)
        a, b = adapter(tmp_path / "many" / user), adapter(tmp_path / f"alone_{user}")
        # Stated tolerance 1e-5 (the lora_B weights moved to ~7e-3): the joint reference pass batches other
        # sequences together, which may change float32 rounding; measured 2026-11-24: identical (difference 0).
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
        held = [json.loads(x) for x in (tmp_path / "many" / user / "holdout.jsonl").read_text().splitlines()]
        assert held == [json.loads(x) for x in (tmp_path / f"alone_{user}" / "holdout.jsonl").read_text().splitlines()]


def test_a_folder_of_files_bad_users_and_resume(tmp_path, tiny_model, monkeypatch):
    folder = tmp_path / "users"
    folder.mkdir()
    write_jsonl(folder / "ann.jsonl", make_pairs(6, 1))
    write_jsonl(folder / "cy.jsonl", make_pairs(6, 1) + [{"prompt": "p", "chosen": "", "rejected": "x"}])
    cfg = cfg_for(tiny_model, folder, tmp_path / "out", tmp_path / "c", per_user=True)
    with pytest.raises(DataError, match=r"cy.jsonl:7: chosen: empty"):
        train_per_user(cfg)
    assert not (tmp_path / "out").exists()  # reported before any model work
    cfg.skip_bad_users = True
    done = train_per_user(cfg)
    assert [u.user for u in done.users] == ["ann"] and "cy.jsonl:7: chosen: empty" in done.skipped["cy"]
    assert "cy" in (tmp_path / "out" / "skipped.txt").read_text()
    monkeypatch.setattr(per_user, "fit", lambda *a, **k: pytest.fail("a finished user was trained again"))
    assert [u.user for u in train_per_user(cfg).users] == ["ann"]


def test_records_without_a_usable_user_id_are_named(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "d.jsonl", make_pairs(2, 1, user="ann") + make_pairs(1, 1) +
                       [{**make_pairs(1, 1)[0], "user_id": "../eve"}])
    with pytest.raises(DataError) as e:
        train_per_user(cfg_for(tiny_model, data, tmp_path / "o", tmp_path / "c", per_user=True))
    assert "d.jsonl:3: user_id: missing" in str(e.value) and "d.jsonl:4: user_id: '../eve' cannot name" in str(e.value)
