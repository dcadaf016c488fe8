"""Base responses y_b and reference log-probs, computed once by the reference model and cached.

BAPO anchors the policy to what the reference model itself says (its *base responses*). This step writes them, and
in the same pass scores the reference log-probs of chosen, rejected and base responses, so training never holds a
second model in memory. Everything is keyed by model fingerprint + token ids (+ generation settings) in a
:class:`~bapo.store.Store`: a rerun reuses it, an interrupted run resumes at the first missing batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from bapo import progress
from bapo.config import BaseResponseConfig
from bapo.logprobs import score
from bapo.store import Store, make_key
from bapo.tokens import Encoded, Renderer


@dataclass
class Reference:
    """The reference model, its tokenizer and the cache that remembers what it computed."""

    model: object
    tokenizer: object
    renderer: Renderer
    store: Store
    fingerprint: str

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def generate(self, prompts: Sequence[list[dict[str, str]]], cfg: BaseResponseConfig,
                 show: bool = True) -> list[list[str]]:
        """``cfg.num_responses`` base responses for each prompt (chat messages), reusing cached ones.

        Prompts are sorted by length into batches and left-padded, so a batch wastes little on padding.
        """
        prompt_ids = [tuple(self.renderer.prompt_ids(m)[-self.renderer.max_prompt_length:]) for m in prompts]
        keys = [make_key("gen", self.fingerprint, cfg.key(), ids) for ids in prompt_ids]
        found = self.store.get_generations(keys)
        todo = sorted({k: ids for k, ids in zip(keys, prompt_ids) if k not in found}.items(), key=lambda kv: len(kv[1]))
        if todo:
            stop = stop_ids(self.model, self.tokenizer)
            ctx = progress.bar("base responses", len(todo)) if show else _null_bar()
            with ctx as advance, torch.no_grad():
                for start in range(0, len(todo), cfg.batch_size):
                    chunk = todo[start : start + cfg.batch_size]
                    texts = self._generate_batch([ids for _, ids in chunk], cfg, stop, chunk[0][0])
                    new = {k: texts[i * cfg.num_responses : (i + 1) * cfg.num_responses] for i, (k, _) in enumerate(chunk)}
                    self.store.put_generations(new)
                    found.update(new)
                    advance(len(chunk))
        return [found[k] for k in keys]

    def _generate_batch(self, batch, cfg: BaseResponseConfig, stop: list[int], seed_key: str) -> list[str]:
        return generate_batch(self.model, self.tokenizer, batch, cfg, stop, seed_key)

    def logps(self, seqs: Sequence[Encoded], batch_size: int = 16, show: bool = True,
              description: str = "reference log-probs") -> list[tuple[float, int]]:
        """Reference ``(log p, n tokens)`` of each sequence's response, reusing cached values."""
        keys = [make_key("logp", self.fingerprint, s.prompt, s.response) for s in seqs]
        found = self.store.get_logps(keys)
        todo = list({k: s for k, s in zip(keys, seqs) if k not in found}.items())
        if todo:
            ctx = progress.bar(description, len(todo)) if show else _null_bar()
            with ctx as advance:
                step = batch_size * 8  # commit every few batches: resumable without a transaction per row
                for start in range(0, len(todo), step):
                    chunk = todo[start : start + step]
                    vals = score(self.model, [s for _, s in chunk], self.pad_id, batch_size, progress=advance)
                    new = dict(zip([k for k, _ in chunk], vals))
                    self.store.put_logps(new)
                    found.update(new)
        return [found[k] for k in keys]


def stop_ids(model, tokenizer) -> list[int]:
    """Token ids that end a response: the model's generation eos ids plus the tokenizer's eos."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def generate_batch(model, tokenizer, batch: Sequence[Sequence[int]], cfg: BaseResponseConfig, stop: list[int],
                   seed_key: str = "0") -> list[str]:
    """Generate for a batch of prompt ids (left-padded here); ``cfg.num_responses`` texts per prompt, in order."""
    pad = tokenizer.pad_token_id
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    attn = torch.zeros_like(input_ids)
    for i, ids in enumerate(batch):
        input_ids[i, width - len(ids):] = torch.tensor(list(ids))
        attn[i, width - len(ids):] = 1
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, eos_token_id=stop, pad_token_id=pad,
                  num_return_sequences=cfg.num_responses)
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
        # Seeded by the batch's first prompt: a rerun that regenerates this batch samples the same text.
        torch.manual_seed(cfg.seed * 1_000_003 + int(seed_key[:12], 16) % 1_000_003)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=input_ids.to(model.device), attention_mask=attn.to(model.device), **kwargs)
    finally:
        model.train(was_training)
    return [t.strip() for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]


class _null_bar:
    def __enter__(self):
        return lambda k=1: None

    def __exit__(self, *exc):
        return False


@dataclass
class Example:
    """A training/evaluation item: one pair, its prompt's base responses, and the reference log-probs of each."""

    chosen: Encoded
    rejected: Encoded
    ref_chosen: float
    ref_rejected: float
    base: list[Encoded]
    ref_base: list[float]
    base_texts: list[str]


def build_examples(ref: Reference, pairs, encoded: list[tuple[Encoded, Encoded]], cfg: BaseResponseConfig,
                   with_base: bool, batch_size: int = 16, show: bool = True) -> list[Example]:
    """Attach base responses (when ``with_base``) and reference log-probs to encoded pairs; all of it cached."""
    base_texts: list[list[str]] = [[] for _ in pairs]
    base_enc: list[list[Encoded]] = [[] for _ in pairs]
    if with_base:
        unique = {p.prompt_key: p.messages for p in pairs}
        texts = dict(zip(unique, ref.generate(list(unique.values()), cfg, show=show)))
        for i, p in enumerate(pairs):
            base_texts[i] = texts[p.prompt_key]
            # Base responses are model output, so always truncated (never rejected) to the length limits.
            base_enc[i] = [_encode_base(ref.renderer, p.messages, t) for t in base_texts[i]]
    seqs = [s for (c, r) in encoded for s in (c, r)] + [b for bs in base_enc for b in bs]
    vals = ref.logps(seqs, batch_size=batch_size, show=show)
    pair_vals, base_vals = vals[: 2 * len(encoded)], iter(vals[2 * len(encoded):])
    out = []
    for i, (c, r) in enumerate(encoded):
        out.append(Example(c, r, pair_vals[2 * i][0], pair_vals[2 * i + 1][0], base_enc[i],
                           [next(base_vals)[0] for _ in base_enc[i]], base_texts[i]))
    return out


def _encode_base(renderer: Renderer, messages, text: str) -> Encoded:
    enc = renderer.encode(messages, text, "base response", "base", [], truncate=True)
    assert enc is not None
    return enc


def open_reference(model: str, data_cfg, cache_dir: str = "") -> Reference:
    """Resolve, load and fingerprint a reference model, with the shared cache."""
    from bapo.models import load_tokenizer, resolve_model

    path = resolve_model(model, cache_dir)
    tok = load_tokenizer(path)
    return load_reference(path, Renderer(tok, data_cfg), cache_dir)


def load_reference(path: str, renderer: Renderer, cache_dir: str = "") -> Reference:
    """The reference for a resolved model whose tokenizer (in ``renderer``) is already loaded: callers validate and
    tokenize their data first, then pay for the model."""
    from bapo.models import cache_root, load_model, model_fingerprint

    return Reference(load_model(path), renderer.tok, renderer, Store(cache_root(cache_dir) / "reference.sqlite"),
                     model_fingerprint(path))


def run_base_step(model: str, data: str, out_file, cfg: BaseResponseConfig, data_cfg, cache_dir: str = "") -> int:
    """``bapo base``: base responses and reference log-probs for every pair of ``data``, as one JSONL file."""
    from bapo.data import load_pairs
    from bapo.io import write_jsonl
    from bapo.tokens import encode_pairs

    from bapo.models import load_tokenizer, resolve_model

    cfg.validate()
    data_cfg.validate()
    pairs = load_pairs(data)
    path = resolve_model(model, cache_dir)
    renderer = Renderer(load_tokenizer(path), data_cfg)
    encoded = encode_pairs(pairs, renderer)  # every problem reported before the model is loaded
    ref = load_reference(path, renderer, cache_dir)
    examples = build_examples(ref, pairs, encoded, cfg, with_base=True)
    write_jsonl(out_file, [
        {**p.to_record(), "base_responses": e.base_texts, "ref_logps": {
            "chosen": e.ref_chosen, "rejected": e.ref_rejected, "base": e.ref_base}}
        for p, e in zip(pairs, examples)])
    return len({p.prompt_key for p in pairs})
