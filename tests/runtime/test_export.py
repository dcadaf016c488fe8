"""``bapo export``: what other engines load gives bapo's own numbers when loaded with plain transformers + PEFT."""

import json

import pytest
import torch

from bapo.runtime.adapters import applied
from bapo.runtime.export import EXPORT_INFO, built_in_scale, export_adapter, export_model
from bapo.runtime.models import load_model
from tests.helpers import make_adapter
from tests.test_cli import bapo

IDS = torch.tensor([[3, 17, 29, 41, 5, 8, 13, 21]])


def _bapo_logits(tiny_model, adapter, scale):
    with torch.no_grad(), applied(load_model(tiny_model, "cpu", "float32"), adapter, scale, merge=False) as m:
        return m(input_ids=IDS).logits


def test_an_exported_adapter_carries_its_scale_into_plain_peft(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_adapter(tiny_model, tmp_path / "a")
    for scale in (0.5, 0.0, 1.0):
        out = export_adapter(adapter, tmp_path / f"x{scale}", scale).out
        assert built_in_scale(out) == scale and built_in_scale(adapter) == 1.0
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(out)).eval()
        with torch.no_grad():
            got = plain(input_ids=IDS).logits
        want = _bapo_logits(tiny_model, adapter, scale)
        assert torch.allclose(got, want, atol=1e-5), (scale, (got - want).abs().max())
    with torch.no_grad():  # the scale acts: half the adapter is neither the base model nor the whole adapter
        half, whole = _bapo_logits(tiny_model, adapter, 0.5), _bapo_logits(tiny_model, adapter, 1.0)
        base = load_model(tiny_model, "cpu", "float32")(input_ids=IDS).logits
    assert (half - whole).abs().max() > 1e-3 and (half - base).abs().max() > 1e-3


def test_a_merged_export_is_a_plain_model_with_the_scaled_update(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = make_adapter(tiny_model, tmp_path / "a", seed=1)
    out = export_adapter(adapter, tmp_path / "merged", 0.75, merge=True, model=tiny_model).out
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        got = merged(input_ids=IDS).logits
    assert torch.allclose(got, _bapo_logits(tiny_model, adapter, 0.75), atol=1e-4)
    assert AutoTokenizer.from_pretrained(out) is not None
    assert json.loads((out / EXPORT_INFO).read_text())["merged"] is True


def test_an_exported_model_loads_as_the_model_bapo_runs(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export_model(tiny_model, tmp_path / "m").out
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(out)(input_ids=IDS).logits
        want = load_model(tiny_model, "cpu", "float32")(input_ids=IDS).logits
    assert torch.equal(got, want)


def test_export_errors_are_one_line_exit_2_and_leave_nothing(tiny_model, tmp_path):
    adapter = make_adapter(tiny_model, tmp_path / "a")
    r = bapo("export", "adapter", adapter, tmp_path / "x", "--scale", "1.5")
    assert r.returncode == 2 and r.stderr.strip() == "error: scale: 1.5 is outside [0, 1] (0 is the base model, 1 " \
                                                     "the adapter as trained)"
    r = bapo("export", "adapter", tmp_path, tmp_path / "x")
    assert r.returncode == 2 and "not an adapter directory" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    r = bapo("export", "adapter", adapter, tmp_path / "full")
    assert r.returncode == 2 and "already exists and is not empty" in r.stderr
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    r = bapo("export", "adapter", adapter, tmp_path / "ok", "--scale", "0.25")
    assert r.returncode == 0 and "scale 0.25" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "full", "ok"]  # no temporary left behind


@pytest.mark.parametrize("field,value", [("use_dora", True), ("modules_to_save", ["lm_head"])])
def test_an_adapter_whose_update_is_not_linear_in_its_scale_is_refused(tiny_model, tmp_path, field, value):
    from bapo.errors import ConfigError

    adapter = make_adapter(tiny_model, tmp_path / "a")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(ConfigError, match="--merge"):
        export_adapter(adapter, tmp_path / "x", 0.5)
    assert not (tmp_path / "x").exists()
