"""A long study carried to a new machine through git (studies/carry.py) goes on from the last adapter it scored."""

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

import bapo.studies.run
from bapo.errors import ConfigError
from bapo.io import as_dicts
from bapo.options import dump_yaml
from bapo.runtime.adapters import WEIGHTS_DIGEST, applied, read_adapter
from bapo.runtime.models import cpu_name
from bapo.studies.plan import plan
from bapo.studies.run import run_study
from tests.studies.test_run import study_cfg  # noqa: F401  (the miniature study)
from tests.studies.test_scripts import script


def test_a_study_scores_each_adapter_as_trained_and_a_new_machine_goes_on_from_the_last_scored(
        study_cfg, tmp_path, monkeypatch):  # noqa: F811
    study_cfg.users, study_cfg.frontier_scales = ["flip:1"], [0.5]
    events = []
    train, score = bapo.studies.run.train_cell, bapo.studies.run.score_into_cache
    monkeypatch.setattr(bapo.studies.run, "train_cell", lambda cfg, cell, out, console: events.append(
        ("train", cell.name)) or train(cfg, cell, out, console))
    monkeypatch.setattr(bapo.studies.run, "score_into_cache", lambda ev, labels: events.append(
        ("score", labels)) or score(ev, labels))
    first = run_study(study_cfg)
    # each adapter scored as soon as it is trained (the base model with the first, a DPO adapter at its frontier
    # scale too), so a study stopped part way keeps every adapter it trained but the one in hand
    assert events == [("train", "flip-1__dpo__s0"), ("score", ["base", "flip-1__dpo__s0"]),
                      ("score", ["flip-1__dpo__s0@0.5"]), ("train", "flip-1__bapo__s0"),
                      ("score", ["flip-1__bapo__s0"])]
    out = Path(study_cfg.out)
    # a third adapter trained at the stop but not yet scored: its weights are not carried, so neither is it
    study_cfg.seeds = 2
    train(study_cfg, next(c for c in plan(study_cfg) if c.name == "flip-1__dpo__s1"), out, Console(quiet=True))
    assert (out / "cells" / "flip-1__dpo__s1" / "run.json").exists()
    config = tmp_path / "study.yaml"
    config.write_text(dump_yaml(study_cfg))
    carry = script("carry")
    monkeypatch.setattr(carry, "carried", lambda config: tmp_path / "carried" / f"{config.stem}.jsonl.gz")
    carry.pack(config)
    packed = (tmp_path / "carried" / "study.jsonl.gz").read_bytes()
    carry.pack(config)
    assert (tmp_path / "carried" / "study.jsonl.gz").read_bytes() == packed  # byte-stable: no noise in git
    digests = {c: read_adapter(out / "cells" / c).digest for c in ("flip-1__dpo__s0", "flip-1__bapo__s0")}

    # the next session's machine: nothing but the repository
    shutil.rmtree(out)
    shutil.rmtree(tmp_path / "cache")
    half = out / "cells" / "flip-1__dpo__s0" / "checkpoints"  # a cell half-trained here gives way to its record
    half.mkdir(parents=True)
    carry.unpack(config)
    assert not half.exists()
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["flip-1__bapo__s0", "flip-1__dpo__s0"]
    for cell, digest in digests.items():
        record = out / "cells" / cell
        assert (record / WEIGHTS_DIGEST).read_text().strip() == digest and read_adapter(record).digest == digest
        assert not (record / "adapter_model.safetensors").exists() and (record / "run.json").exists()
        assert json.loads((record / "machine.json").read_text())["cpu"] == cpu_name()  # which CPU made it
    with pytest.raises(ConfigError, match="only a record of this adapter is here"):
        with applied(None, out / "cells" / "flip-1__dpo__s0"):
            pass
    carry.unpack(config)  # twice: what is here is kept
    assert read_adapter(out / "cells" / "flip-1__dpo__s0").digest == digests["flip-1__dpo__s0"]

    # the study goes on: nothing is trained or scored again, and the same table comes back
    study_cfg.seeds = 1
    events.clear()
    monkeypatch.setattr("bapo.runtime.store.Store.put_eval", lambda *a: pytest.fail("a carried score was recomputed"))
    again = run_study(study_cfg)
    assert events == []
    assert [r.to_dict() for r in again.rows] == [r.to_dict() for r in first.rows]
    assert as_dicts(again.contrasts) == as_dicts(first.contrasts) and again.items == first.items
