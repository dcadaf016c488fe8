"""The command line: help reads well, bad input is one line per problem with exit code 2, nothing half-written."""

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import make_pairs, write_jsonl


def bapo(*args, env=None):
    e = {**os.environ, "COLUMNS": "120", **(env or {})}
    return subprocess.run([sys.executable, "-m", "bapo.cli", *map(str, args)], capture_output=True, text=True, env=e)


def test_help_lists_the_commands_and_train_options():
    r = bapo("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("train", "base", "validate", "demo", "study"))
    r = bapo("train", "--help")
    assert r.returncode == 0
    for opt in ("--data", "--method", "--lambda", "--anchor", "--resume", "--config", "--holdout", "--set"):
        assert opt in r.stdout, opt
    # defaults in brackets survive rich markup (an unescaped [word] is taken for a style tag and vanishes)
    for default in ("[truncate]", "[hinge]", "[sum]", "[dpo]", "[all-linear]"):
        assert default in r.stdout, default
    r = bapo("study", "--help")
    assert r.returncode == 0 and "[dpo,bapo]" in r.stdout and "--dry-run" in r.stdout


def test_bad_data_is_one_line_per_problem_exit_2_nothing_written(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                                {"prompt": "p", "chosen": "", "rejected": "b"}])
    r = bapo("train", "--data", data, "--out", tmp_path / "out", "--model", tiny_model)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {data}:2: chosen: empty"
    assert not (tmp_path / "out").exists()


def test_unknown_model_and_config_errors_are_one_line(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", make_pairs(4, 1))
    r = bapo("train", "--data", data, "--out", tmp_path / "o", "--model", tmp_path / "nope")
    assert r.returncode == 2 and "no such directory" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = bapo("train", "--data", data, "--out", tmp_path / "o", "--method", "ktoo")
    assert r.returncode == 2 and "loss.method: unknown 'ktoo'" in r.stderr
    (tmp_path / "c.yaml").write_text("loss:\n  betta: 0.2\n")
    r = bapo("train", "--config", tmp_path / "c.yaml", "--data", data, "--out", tmp_path / "o")
    assert r.returncode == 2 and "loss.betta: unknown option" in r.stderr
    r = bapo("train", "--data", data, "--out", tmp_path / "o", "--set", "lora.r=many")
    assert r.returncode == 2 and "lora.r: expected int" in r.stderr
    assert not (tmp_path / "o").exists()


def test_offline_hub_id_is_a_clear_error(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", make_pairs(4, 1))
    r = bapo("train", "--data", data, "--out", tmp_path / "o", "--model", "no-such-org/no-such-model",
             env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "model 'no-such-org/no-such-model': not a local directory" in r.stderr


def test_yaml_config_with_cli_overrides_trains(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "d.jsonl", make_pairs(6, 2))
    (tmp_path / "run.yaml").write_text(f"model: {tiny_model}\nmax_steps: 5\nbatch_size: 2\n"
                                       "loss:\n  method: ipo\n  beta: 0.3\nbase:\n  max_new_tokens: 4\n")
    r = bapo("train", "--config", tmp_path / "run.yaml", "--data", data, "--out", tmp_path / "o", "--max-steps", 2,
             "--set", "lora.r=2")
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "o" / "config.yaml").read_text()
    assert "method: ipo" in text and "max_steps: 2" in text and "beta: 0.3" in text and "r: 2" in text
    assert (tmp_path / "o" / "adapter_model.safetensors").exists()
    assert "adapter written to" in " ".join(r.stdout.split())


def test_a_full_fine_tune_says_it_wrote_a_model(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "d.jsonl", make_pairs(6, 2))
    r = bapo("train", "--data", data, "--out", tmp_path / "o", "--model", tiny_model, "--finetune", "full",
             "--method", "dpo", "--max-steps", 1, "--batch-size", 2)
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split())
    assert "model (Hugging Face directory) written to" in said and "adapter" not in said
    assert (tmp_path / "o" / "config.json").exists()


def test_validate_and_base_commands(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "d.jsonl", make_pairs(3, 1, user="ann"))
    r = bapo("validate", "--data", data, "--model", tiny_model)
    assert r.returncode == 0 and "3 pairs, 3 prompts, users: ann" in r.stdout
    r = bapo("validate", "--data", data, "--model", tiny_model, "--max-length", 20, "--max-prompt-length", 10)
    assert r.returncode == 2 and f"{data}:1: prompt:" in r.stderr
    thumbs = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Hi?", "completion": "x" * 40, "label": True},
                                                 {"prompt": "Yo?", "completion": "ok", "label": "down"}])
    r = bapo("validate", "--data", thumbs, "--model", tiny_model)
    assert r.returncode == 0 and "2 rated answers (1 liked, 1 disliked), 2 prompts (unpaired feedback)" in r.stdout
    r = bapo("validate", "--data", thumbs, "--model", tiny_model, "--max-length", 30, "--max-prompt-length", 20)
    assert r.returncode == 2 and f"{thumbs}:1: completion:" in r.stderr and ":2:" not in r.stderr
    r = bapo("base", "--data", data, "--out", tmp_path / "b.jsonl", "--model", tiny_model, "--max-new-tokens", 4)
    assert r.returncode == 0, r.stderr
    import json

    rows = [json.loads(x) for x in Path(tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(set(r["ref_logps"]) == {"chosen", "rejected", "base"} for r in rows)
    assert all(r["ref_logps"]["chosen"] < 0 for r in rows)


def test_eval_and_report_commands(tmp_path, tiny_model):
    r = bapo("eval", "--help")
    assert r.returncode == 0 and "--adapter-scale" in r.stdout and "--suite" in r.stdout
    r = bapo("eval", "--model", tiny_model, "--adapters", tmp_path, "--out", tmp_path / "res")
    assert r.returncode == 2 and "not an adapter directory" in r.stderr
    r = bapo("eval", "--model", tiny_model, "--adapter-scale", "0,half", "--out", tmp_path / "res")
    assert r.returncode == 2 and "--adapter-scale 0,half" in r.stderr
    r = bapo("report", tmp_path / "nothing", "--out", tmp_path / "rep")
    assert r.returncode == 2 and "not found (run bapo eval first)" in r.stderr and not (tmp_path / "rep").exists()
    (tmp_path / "bad.json").write_text("{oops")
    r = bapo("report", tmp_path / "bad.json")
    assert r.returncode == 2 and f"{tmp_path / 'bad.json'}:1: json: malformed JSON" in r.stderr
