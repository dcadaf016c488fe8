"""Generation's cache (bapo.runtime.kv_cache): tokens written in place, prompts run in groups at their own widths,
the same answers as transformers' own cache and single pass on every family (float32)."""

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from bapo.core.tokens import Renderer
from bapo.runtime.config import BaseResponseConfig
from bapo.runtime.generate import generate_batch, left_pad, stop_ids
from bapo.runtime.kv_cache import GrowingLayer, cache_kwargs, prefilled_cache
from bapo.runtime.models import load_model, load_tokenizer
from tests.families import FAMILIES

TEXTS = ["Hi", "Tell me a long story about the sea and the ships on it", "Why?", "Name three colours of paint",
         "Describe rain in one sentence please, with some detail"]


def states(seed: int, n: int, batch: int = 3, dim: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, n, dim, generator=g), torch.randn(batch, 2, n, dim + 1, generator=g)


def test_the_growing_layer_holds_what_concatenation_holds_and_writes_in_place():
    grow, plain = GrowingLayer(reserve=3), DynamicLayer()
    for step, n in enumerate([5, 1, 1, 1]):
        k, v = states(step, n)
        got, want = grow.update(k, v), plain.update(k, v)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        if step == 0:
            buffer = grow._keys_buf.data_ptr()
    assert grow._keys_buf.data_ptr() == buffer  # the prompt and 3 tokens: the reserve, no copy
    k, v = states(9, 1)
    grow.update(k, v), plain.update(k, v)  # beyond the reserve: a new buffer, the old tokens carried over
    assert grow._keys_buf.data_ptr() != buffer and torch.equal(grow.keys, plain.keys)
    assert grow.get_seq_length() == plain.get_seq_length() == 9


def test_transformers_own_edits_of_the_cache_stay_correct():
    grow, plain = GrowingLayer(reserve=8), DynamicLayer()
    k, v = states(0, 6)
    grow.update(k, v), plain.update(k, v)
    grow.crop(-2), plain.crop(-2)
    keep = torch.tensor([2, 0])
    grow.batch_select_indices(keep), plain.batch_select_indices(keep)
    k, v = states(1, 1, batch=2)
    got, want = grow.update(k, v), plain.update(k, v)
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and got[0].shape[-2] == 5


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_grouped_prefill_and_in_place_cache_answer_as_transformers_does(family_dir, name):
    path = family_dir(name)
    tok = load_tokenizer(path)
    model = load_model(path, "cpu", "float32")
    renderer = Renderer(tok, 512, 256)
    ids = [renderer.prompt_ids([{"role": "user", "content": t}]) for t in TEXTS]
    stop = stop_ids(model, tok)
    x, attn = left_pad(ids, tok.pad_token_id)
    with torch.no_grad():
        plain = model.generate(input_ids=x, attention_mask=attn, max_new_tokens=12, do_sample=False,
                               eos_token_id=stop, pad_token_id=tok.pad_token_id, temperature=None, top_p=None,
                               top_k=None)
    want = [t.strip() for t in tok.batch_decode(plain[:, x.shape[1]:], skip_special_tokens=True)]
    for rows in (0, 2):
        cfg = BaseResponseConfig(max_new_tokens=12, prefill_rows=rows)
        assert generate_batch(model, tok, ids, cfg, stop) == want, (name, rows)
    # The grouped prefill runs where every layer is full attention; a sliding window keeps transformers' own pass.
    with torch.no_grad():
        grouped = prefilled_cache(model, x, attn, 2, 12)
    assert bool(grouped) == (not FAMILIES[name].windowed)
    if grouped:  # generate runs on this cache (a cache it ignored would stay at the prompt)
        with torch.no_grad():
            out = model.generate(input_ids=x, attention_mask=attn, max_new_tokens=12, min_new_tokens=12,
                                 do_sample=False, pad_token_id=tok.pad_token_id, temperature=None, top_p=None,
                                 top_k=None, **grouped)
        (cache,) = grouped.values()
        assert out.shape[1] == x.shape[1] + 12 and cache.get_seq_length() == out.shape[1] - 1
    assert cache_kwargs(model, 12)  # every family here takes the in-place layers where it has full attention
