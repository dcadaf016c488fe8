"""The reference and its cache: each answer and log-prob computed once, keyed by weights, dtype and settings."""

import pytest

from bapo.core.logprobs import score
from bapo.core.tokens import Encoded
from bapo.data.pairs import PreferencePair
from bapo.runtime import reference
from bapo.runtime.config import BaseResponseConfig
from bapo.runtime.reference import build_examples, open_reference


def _boom(*a, **k):
    raise AssertionError("computed again instead of read from the cache")


def test_log_probs_and_answers_are_computed_once(tmp_path, tiny_model, monkeypatch):
    ref = open_reference(tiny_model, 256, 128, str(tmp_path / "cache"), "cpu", "float32")
    seqs = [Encoded((7, 8, 9), (10, 11)), Encoded((7, 8, 9), (12,))]
    first = ref.logps(seqs, show=False)
    direct = score(ref.model, seqs, ref.pad_id)
    assert [n for _, n in first] == [2, 1] == [n for _, n in direct]
    assert [v for v, _ in first] == pytest.approx([v for v, _ in direct], abs=1e-5)
    prompts = [[{"role": "user", "content": "Hi there"}], [{"role": "user", "content": "Name a colour"}]]
    cfg = BaseResponseConfig(max_new_tokens=5)
    answers = ref.generate(prompts, cfg, show=False)
    monkeypatch.setattr(reference, "score", _boom)
    monkeypatch.setattr(reference, "generate_batch", _boom)
    again = open_reference(tiny_model, 256, 128, str(tmp_path / "cache"), "cpu", "float32")
    assert again.logps(seqs, show=False) == first and again.generate(prompts, cfg, show=False) == answers
    with pytest.raises(AssertionError, match="computed again"):  # other settings are other entries
        again.generate(prompts, BaseResponseConfig(max_new_tokens=6), show=False)


def test_bfloat16_entries_never_mix_with_float32_ones(tmp_path, tiny_model):
    f32 = open_reference(tiny_model, 256, 128, str(tmp_path / "cache"), "cpu", "float32")
    b16 = open_reference(tiny_model, 256, 128, str(tmp_path / "cache"), "cpu", "bfloat16")
    assert f32.fingerprint == b16.fingerprint and f32.cache_id == f32.fingerprint
    assert b16.cache_id == f"{f32.fingerprint}-bfloat16"


def test_examples_carry_base_responses_and_the_reference_log_probs_of_everything(tmp_path, tiny_model):
    ref = open_reference(tiny_model, 256, 128, str(tmp_path / "cache"), "cpu", "float32")
    pairs = [PreferencePair((("user", "Pick one"),), "- a\n- b", "A and b.", source="f:1"),
             PreferencePair((("user", "Pick one"),), "- c", "C.", source="f:2")]
    enc = [(ref.renderer.encode(p.messages, p.chosen, "", "", []), ref.renderer.encode(p.messages, p.rejected, "", "", []))
           for p in pairs]
    examples = build_examples(ref, pairs, enc, BaseResponseConfig(max_new_tokens=4), with_base=True, show=False)
    assert [e.base_texts for e in examples][0] == examples[1].base_texts  # one prompt, answered once
    e = examples[0]
    direct = score(ref.model, [e.chosen, e.rejected, *e.base], ref.pad_id)
    assert [e.ref_chosen, e.ref_rejected, *e.ref_base] == pytest.approx([v for v, _ in direct], abs=1e-4)
