"""Per-sequence log-probabilities of response tokens: the one place where a model meets a loss.

``sequence_logps`` runs the transformer body once over a right-padded batch and applies the output head only at the
positions that predict response tokens, so prompt positions and padding never cost a vocabulary-sized matmul.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from bapo.tokens import Encoded


def pad_batch(seqs: Sequence[Encoded], pad_id: int) -> dict[str, Tensor]:
    """Right-pad sequences. ``target_mask[i, t]`` is True where position t predicts a response token of row i."""
    length = max(len(s.prompt) + len(s.response) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), length), dtype=torch.long)
    target = torch.zeros((len(seqs), length), dtype=torch.bool)
    for i, s in enumerate(seqs):
        n, p = len(s.prompt) + len(s.response), len(s.prompt)
        ids[i, :n] = torch.tensor(s.ids)
        attn[i, :n] = 1
        target[i, p - 1 : n - 1] = True
    return {"input_ids": ids, "attention_mask": attn, "target_mask": target}


def _split_head(model):
    """(body, head) of a causal LM, or None where logits are not simply head(hidden) (softcapping, scaling)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None
    body = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if body is None or head is None:
        return None
    return body, head


def sequence_logps(model, batch: dict[str, Tensor], fast: bool = True) -> tuple[Tensor, Tensor]:
    """Sum of log p(response token) per row, shape ``(S,)``, and the number of response tokens, ``(S,)``.

    ``fast=False`` is the straightforward form (full logits at every position); both give the same numbers.
    """
    ids, attn, target = batch["input_ids"], batch["attention_mask"], batch["target_mask"]
    labels = ids[:, 1:]
    tmask = target[:, :-1]
    parts = _split_head(model) if fast else None
    if parts is None:
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        token_logps = token_logps * tmask
        return token_logps.sum(-1), tmask.sum(-1)
    body, head = parts
    hidden = body(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state[:, :-1]
    rows, cols = tmask.nonzero(as_tuple=True)
    logits = head(hidden[rows, cols]).float()  # (N, V) only where a response token is predicted
    picked = logits.gather(-1, labels[rows, cols].unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    sums = torch.zeros(ids.shape[0], dtype=token_logps.dtype, device=ids.device).index_add(0, rows, token_logps)
    return sums, tmask.sum(-1)


@torch.no_grad()
def score(model, seqs: Sequence[Encoded], pad_id: int, batch_size: int = 16, progress=None) -> list[tuple[float, int]]:
    """(log p, n tokens) of every response under ``model`` in eval mode; batches are built by length."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = pad_batch([seqs[i] for i in idx], pad_id)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            sums, lens = sequence_logps(model, batch)
            for i, s, n in zip(idx, sums.tolist(), lens.tolist()):
                out[i] = (s, int(n))
            if progress is not None:
                progress(len(idx))
    finally:
        model.train(was_training)
    return out
