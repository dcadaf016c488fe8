"""Text generation: batches of prompts in, answers out, on whatever device the model lives.

The one generator behind base responses, simulated users' candidates, evaluation answers and (later) a server:
prompts are left-padded into a batch and decoded greedily or by seeded sampling.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from bapo.core.tokens import Renderer
from bapo.runtime.config import BaseResponseConfig
from bapo.runtime.kv_cache import cache_kwargs, prefilled_cache


def stop_ids(model, tokenizer) -> list[int]:
    """Token ids that end a response: the model's generation eos ids plus the tokenizer's eos."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids as one left-padded batch (so every row's answer starts at the same column) and its mask."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(input_ids)
    for i, ids in enumerate(batch):
        input_ids[i, width - len(ids):] = torch.tensor(list(ids))
        attn[i, width - len(ids):] = 1
    return input_ids, attn


def sampling_seed(cfg: BaseResponseConfig, key: str) -> int:
    """The seed of sampled base responses for a prompt's cache key (a hex digest): the run's seed and the prompt."""
    return cfg.seed * 1_000_003 + int(key[:12], 16) % 1_000_003


@torch.no_grad()
def generate_batch(model, tokenizer, batch: Sequence[Sequence[int]], cfg: BaseResponseConfig, stop: list[int],
                   seed_key: str = "0") -> list[str]:
    """Generate for a batch of prompt ids (left-padded here); ``cfg.num_responses`` texts per prompt, in order."""
    pad = tokenizer.pad_token_id
    input_ids, attn = left_pad(batch, pad)
    width = input_ids.shape[1]
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, eos_token_id=stop, pad_token_id=pad,
                  num_return_sequences=cfg.num_responses)
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
        # Seeded by the batch's first prompt: a rerun that regenerates this batch samples the same text.
        torch.manual_seed(sampling_seed(cfg, seed_key))
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    input_ids, attn = input_ids.to(model.device), attn.to(model.device)
    try:
        grouped = cfg.num_responses == 1 and 0 < cfg.prefill_rows < len(batch)
        cache = (prefilled_cache(model, input_ids, attn, cfg.prefill_rows, cfg.max_new_tokens) if grouped
                 else {}) or cache_kwargs(model, cfg.max_new_tokens)
        out = model.generate(input_ids=input_ids, attention_mask=attn, **kwargs, **cache)
    finally:
        model.train(was_training)
    return [t.strip() for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]


def generate_answers(model, renderer: Renderer, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int = 64,
                     batch_size: int = 8, progress: Callable[[int], None] | None = None) -> list[str]:
    """The model's greedy answers to ``prompts`` (chat messages), in the model's chat template, in order.

    Prompts are generated in batches of similar length (sorted, the order restored after), so little of a batch is
    padding; each answer depends only on the prompts of its batch, hence on ``batch_size`` (in 16-bit dtypes greedy
    decoding can turn on the rounding that padding rows bring). ``model`` may be a
    :class:`~bapo.runtime.remote.RemoteModel`: then a server answers, the same prompt ids sent."""
    ids = [renderer.prompt_ids(m)[-renderer.max_prompt_length:] for m in prompts]
    if hasattr(model, "answers"):  # a RemoteModel (not imported here: this module needs no HTTP client)
        return model.answers(renderer, ids, max_new_tokens, progress)
    # One pass over each batch's prompts, as before prefill groups existed: cached answers stay what they were.
    cfg = BaseResponseConfig(max_new_tokens=max_new_tokens, prefill_rows=0)
    stop = stop_ids(model, renderer.tok)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # stable: equal lengths keep the items' order
    out: list[str] = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, text in zip(chunk, generate_batch(model, renderer.tok, [ids[i] for i in chunk], cfg, stop)):
            out[i] = text
        if progress is not None:
            progress(len(chunk))
    return out
