"""Model resolution, fingerprints, LoRA wrapping; the embedded SmolLM2 model under -m slow."""

import time

import pytest
import torch

from bapo.runtime.config import LoraSettings
from bapo.errors import ModelError
from bapo.runtime.models import add_lora, fingerprint, load_model, resolve_model


def test_local_directory_and_bad_paths(tmp_path, tiny_model):
    assert resolve_model(tiny_model) == tiny_model
    with pytest.raises(ModelError, match="no such directory"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    assert resolve_model("org/name") == "org/name"  # a hub id is passed on, tried only when loaded


def test_fingerprint_follows_the_weights(tmp_path, tiny_model):
    from tests.helpers import build_tiny_model

    a = build_tiny_model(tmp_path / "a", seed=0)
    b = build_tiny_model(tmp_path / "b", seed=1)
    assert fingerprint(a) == fingerprint(tiny_model) != fingerprint(b)


def test_lora_targets_every_linear_layer_but_the_head(tiny_model):
    model = add_lora(load_model(tiny_model), LoraSettings(r=2))
    wrapped = {n.rsplit(".lora_A", 1)[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    only_q = add_lora(load_model(tiny_model), LoraSettings(r=2, target_modules=["q_proj"]))
    assert all("q_proj" in n for n, p in only_q.named_parameters() if p.requires_grad)


def test_the_head_runs_one_mm_on_a_strided_last_position_even_when_frozen(tiny_model):
    """transformers hands the head ``hidden[:, -1:]`` at the prefill; frozen (as peft leaves the base weights), torch
    would expand the head's weight once per sequence for a bmm. load_model's hook passes a contiguous copy: one mm,
    the same logits."""
    import torch

    model = load_model(tiny_model, "cpu", "float32").requires_grad_(False)
    ids = torch.randint(3, 100, (4, 7))
    with torch.no_grad(), torch.profiler.profile() as prof:
        fast = model(input_ids=ids, logits_to_keep=1).logits
    assert "aten::bmm" not in [e.name for e in prof.events()]
    model.get_output_embeddings()._forward_pre_hooks.clear()  # without it: the slow path, the same numbers
    with torch.no_grad(), torch.profiler.profile() as prof:
        slow = model(input_ids=ids, logits_to_keep=1).logits
    assert "aten::bmm" in [e.name for e in prof.events()]
    assert torch.allclose(fast, slow, atol=1e-6) and fast.shape == (4, 1, model.config.vocab_size)


@pytest.mark.slow
def test_embedded_model_converts_once_then_loads_in_seconds(tmp_path):
    from bapo.runtime.models import load_tokenizer

    path = resolve_model("smollm2-135m-instruct", str(tmp_path))
    t = time.time()
    again = resolve_model("smollm2-135m-instruct", str(tmp_path))
    model, tok = load_model(again), load_tokenizer(again)
    assert again == path and time.time() - t < 10
    assert model.config.model_type == "llama" and tok.chat_template
    from bapo.runtime.generate import generate_batch, stop_ids
    from bapo.runtime.config import BaseResponseConfig

    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, tokenize=False)
    (text,) = generate_batch(model, tok, [tok(ids)["input_ids"]], BaseResponseConfig(max_new_tokens=12),
                             stop_ids(model, tok))
    assert "Paris" in text


@pytest.mark.slow
def test_embedded_model_trains_a_few_steps(tmp_path):
    import bapo
    from bapo.data.config import DataConfig
    from bapo.training.config import TrainConfig
    from tests.helpers import make_pairs, write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", make_pairs(6, 1))
    cfg = TrainConfig(out=str(tmp_path / "o"), data=DataConfig(path=str(data), holdout=0.2), max_steps=2,
                      batch_size=2, cache_dir=str(tmp_path / "cache"))
    cfg.base.max_new_tokens = 16
    res = bapo.train(cfg)
    assert res.steps == 2 and (res.out / "adapter_model.safetensors").exists()


def test_wrapping_with_lora_shows_no_library_deprecation_warning(tiny_model, tmp_path):
    import warnings

    from bapo.runtime.adapters import applied

    model = load_model(tiny_model)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _ = model.is_gradient_checkpointing  # what PEFT reads: transformers warns on it (else this test proves nothing)
        assert any("is_gradient_checkpointing" in str(w.message) for w in seen)
        seen.clear()
        add_lora(model, LoraSettings(r=2)).save_pretrained(tmp_path / "adapter")
        with applied(load_model(tiny_model), tmp_path / "adapter", 1.0, False):
            pass
    assert not [str(w.message) for w in seen if "is_gradient_checkpointing" in str(w.message)]


@pytest.mark.slow
def test_processes_starting_on_an_empty_cache_convert_the_embedded_model_once(tmp_path):
    import subprocess
    import sys

    code = "from bapo.runtime.models import resolve_model; print(resolve_model('smollm2-135m-instruct'))"
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "BAPO_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-1500:] for _, e in outs]
    assert sum(o.count("converting the embedded") for o, _ in outs) == 1  # one converted, the others waited
    assert len({o.splitlines()[-1] for o, _ in outs}) == 1


def test_the_reward_models_input_has_one_bos_with_a_bos_adding_tokenizer(tmp_path):
    """The template writes BOS itself; tokenizing its text with special tokens again gave the reward model two."""
    from types import SimpleNamespace

    from bapo.runtime.models import load_tokenizer, reward_of
    from tests.families import build_family_model

    tok = load_tokenizer(str(build_family_model("llama3", tmp_path / "llama3")))
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert tok("hi")["input_ids"][0] == bos  # the tokenizer adds BOS by itself
    seen = []

    class Reward(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, input_ids, attention_mask=None):
            seen.append(input_ids[0].tolist())
            return SimpleNamespace(logits=torch.tensor([[0.25]]))

    assert reward_of(Reward(), tok, [{"role": "user", "content": "Hi?"}], "Hello.") == 0.25
    assert seen[0][0] == bos and seen[0].count(bos) == 1
