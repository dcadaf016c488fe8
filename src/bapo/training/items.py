"""What a run trains on: pairs, or rated answers (thumbs up or down) for an unpaired loss such as KTO.

A preference loss reads pairs; an unpaired one (:attr:`bapo.core.losses.LossConfig.unpaired`) reads rated answers.
Unpaired feedback files train only an unpaired loss (a clear error otherwise); pairs train either, unpaired for KTO
after the held-out split (each chosen answer liked, each rejected one disliked), so the held-out pairs stay pairs and
an unpaired run's personalization is scored exactly as a pairwise run's. Each rated answer travels with a mismatched
one (another item's answer under its prompt), from which KTO estimates its reference point.
"""

from __future__ import annotations

import warnings

from bapo.core.tokens import Encoded, Renderer, encode_pairs
from bapo.data.feedback import Feedback, holds_feedback, load_feedback, mismatched, unpair
from bapo.data.pairs import PreferencePair, load_pairs, split_holdout
from bapo.errors import ConfigError, DataError, Problem
from bapo.training.config import TrainConfig

Item = PreferencePair | Feedback


def is_feedback_data(path: str, split: str, unpaired: bool) -> bool:
    """Whether ``path`` holds rated answers rather than pairs; a :class:`ConfigError` if it does and the loss is
    pairwise."""
    if not holds_feedback(path, split):
        return False
    if not unpaired:
        raise ConfigError(f"data.path: {path} holds unpaired feedback (prompt, completion, label): train it with "
                          "--method kto, or add the anchor with --method bapo --pref-loss kto")
    return True


def load_items(path: str, split: str, user: str, unpaired: bool) -> list[Item]:
    """Pairs or rated answers from ``path``; rated answers only where the loss is unpaired."""
    if is_feedback_data(path, split, unpaired):
        return list(load_feedback(path, split, user))
    return list(load_pairs(path, split, user))


def load_splits(cfg: TrainConfig) -> tuple[list[Item], list[Item]]:
    """The training items and the held-out ones (a separate file, or a seeded split by prompt); see the module."""
    unpaired = cfg.loss.unpaired
    items = load_items(cfg.data.path, cfg.data.split, cfg.data.user, unpaired)
    if cfg.data.eval_path:
        train, held = items, load_items(cfg.data.eval_path, cfg.data.split, cfg.data.user, unpaired)
    else:
        train, held = split_holdout(items, cfg.data.holdout, cfg.seed)
    train = as_trained(train, unpaired)
    if unpaired and (warning := thumbs_balance(train, cfg.loss.desirable_weight, cfg.loss.undesirable_weight)):
        warnings.warn(warning, stacklevel=2)
    return train, held


def thumbs_balance(items: list[Item], desirable_weight: float, undesirable_weight: float) -> str | None:
    """A warning when weighted liked answers are not 1 to 4/3 times the weighted disliked ones, the range the KTO
    paper recommends (Ethayarajh et al. 2024; TRL's KTOTrainer warns the same); None when they are, or
    the items are pairs."""
    liked = sum(1 for i in items if isinstance(i, Feedback) and i.liked)
    disliked = sum(1 for i in items if isinstance(i, Feedback) and not i.liked)
    if not liked or not disliked:
        return None if not liked + disliked else (
            f"KTO: the training thumbs are all {'up' if liked else 'down'}: it learns only to raise (or lower) them")
    ratio = desirable_weight * liked / (undesirable_weight * disliked)
    if 1 <= ratio <= 4 / 3:
        return None
    hint = disliked * undesirable_weight / liked
    return (f"KTO: {liked} liked and {disliked} disliked answers weigh {ratio:.2f} to 1 at these weights; the KTO paper "
            f"recommends 1 to 1.33: try --desirable-weight {hint:.2f} (to {hint * 4 / 3:.2f})")


def as_trained(items: list[Item], unpaired: bool) -> list[Item]:
    """Training items in the form the loss reads: pairs unpaired for an unpaired loss."""
    pairs = [i for i in items if isinstance(i, PreferencePair)]
    return [*unpair(pairs), *(i for i in items if isinstance(i, Feedback))] if unpaired and pairs else items


def encode_items(items: list[Item], renderer: Renderer, seed: int) -> list[tuple[Encoded, Encoded]]:
    """Each pair's chosen and rejected sequence, or each rated answer and its mismatched answer (seeded); raise
    :class:`DataError` listing every over-long text."""
    if not items or isinstance(items[0], PreferencePair):
        return encode_pairs(items, renderer)
    if len(items) < 2:
        raise DataError(Problem(items[0].source.rsplit(":", 1)[0], 0, "completion",
                                "KTO needs at least 2 rated answers (its reference point pairs each with another)"))
    partner = mismatched(items, seed)
    problems: list[Problem] = []
    out = []
    for f, j in zip(items, partner):
        rated = renderer.encode(f.messages, f.completion, f.source, "completion", problems)
        # another prompt's answer is not the user's text: cut to the limits, never an error
        other = renderer.encode(f.messages, items[j].completion, f.source, "completion", [], truncate=True)
        if rated is not None and other is not None:
            out.append((rated, other))
    if problems:
        raise DataError(problems)
    return out


def check_encodable(items: list[Item], renderer: Renderer) -> None:
    """Raise :class:`DataError` now, not at evaluation time, for any over-long held-out text."""
    problems: list[Problem] = []
    for i in items:
        if isinstance(i, Feedback):
            renderer.encode(i.messages, i.completion, i.source, "completion", problems)
    if problems:
        raise DataError(problems)
    encode_pairs([i for i in items if isinstance(i, PreferencePair)], renderer)


def describe_data(path: str, split: str = "train", user: str = "", tokenizer=None, data=None) -> str:
    """``bapo validate``: read and validate a file of pairs or thumbs (every problem a :class:`DataError`), and with a
    tokenizer and a :class:`~bapo.data.config.DataConfig` check every text against the length limits too; return
    what it holds, in one line."""
    rated = holds_feedback(path, split)
    items: list[Item] = list(load_feedback(path, split, user) if rated else load_pairs(path, split, user))
    if tokenizer is not None:
        render = Renderer(tokenizer, data.max_length, data.max_prompt_length, truncate=False)
        check_encodable(items, render)
    users = sorted({i.user_id for i in items if i.user_id is not None})
    prompts = len({i.prompt_key for i in items})
    tail = f", users: {', '.join(users)}" if users else ""
    if rated:
        liked = sum(1 for i in items if isinstance(i, Feedback) and i.liked)
        return (f"{len(items)} rated answers ({liked} liked, {len(items) - liked} disliked), {prompts} prompts "
                f"(unpaired feedback){tail}")
    return f"{len(items)} pairs, {prompts} prompts{tail}"
