"""``bapo train`` end to end on a tiny model: outputs, determinism, resume after a kill, and the base-response cache."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import bapo
from bapo.runtime import reference
from bapo.data.config import DataConfig
from bapo.training.config import TrainConfig
from bapo.training.trainer import PreferenceTrainer
from tests.helpers import make_pairs, write_jsonl


def config(tmp_path, model, out="out", **kw) -> TrainConfig:
    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        write_jsonl(data, make_pairs(12, 2))
    cfg = TrainConfig(model=model, out=str(tmp_path / out), data=DataConfig(path=str(data), holdout=0.2),
                      max_steps=6, batch_size=2, save_steps=3, lr=5e-3, **kw)
    cfg.base.max_new_tokens = 6
    return cfg


def adapter(out) -> dict:
    return load_file(str(Path(out) / "adapter_model.safetensors"))


def test_train_writes_a_standard_peft_adapter_and_run_files(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = bapo.train(config(tmp_path, tiny_model))
    out = res.out
    assert res.steps == 6
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(out))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    # the adapter moved away from its zero-initialised B matrices
    assert any(v.abs().sum() > 0 for k, v in adapter(out).items() if "lora_B" in k)

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["loss"]["method"] == "bapo" and resolved["max_steps"] == 6
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert {"rewards/margins", "rewards/accuracies", "anchor/gap", "loss/anchor"} <= set(rows[0])

    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (out / "holdout.jsonl").read_text().splitlines()]
    assert len(train) + len(held) == 24 and held
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    base = [json.loads(x) for x in (out / "base_responses.jsonl").read_text().splitlines()]
    assert len(base) == len(train) and all(len(b["base_responses"]) == 1 for b in base)


def test_same_seed_same_adapter_and_methods_differ(tmp_path, tiny_model):
    a = adapter(bapo.train(config(tmp_path, tiny_model, out="a")).out)
    b = adapter(bapo.train(config(tmp_path, tiny_model, out="b")).out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg = config(tmp_path, tiny_model, out="c")
    cfg.loss.method = "dpo"
    c = adapter(bapo.train(cfg).out)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_micro_batches_give_the_whole_batch_gradient(tmp_path, tiny_model):
    """A step of 4 pairs as 4 forward passes of 1 pair (less memory) trains the same adapter as one pass of 4."""
    whole = config(tmp_path, tiny_model, out="whole", micro_batch_size=0)
    whole.batch_size = 4
    parts = config(tmp_path, tiny_model, out="parts", micro_batch_size=1)
    parts.batch_size = 4
    assert (whole.pairs_per_forward, parts.pairs_per_forward) == (4, 1)
    whole.dtype = parts.dtype = "float32"  # the same gradient up to float rounding; bfloat16 rounds per batch shape
    a, b = adapter(bapo.train(whole).out), adapter(bapo.train(parts).out)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert any(v.abs().sum() > 0 for k, v in b.items() if "lora_B" in k)
    # Adam would hide a wrongly scaled gradient; the logged step losses would not
    losses = [[r["loss"] for r in map(json.loads, (Path(c.out) / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for c in (whole, parts)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_micro_batch_is_a_divisor_of_the_batch():
    assert TrainConfig(batch_size=6, micro_batch_size=4).pairs_per_forward == 3
    assert TrainConfig(batch_size=5, micro_batch_size=2).pairs_per_forward == 1
    assert TrainConfig(batch_size=2, micro_batch_size=8).pairs_per_forward == 2


def test_resume_after_a_kill_reaches_the_uninterrupted_result(tmp_path, tiny_model, monkeypatch):
    whole = adapter(bapo.train(config(tmp_path, tiny_model, out="whole")).out)

    calls = {"n": 0}
    original = PreferenceTrainer.training_step

    def dies_at_step_5(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return original(self, *a, **k)

    monkeypatch.setattr(PreferenceTrainer, "training_step", dies_at_step_5)
    cfg = config(tmp_path, tiny_model, out="killed")
    with pytest.raises(KeyboardInterrupt):
        bapo.train(cfg)
    monkeypatch.setattr(PreferenceTrainer, "training_step", original)
    assert not (Path(cfg.out) / "adapter_config.json").exists()  # nothing final was written
    with pytest.raises(bapo.ConfigError, match="--resume"):
        bapo.train(cfg)
    cfg.resume = True
    resumed = adapter(bapo.train(cfg).out)
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)
    steps = [json.loads(x)["step"] for x in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    assert steps[:6] == [1, 2, 3, 4, 5, 6]


def test_base_responses_are_cached_and_resume_after_interruption(tmp_path, tiny_model, monkeypatch):
    calls = []
    original = reference.generate_batch

    def counting(model, tokenizer, batch, *a, **k):
        calls.append(len(batch))
        if len(calls) == 2 and fail["on"]:
            raise RuntimeError("killed mid-generation")
        return original(model, tokenizer, batch, *a, **k)

    fail = {"on": True}
    monkeypatch.setattr(reference, "generate_batch", counting)
    cfg = config(tmp_path, tiny_model, out="x")
    cfg.base.batch_size = 4
    with pytest.raises(RuntimeError):
        bapo.train(cfg)
    assert calls == [4, 4]
    fail["on"] = False
    bapo.train(cfg)
    # 24 distinct prompts, 20% held out -> 19 training prompts; the first batch of 4 was kept
    assert sum(calls[2:]) == 19 - 4
    calls.clear()
    bapo.train(config(tmp_path, tiny_model, out="y"))  # same model, prompts and settings: all from the cache
    assert calls == []


def test_greedy_base_responses_do_not_depend_on_batching(tmp_path, tiny_model):
    from bapo.runtime.reference import open_reference
    from bapo.runtime.config import BaseResponseConfig

    prompts = [[{"role": "user", "content": q}] for q in ("Hi", "What is up today?", "x", "Tell me more, please.")]
    ref = open_reference(tiny_model, 512, 256, str(tmp_path / "c1"))
    batched = ref.generate(prompts, BaseResponseConfig(max_new_tokens=8, batch_size=4), show=False)
    ref2 = open_reference(tiny_model, 512, 256, str(tmp_path / "c2"))
    single = ref2.generate(prompts, BaseResponseConfig(max_new_tokens=8, batch_size=1), show=False)
    assert batched == single and all(len(r) == 1 for r in batched)


def test_sampled_base_responses_several_per_prompt_and_reproducible(tmp_path, tiny_model):
    from bapo.runtime.reference import open_reference
    from bapo.runtime.config import BaseResponseConfig

    prompts = [[{"role": "user", "content": q}] for q in ("Hi", "Tell me more, please.")]
    cfg = BaseResponseConfig(max_new_tokens=8, do_sample=True, temperature=1.0, num_responses=3, seed=5)
    first = open_reference(tiny_model, 512, 256, str(tmp_path / "c1")).generate(prompts, cfg, show=False)
    again = open_reference(tiny_model, 512, 256, str(tmp_path / "c2")).generate(prompts, cfg, show=False)
    assert [len(r) for r in first] == [3, 3] and first == again
    assert len({t for r in first for t in r}) > 1  # sampling, not three copies of the greedy answer


@pytest.mark.parametrize("method", ["replay", "kl", "dpo+nll"])
def test_bapos_rivals_train_end_to_end(tmp_path, tiny_model, method):
    cfg = config(tmp_path, tiny_model, out=method)
    cfg.loss.method, cfg.max_steps = method, 2
    bapo.train(cfg)
    rows = [json.loads(x) for x in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    term = {"replay": "loss/replay", "kl": "loss/kl", "dpo+nll": "loss/nll"}[method]
    logged = [r for r in rows if "loss" in r]  # the per-step rows (the last row is the run's summary)
    assert len(logged) == 2 and all(r[term] >= 0 for r in logged)
    assert (Path(cfg.out) / "base_responses.jsonl").exists() == (method != "dpo+nll")


def test_full_fine_tuning_writes_a_model_directory_that_eval_scores(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    from bapo.evaluation.config import EvalConfig
    from bapo.io import as_dicts
    from bapo.evaluation.runner import evaluate
    from bapo.runtime.models import load_model

    cfg = config(tmp_path, tiny_model, out="full")
    cfg.finetune, cfg.loss.method, cfg.max_steps = "full", "dpo", 3
    out = bapo.train(cfg).out
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "run.json").read_text())["finetune"] == "full"
    tuned, base = AutoModelForCausalLM.from_pretrained(out), load_model(tiny_model)
    moved = [n for n, p in tuned.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert len(moved) > 10  # every kind of weight trained, not an adapter's few
    suite = tmp_path / "s.yaml"
    write_jsonl(tmp_path / "mc.jsonl", [{"query": f"Question: {i}?", "choices": ["a", "b"], "gold": 0} for i in range(4)])
    suite.write_text("tasks:\n  - {name: mc, kind: mc, path: mc.jsonl}\n")
    records = as_dicts(evaluate(EvalConfig(model=tiny_model, adapters=[str(out)], suite=str(suite),
                                           adapter_scales=[0.0, 1.0], out=str(tmp_path / "res"))).records)
    by = {(r["model"], r["task"], r["metric"]): r for r in records}
    assert by[("full@0", "mc", "acc")]["value"] == by[("base", "mc", "acc")]["value"]  # scale 0 = the base model
    assert by[("full@1", "personal:full", "margin")]["value"] > 0 and by[("full@1", "mc", "acc")]["method"] == "dpo (full)"
    with pytest.raises(bapo.ConfigError, match="kl needs finetune lora"):
        cfg.loss.method = "kl"
        cfg.validate()
