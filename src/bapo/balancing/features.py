"""What the model sees in prompts and pairs: prompt embeddings (breadth) and per-pair loss gradients (depth).

[BPO] Breadth clusters prompt embeddings; depth clusters per-pair gradients along the model's optimization direction.
[GUESS] A prompt's embedding is the mean of the model's last hidden states over its tokens (the model's own view of
the prompt; no separate embedding model). A pair's gradient is that of the DPO loss with respect to the LoRA
parameters of a fresh adapter, seeded like the training run's: at that point the policy equals the reference, so the
reference log-probs are the policy's own, detached, and no cached values are needed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from bapo.core.logprobs import pad_batch, sequence_logps
from bapo.core.losses import LossConfig, PairLogps, preference_loss
from bapo.core.tokens import Encoded
from bapo.runtime.reference import Reference
from bapo.runtime.store import make_key


@torch.no_grad()
def mean_hidden_states(model, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 16) -> np.ndarray:
    """Mean last hidden state over each token sequence's tokens, right-padded in batches of ``batch_size``."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        width = max(len(x) for x in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, x in enumerate(chunk):
            input_ids[i, :len(x)] = torch.tensor(x)
            mask[i, :len(x)] = 1
        input_ids, mask = input_ids.to(model.device), mask.to(model.device)
        if body is not None:
            hidden = body(input_ids=input_ids, attention_mask=mask).last_hidden_state
        else:
            hidden = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * m).sum(1) / m.sum(1)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def prompt_embeddings(ref: Reference, prompts: Sequence[list[dict[str, str]]], batch_size: int = 16,
                      progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The reference's :func:`mean_hidden_states` of each prompt (in the chat template, cut to
    ``max_prompt_length``), cached in its store by weights and prompt tokens: a prompt is embedded once for every
    user, seed and budget that sees it. Uncached prompts go in length-sorted batches (little padding)."""
    ids = [tuple(ref.renderer.prompt_ids(m)[-ref.renderer.max_prompt_length:]) for m in prompts]
    keys = [make_key("embed", ref.cache_id, x) for x in ids]
    found = ref.store.get_vectors(keys)
    todo = sorted({k: x for k, x in zip(keys, ids) if k not in found}.items(), key=lambda kv: len(kv[1]))
    if progress is not None:
        progress(len(keys) - len(todo))
    step = batch_size * 4  # commit every few batches: a killed run keeps what it embedded
    for start in range(0, len(todo), step):
        chunk = todo[start:start + step]
        new = dict(zip([k for k, _ in chunk], mean_hidden_states(ref.model, [x for _, x in chunk], ref.pad_id or 0,
                                                                 batch_size)))
        ref.store.put_vectors(new)
        found.update(new)
        if progress is not None:
            progress(len(chunk))
    return np.stack([found[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)


class CountSketch:
    """A random projection of a long gradient to ``dim`` numbers: every coordinate is added, with a random sign, to
    one random bucket (Charikar et al., 2002). Inner products are kept in expectation, like a dense Gaussian
    projection's, but it needs one index and one sign per parameter instead of ``dim`` floats: a dense matrix for a
    135M model's LoRA would take ~0.6 GB, for a 7B model's several GB. Deterministic for a seed."""

    def __init__(self, sizes: Sequence[int], dim: int, seed: int, device: torch.device | str = "cpu"):
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.buckets = [torch.randint(0, dim, (n,), generator=g).to(device) for n in sizes]
        self.signs = [(torch.randint(0, 2, (n,), generator=g) * 2 - 1).float().to(device) for n in sizes]

    def __call__(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        out = torch.zeros(self.dim, dtype=torch.float32, device=self.buckets[0].device if self.buckets else "cpu")
        for x, b, s in zip(parts, self.buckets, self.signs):
            out.index_add_(0, b, x.reshape(-1).float() * s)
        return out


def pair_gradients(model, pairs: Sequence[tuple[Encoded, Encoded]], pad_id: int, loss: LossConfig, dim: int,
                   seed: int, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """One row per pair: the gradient of its preference loss on the trainable (LoRA) parameters of ``model``,
    projected by a seeded :class:`CountSketch` to ``dim`` numbers. ``model`` must be at its starting point (policy
    equal to reference)."""
    params = [p for p in model.parameters() if p.requires_grad]
    sketch = CountSketch([p.numel() for p in params], dim, seed, params[0].device if params else "cpu")
    was_training = model.training
    model.eval()  # no dropout: the gradient of the loss as training starts, deterministically
    rows = []
    try:
        for chosen, rejected in pairs:
            model.zero_grad(set_to_none=True)
            batch = {k: v.to(model.device) for k, v in pad_batch([chosen, rejected], pad_id).items()}
            logps, lens = sequence_logps(model, batch)
            ref = logps.detach()
            value, _ = preference_loss(PairLogps(logps[:1], logps[1:], ref[:1], ref[1:], lens[:1], lens[1:]), loss)
            value.backward()
            rows.append(sketch([torch.zeros_like(w) if w.grad is None else w.grad for w in params]).cpu().numpy())
            if progress is not None:
                progress(1)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
