"""Per-sequence log-probabilities of response tokens: the one place where a model meets a loss.

``sequence_logps`` runs the transformer body once over a right-padded batch and applies the output head only at the
positions that predict response tokens, so prompt positions and padding never cost a vocabulary-sized matmul.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torch import Tensor

from bapo.core.tokens import Encoded
from bapo.errors import ModelError


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


def base_model(model):
    """The transformers model under a peft wrapper (``get_base_model``), or ``model`` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def forward_takes(model, name: str) -> bool:
    """Whether the forward of ``model`` (under a peft wrapper: its base model's) takes the keyword ``name``:
    transformers versions rename and add them (``past_key_values`` to ``cache``, ``logits_to_keep``)."""
    return name in inspect.signature(base_model(model).forward).parameters


def _split_head(model):
    """(body, head) of a causal LM, or None where logits are not simply head(hidden) (softcapping, scaling)."""
    base = base_model(model)
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
    if not fast:
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1].float()
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        token_logps = token_logps * tmask
        return token_logps.sum(-1), tmask.sum(-1)
    rows, cols = tmask.nonzero(as_tuple=True)
    # (N, V) only where a response token is predicted
    logits = _logits_at(model, dict(input_ids=ids, attention_mask=attn, use_cache=False), [(rows, cols)])[0]
    token_logps = label_logps(logits, labels[rows, cols])
    sums = torch.zeros(ids.shape[0], dtype=token_logps.dtype, device=ids.device).index_add(0, rows, token_logps)
    return sums, tmask.sum(-1)


@torch.no_grad()
def score(model, seqs: Sequence[Encoded], pad_id: int, batch_size: int = 16, progress=None,
          pack: bool = True) -> list[tuple[float, int]]:
    """(log p, n tokens) of every response under ``model`` in eval mode.

    Sequences that share a prompt are packed into one row (the prompt encoded once); rows are batched by length,
    ``batch_size`` sequences at a time.
    """
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(seqs):
        by_prompt.setdefault(s.prompt if pack else (i,), []).append(i)
    groups = sorted(by_prompt.values(), key=lambda idx: len(seqs[idx[0]].prompt) + sum(len(seqs[i].response) for i in idx))
    was_training = model.training
    model.eval()
    try:
        start = 0
        while start < len(groups):
            chunk, n = [], 0
            while start < len(groups) and (not chunk or n + len(groups[start]) <= batch_size):
                chunk.append(groups[start])
                n += len(groups[start])
                start += 1
            order = [list(range(sum(map(len, chunk[:g])), sum(map(len, chunk[: g + 1])))) for g in range(len(chunk))]
            batch = pack_groups([[seqs[i] for i in idx] for idx in chunk], pad_id, order)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            sums, lens = packed_logps(model, batch)
            flat = [i for idx in chunk for i in idx]
            for i, s_, c in zip(flat, sums.tolist(), lens.tolist()):
                out[i] = (s_, int(c))
            if progress is not None:
                progress(len(flat))
    finally:
        model.train(was_training)
    return out


def pack_groups(groups: Sequence[Sequence[Encoded]], pad_id: int,
                order: Sequence[Sequence[int]] | None = None) -> dict[str, Tensor]:
    """One row per group of sequences that share a prompt: ``prompt, response_1, response_2, ...``.

    The prompt is encoded once for all its responses: a 4D attention mask lets each response see the prompt and its
    own earlier tokens only, and position ids restart after the prompt for every response, so each response's
    log-probs equal those of ``prompt + response`` on its own. Sequence ``k`` of group ``g`` is output ``g + k * G``
    (all first responses, then all second ones...), matching :class:`bapo.training.PairCollator`'s order, unless
    ``order[g][k]`` gives each sequence's output index.
    """
    n_groups = len(groups)
    if order is None:
        assert all(len(g) == len(groups[0]) for g in groups), "every group needs the same number of responses"
        order = [[g + k * n_groups for k in range(len(grp))] for g, grp in enumerate(groups)]
    assert all(s.prompt == g[0].prompt for g in groups for s in g), "a group shares one prompt"
    length = max(len(g[0].prompt) + sum(len(s.response) for s in g) for g in groups)
    ids = torch.full((n_groups, length), pad_id, dtype=torch.long)
    pos = torch.zeros((n_groups, length), dtype=torch.long)
    seg = torch.full((n_groups, length), -1, dtype=torch.long)  # -1 pad, 0 prompt, k+1 response k
    rows, cols, labels, seq = [], [], [], []
    for g, group in enumerate(groups):
        p = len(group[0].prompt)
        ids[g, :p] = torch.tensor(group[0].prompt)
        pos[g, :p] = torch.arange(p)
        seg[g, :p] = 0
        start = p
        for k, s in enumerate(group):
            n = len(s.response)
            ids[g, start : start + n] = torch.tensor(s.response)
            pos[g, start : start + n] = torch.arange(p, p + n)
            seg[g, start : start + n] = k + 1
            # token t of the response is predicted at the previous position: the prompt's last for t = 0
            predictors = [p - 1] + list(range(start, start + n - 1))
            rows += [g] * n
            cols += predictors
            labels += s.response
            seq += [order[g][k]] * n
            start += n
    same = seg.unsqueeze(2) == seg.unsqueeze(1)
    allowed = (seg.unsqueeze(1) == 0) | same  # the prompt, or the same segment...
    allowed &= torch.ones(length, length, dtype=torch.bool).tril()  # ...and causal
    allowed |= torch.eye(length, dtype=torch.bool)  # padding attends to itself, so no row is empty
    # Kept boolean here: packed_logps turns it into the additive mask in the model's own dtype.
    return {"input_ids": ids, "attention_mask": allowed.unsqueeze(1), "position_ids": pos,
            "rows": torch.tensor(rows), "cols": torch.tensor(cols), "labels": torch.tensor(labels),
            "seq": torch.tensor(seq), "n_seqs": torch.tensor(sum(len(g) for g in groups))}


def packed_logits(model, batch: dict[str, Tensor], select: Tensor | None = None) -> Tensor:
    """Float logits at every position of a :func:`pack_groups` batch that predicts a response token, ``(N, V)``;
    with ``select`` (a boolean mask over those N positions) at the selected ones only."""
    return packed_logits_parts(model, batch, [select])[0]


def packed_logits_parts(model, batch: dict[str, Tensor], parts: Sequence[Tensor | None]) -> list[Tensor]:
    """:func:`packed_logits` at each of ``parts`` (boolean masks over the N scored positions; None: all of them),
    the transformer body run once. Each part's logits come from the output head over that part alone, so they are
    the same bits as another pass's at the same part wherever the hidden states are (the in-batch reference,
    :func:`bapo.training.trainer.batch_pair_logps`): a matmul's rounding can depend on its shape."""
    kw = dict(input_ids=batch["input_ids"], attention_mask=attention_masks(unwrapped(model), batch["attention_mask"],
                                                                         batch["position_ids"]),
              position_ids=batch["position_ids"], use_cache=False)
    rows, cols = batch["rows"], batch["cols"]
    return _logits_at(model, kw, [(rows, cols) if m is None else (rows[m], cols[m]) for m in parts])


def _config(model):
    return getattr(base_model(model), "config", None)


def attention_masks(model, allowed: Tensor, position_ids: Tensor) -> Tensor | dict[str, Tensor]:
    """The additive attention mask of a packed batch for ``model``, with the model's sliding window where it has one.

    transformers passes a ready 4D mask through unchanged, to full and sliding layers alike, so a packed batch must
    carry the window itself: a token sees another only if their positions differ by less than ``sliding_window``
    (transformers' ``sliding_window_overlay``; positions, not columns, since responses restart after the prompt).
    A model whose layers mix full and sliding attention (``config.layer_types``: Gemma 2 and 3, Qwen 2 and 3 with
    ``use_sliding_window``) takes one mask per layer type, as a dict; one whose every layer slides (Mistral, Phi-3)
    takes the windowed mask alone. ``allowed`` is :func:`pack_groups`'s boolean ``(B, 1, L, L)`` mask.
    """
    cfg = _config(model)
    dtype = model_dtype(model)
    window = getattr(cfg, "sliding_window", None)
    types = set(getattr(cfg, "layer_types", None) or ())
    full = additive_mask(allowed, dtype)
    if not window or (types and "sliding_attention" not in types):
        return full
    unknown = types - {"full_attention", "sliding_attention"}
    if unknown:
        raise ModelError(f"{type(model).__name__}: its layers use {', '.join(sorted(unknown))} attention, for which "
                         f"bapo builds no mask (it handles full and sliding-window attention)")
    near = (position_ids.unsqueeze(2) - position_ids.unsqueeze(1)) < window  # (B, L, L)
    sliding = additive_mask(allowed & near.unsqueeze(1), dtype)
    if types == {"full_attention", "sliding_attention"}:
        return {"full_attention": full, "sliding_attention": sliding}
    return sliding


def unwrapped(model):
    """The model inside a data-parallel wrapper (DistributedDataParallel, DeepSpeed's engine, FSDP's first form: each
    holds it as ``.module``), or ``model`` itself."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) and not hasattr(model, "get_base_model") else model


def _sharded(model) -> bool:
    """Whether parameters live sharded across processes (FSDP, DeepSpeed ZeRO-3): then the output head can only run
    inside the model's own forward, which gathers them, so the logits are taken whole."""
    stage = getattr(model, "zero_optimization_stage", None)
    return (type(model).__name__ == "FullyShardedDataParallel" or any(type(m).__name__.startswith("FSDP")
            for m in (model, unwrapped(model))) or (callable(stage) and stage() == 3))


def _logits_at(model, kw: dict, at: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """Float logits at each list of positions (rows, cols) in ``at``: the transformer body runs once on every
    position, the output head on each list's positions. A data-parallel wrapper's own forward must run (it is what
    synchronises gradients across processes), so there the body's last hidden state is taken from the wrapped call
    (``hidden_states[-1]`` is the final-normed state in transformers) with the head's logits computed at one position
    only."""
    inner = unwrapped(model)
    parts = None if _sharded(model) else _split_head(inner)
    if parts is None:
        logits = model(**kw).logits
        return [logits[rows, cols].float() for rows, cols in at]
    body, head = parts
    if inner is not model:
        hidden = model(**kw, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    else:
        hidden = body(**kw).last_hidden_state
    return [head(hidden[rows, cols]).float() for rows, cols in at]


def per_sequence(token_values: Tensor, batch: dict[str, Tensor], select: Tensor | None = None) -> Tensor:
    """Sum per sequence of values given at a packed batch's scored positions (or at its ``select`` ones), ``(S,)``."""
    seq = batch["seq"] if select is None else batch["seq"][select]
    n = int(batch["n_seqs"])
    return torch.zeros(n, dtype=token_values.dtype, device=token_values.device).index_add(0, seq, token_values)


def packed_logps(model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Like :func:`sequence_logps` for a batch from :func:`pack_groups`: sums and token counts per sequence."""
    return logps_of(packed_logits(model, batch), batch)


def logps_of(logits: Tensor, batch: dict[str, Tensor], select: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-sequence sums of the labels' log-probs under ``logits`` (from :func:`packed_logits`, at the ``select``
    positions where given: sequences with none sum to 0), and every sequence's token count."""
    labels = batch["labels"] if select is None else batch["labels"][select]
    return per_sequence(label_logps(logits, labels), batch, select), token_counts(batch)


def token_counts(batch: dict[str, Tensor]) -> Tensor:
    """Scored tokens per sequence of a :func:`pack_groups` batch."""
    seq = batch["seq"]
    return torch.zeros(int(batch["n_seqs"]), dtype=torch.long, device=seq.device).index_add(0, seq, torch.ones_like(seq))


def label_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[label] at each row, ``(N, V)`` and ``(N,)`` in, ``(N,)`` out: minus cross-entropy, whose
    fused log-softmax reads the ``(N, V)`` logits once forward and once backward; ``gather - logsumexp`` made
    five passes over them (max, subtract, exp, sum, log) and took 18% of a bfloat16 training step on SmolLM2-135M
    (2026-12-05, benchmarks/profile_train.py)."""
    return -torch.nn.functional.cross_entropy(logits, labels, reduction="none")


def model_dtype(model) -> torch.dtype:
    """The dtype a model computes in (its weights'; peft's wrapper forwards ``dtype`` to the base model)."""
    return getattr(model, "dtype", torch.float32)


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean attention mask (True = may attend) as the additive mask attention adds to its scores, in ``dtype``:
    0 where allowed, the dtype's most negative finite value elsewhere (not -inf, which turns a masked row to NaN)."""
    if allowed.dtype != torch.bool:
        return allowed.to(dtype)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
