"""A key/value cache for generation that writes each new token in place instead of copying the whole cache.

transformers' default cache (``DynamicLayer``) grows by ``torch.cat`` at every decoding step, so each step copies
every layer's keys and values: on a CPU, where decoding is bound by memory traffic, that copy was a third of a
decoding step (16 study-user dialogues of ~500 tokens, SmolLM2-135M in bfloat16: 27 of 85 ms a step,
``benchmarks/profile_generate.py``, 2026-12-07). Here each full-attention layer keeps a buffer sized for the prompt
and every token to come, and hands attention a view of its filled part: attention reads the same values with the
same strides within a row, so the answers are the same tokens (tests/runtime/test_kv_cache.py). A static cache
(``cache_implementation="static"``) also avoids the copy but attends over its whole length at every step, which cost
as much again here. Sliding-window and other special layers keep transformers' own classes.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from bapo.core.logprobs import base_model, forward_takes


class GrowingLayer(DynamicLayer):
    """A full-attention layer's cache in a preallocated buffer: ``keys``/``values`` are views of its first tokens.

    The buffer holds ``reserve`` tokens more than the first update brings (the prompt), and doubles if a caller goes
    beyond. Where another method of transformers' replaced ``keys`` (cropping, selecting rows, beam reordering), the
    next update starts a new buffer from them, so every inherited method stays correct."""

    def __init__(self, reserve: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.reserve = reserve
        self._keys_buf: torch.Tensor | None = None
        self._values_buf: torch.Tensor | None = None

    def _owns_views(self) -> bool:
        buf = self._keys_buf
        return (buf is not None and self.keys is not None and self.keys.numel() > 0
                and self.keys.data_ptr() == buf.data_ptr() and self.keys.shape[:2] == buf.shape[:2])

    def _adopt(self, key_states: torch.Tensor, value_states: torch.Tensor, held: int) -> None:
        """New buffers holding the ``held`` cached tokens, with room for the new states and ``reserve`` more (or as
        many again as are held, where that is more: doubling)."""
        capacity = held + key_states.shape[-2] + max(self.reserve, held)
        bufs = []
        for current, states in ((self.keys, key_states), (self.values, value_states)):
            batch, heads, _, dim = states.shape
            buf = states.new_empty((batch, heads, capacity, dim))
            if held:
                buf[..., :held, :] = current
            bufs.append(buf)
        self._keys_buf, self._values_buf = bufs

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.keys.shape[-2] if self.keys.numel() else 0
        end = held + key_states.shape[-2]
        if not self._owns_views() or end > self._keys_buf.shape[-2]:
            self._adopt(key_states, value_states, held)
        self._keys_buf[..., held:end, :] = key_states
        self._values_buf[..., held:end, :] = value_states
        self.keys = self._keys_buf[..., :end, :]
        self.values = self._values_buf[..., :end, :]
        return self.keys, self.values

    def reset(self) -> None:
        self._keys_buf = self._values_buf = None
        super().reset()

    def hold(self, keys_buf: torch.Tensor, values_buf: torch.Tensor, held: int) -> None:
        """Take buffers whose first ``held`` tokens are filled (by :func:`prefilled_cache`)."""
        self.device, self.is_initialized = keys_buf.device, True
        self._keys_buf, self._values_buf = keys_buf, values_buf
        self.keys, self.values = keys_buf[..., :held, :], values_buf[..., :held, :]


def generation_cache(model, reserve: int) -> DynamicCache | None:
    """A cache for one ``generate`` call whose full-attention layers are :class:`GrowingLayer` with room for
    ``reserve`` new tokens, or None (transformers' own choice) for a model that brings its own cache (state-space
    and hybrid models) or is an encoder-decoder."""
    inner = base_model(model)
    config = getattr(inner, "config", None)
    # transformers' own test for "a DynamicCache fits this model" (generate asks the same before building one).
    supports = getattr(inner, "_supports_default_dynamic_cache", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or not callable(supports) or not supports():
        return None
    cache = DynamicCache(config=config.get_text_config(decoder=True))
    cache.layers = [GrowingLayer(reserve) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def cache_kwargs(model, reserve: int) -> dict:
    """``generate``'s keyword for :func:`generation_cache` (``cache`` since transformers renamed
    ``past_key_values``; the name the model's forward takes), or nothing where transformers chooses."""
    cache = generation_cache(model, reserve)
    if cache is None:
        return {}
    name = "cache" if forward_takes(model, "cache") else "past_key_values"
    return {name: cache}


def prefilled_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: int, reserve: int) -> dict:
    """``generate``'s cache keyword with every prompt token but the last already processed, ``rows`` prompts at a
    time, each group at its own width; or nothing (``generate`` then does the whole prefill) for a model whose cache
    is not all :class:`GrowingLayer` (sliding windows, state spaces) or a one-token prompt.

    Decoding reads every weight once a step whatever the batch, so it gains from many rows; the prompts' forward pass
    is compute-bound and pays for every padding token, and a left-padded batch of many prompts is mostly padding
    where their lengths spread. So the prompts run in small groups, each padded only to its own longest, and their
    keys and values are laid right-aligned into one left-padded cache for the whole batch (the padding columns hold
    zeros; the attention mask hides them as it hides padding tokens). ``input_ids`` and ``attention_mask`` are the
    left-padded batch ``generate`` is then called with: it runs the last prompt token and decodes from there."""
    width = input_ids.shape[1] - 1
    kwargs = cache_kwargs(model, reserve)
    if width < 1 or not kwargs:
        return {}
    (name, cache), = kwargs.items()
    if not all(type(layer) is GrowingLayer for layer in cache.layers):
        return {}
    # Only the last position's logits would be wanted, and none is used: the head runs on one position where it can.
    last = {"logits_to_keep": 1} if forward_takes(model, "logits_to_keep") else {}
    bufs: list[list[torch.Tensor] | None] = [None] * len(cache.layers)
    for start in range(0, input_ids.shape[0], rows):
        mask = attention_mask[start:start + rows, :width]
        own = int(mask.sum(1).max())
        if own == 0:
            continue
        part = generation_cache(model, 0)
        ids, mask = input_ids[start:start + rows, width - own:width], mask[:, width - own:]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **last, **{name: part})
        for i, layer in enumerate(part.layers):
            if bufs[i] is None:
                bufs[i] = [t.new_zeros((input_ids.shape[0], t.shape[1], width + reserve, t.shape[3]))
                           for t in (layer.keys, layer.values)]
            for buf, t in zip(bufs[i], (layer.keys, layer.values)):
                buf[start:start + rows, :, width - own:width] = t
    if any(b is None for b in bufs):
        return {}
    for layer, (keys, values) in zip(cache.layers, bufs):
        layer.hold(keys, values, width)
    return kwargs
