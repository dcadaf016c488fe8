"""One source of options: every option is a dataclass field, and YAML, ``--set`` and the CLI are built from it."""

import dataclasses
import typing

import pytest

from bapo.cli import ValidateConfig
from bapo.errors import ConfigError
from bapo.evaluation.config import EvalConfig
from bapo.options import apply_overrides, cli_fields, dump_yaml, load_config, load_yaml
from bapo.serve.config import ServeConfig
from bapo.studies.config import StudyConfig, study_training
from bapo.training.config import BaseRunConfig, TrainConfig

CONFIGS = [TrainConfig, BaseRunConfig, EvalConfig, StudyConfig, ValidateConfig, ServeConfig]


def leaves(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_option_has_help_and_its_flags_are_unique(cls):
    assert all(f.metadata.get("help") for _, f in leaves(cls)), [p for p, f in leaves(cls) if not f.metadata.get("help")]
    fields = cli_fields(cls)  # raises on a flag spelled twice
    assert all(f.flags and f.help for f in fields)


def test_train_exposes_every_field_with_its_own_default():
    fields = {f.path: f for f in cli_fields(TrainConfig)}
    assert set(fields) == {p for p, _ in leaves(TrainConfig)}
    cfg = TrainConfig()
    for path, f in fields.items():
        node = cfg
        for part in path.split("."):
            node = getattr(node, part)
        assert f.default == node, path
    assert fields["loss.anchor_lambda"].flags == ("--lambda", "--anchor-lambda")
    assert fields["base.do_sample"].flags == ("--base-sample/--base-greedy",)
    assert fields["lora.target_modules"].flags == ("--lora-targets",)


def test_shared_options_have_one_default():
    train, ev, base = TrainConfig(), EvalConfig(), BaseRunConfig()
    assert train.data.max_length == ev.max_length == base.data.max_length
    assert train.data.max_prompt_length == ev.max_prompt_length == base.data.max_prompt_length
    assert train.model == ev.model == base.model and train.device == ev.device == "auto"


def test_the_study_composes_train_and_eval_configs_and_shows_its_preset():
    assert {f.name for f in dataclasses.fields(StudyConfig)} >= {"train", "eval"}
    assert not {"lr", "epochs", "beta", "max_length"} & {f.name for f in dataclasses.fields(StudyConfig)}
    shown = {f.path: f.default for f in cli_fields(StudyConfig)}
    assert shown["train.lr"] == study_training().lr == 2e-4 and shown["train.epochs"] == 2.0
    assert "eval.batch_size" not in shown  # reachable with --set only


def test_a_yaml_section_given_in_part_keeps_the_rest_of_its_preset(tmp_path):
    (tmp_path / "s.yaml").write_text("seeds: 2\ntrain:\n  lr: 0.0005\n")
    cfg = load_yaml(tmp_path / "s.yaml", StudyConfig)
    assert cfg.seeds == 2 and cfg.train.lr == 5e-4 and cfg.train.epochs == 2.0 and cfg.train.data.max_length == 256
    cfg = load_config(StudyConfig, tmp_path / "s.yaml", {"train.epochs": "3", "seeds": None})
    assert cfg.train.epochs == 3.0 and cfg.seeds == 2  # options override the file; None = not given


def test_bad_overrides_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="lr.x: lr is an option, not a section"):
        apply_overrides(TrainConfig(), {"lr.x": 1})
    with pytest.raises(ConfigError, match="loss.nope: unknown option"):
        apply_overrides(TrainConfig(), {"loss.nope": 1})
    with pytest.raises(ConfigError, match="epochs: expected float"):
        apply_overrides(TrainConfig(), {"epochs": "many"})
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(tmp_path / "list.yaml", TrainConfig)


def test_config_yaml_round_trip_keeps_help_as_comments(tmp_path):
    cfg = apply_overrides(TrainConfig(), {"loss.beta": 0.25, "lora.target_modules": "q_proj,v_proj", "out": "x: y",
                                          "data.path": "a b.jsonl"})
    text = dump_yaml(cfg)
    assert "beta: 0.25  # Inverse temperature" in text and "target_modules: [q_proj, v_proj]" in text
    (tmp_path / "c.yaml").write_text(text)
    assert load_yaml(tmp_path / "c.yaml", TrainConfig) == cfg
