"""Tokenization boundaries and per-sequence log-probs: the fast path equals the plain one, padding changes nothing."""

import gc

import pytest
import torch

from bapo.data.config import DataConfig, renderer
from bapo.errors import DataError
from bapo.core.logprobs import pad_batch, sequence_logps
from bapo.runtime.models import load_model, load_tokenizer
from bapo.core.tokens import Encoded, encode_pairs


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_model(tiny_model, "cpu", "float32"), load_tokenizer(tiny_model)


def test_response_is_the_templated_assistant_turn(tiny):
    _, tok = tiny
    r = renderer(tok, DataConfig())
    msgs = [{"role": "user", "content": "Hi"}]
    enc = r.encode(msgs, "Yo", "x", "chosen", [])
    full = tok.apply_chat_template([*msgs, {"role": "assistant", "content": "Yo"}], tokenize=False)
    assert tok.decode(enc.prompt) == "<|user|>Hi<|end|>\n<|assistant|>"
    assert tok.decode(enc.response) == "Yo<|end|>\n"
    assert tok.decode(enc.ids) == full


def test_without_chat_template_response_ends_with_eos(tiny_base_model):
    tok = load_tokenizer(tiny_base_model)
    enc = renderer(tok, DataConfig()).encode([{"role": "user", "content": "Hi"}], "Yo", "x", "chosen", [])
    assert tok.decode(enc.prompt) == "Hi\n" and tok.decode(enc.response) == "Yo<|end|>"


def test_overlong_truncates_or_rejects(tiny):
    from bapo.data.pairs import PreferencePair

    _, tok = tiny
    pair = PreferencePair((("user", "x" * 50),), "y" * 80, "z", None, "f.jsonl:3")
    (c, r), = encode_pairs([pair], renderer(tok, DataConfig(max_length=60, max_prompt_length=20)))
    assert len(c.prompt) == 20 and len(c.ids) == 60 and tok.decode(c.prompt).endswith("<|assistant|>")
    with pytest.raises(DataError) as e:
        encode_pairs([pair], renderer(tok, DataConfig(max_length=60, max_prompt_length=20, on_overlong="reject")))
    assert str(e.value.problems[0]).startswith("f.jsonl:3: prompt: 54 tokens, over max_prompt_length 20")


def _manual(model, seq: Encoded) -> float:
    ids = torch.tensor([seq.ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
    p = len(seq.prompt)
    return sum(logp[t - 1, seq.ids[t]].item() for t in range(p, len(seq.ids)))


def test_logps_match_a_direct_computation_and_ignore_padding(tiny):
    model, tok = tiny
    r = renderer(tok, DataConfig())
    seqs = [r.encode([{"role": "user", "content": q}], a, "x", "c", []) for q, a in
            [("Hi", "Hello there"), ("What is two plus two?", "4"), ("?", "A long answer, with words.")]]
    batch = pad_batch(seqs, tok.pad_token_id)
    with torch.no_grad():
        fast, n = sequence_logps(model, batch)
        slow, n2 = sequence_logps(model, batch, fast=False)
    assert n.tolist() == n2.tolist() == [len(s.response) for s in seqs]
    assert torch.allclose(fast, slow, atol=1e-4)
    for i, s in enumerate(seqs):
        assert fast[i].item() == pytest.approx(_manual(model, s), abs=1e-3)


def test_fast_path_gradients_match_plain_path(tiny_model):
    from bapo.runtime.config import LoraSettings
    from bapo.runtime.models import add_lora

    model = add_lora(load_model(tiny_model, "cpu", "float32"), LoraSettings(r=4))
    tok = load_tokenizer(tiny_model)
    r = renderer(tok, DataConfig())
    seqs = [r.encode([{"role": "user", "content": "Hi"}], a, "x", "c", []) for a in ("Yes", "No, never")]
    batch = pad_batch(seqs, tok.pad_token_id)
    grads = []
    for fast in (True, False):
        model.zero_grad()
        sequence_logps(model, batch, fast=fast)[0].sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_a_data_parallel_wrapper_gives_the_same_logps_and_gradients(tiny_model, tmp_path):
    """Under torchrun the Trainer hands the loss a DistributedDataParallel wrapper: its forward must run (it syncs
    gradients), and the numbers must be the plain model's."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from bapo.core.logprobs import pack_groups, packed_logps
    from bapo.runtime.config import LoraSettings
    from bapo.runtime.models import add_lora

    model = add_lora(load_model(tiny_model, "cpu", "float32"), LoraSettings(r=4))
    tok = load_tokenizer(tiny_model)
    r = renderer(tok, DataConfig())
    groups = [[r.encode([{"role": "user", "content": q}], a, "x", "c", []) for a in ("Yes", "No, never")]
              for q in ("Hi", "Why is the sky blue?")]
    batch = pack_groups(groups, tok.pad_token_id)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    wrapped = None
    try:
        wrapped = DistributedDataParallel(model)
        out = []
        for m in (model, wrapped):
            model.zero_grad()
            sums, lens = packed_logps(m, batch)
            sums.sum().backward()
            out.append((sums.detach(), lens, torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])))
    finally:
        # The wrapper's reducer holds the process group: freed after the group is destroyed, its destructor joins
        # gloo threads that never return (the suite hung there once, 2026-12-07). Free it first.
        del wrapped
        gc.collect()
        dist.destroy_process_group()
    assert torch.allclose(out[0][0], out[1][0], atol=1e-5) and torch.equal(out[0][1], out[1][1])
    assert torch.allclose(out[0][2], out[1][2], atol=1e-6) and out[0][2].abs().sum() > 0
