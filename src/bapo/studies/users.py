"""Users that need a model: simulated users whose candidate answers the base model writes, and the judge that
measures how far any user departs from general preference (heterogeneity)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from bapo.balancing.candidates import candidate_texts
from bapo.core.tokens import encode_pairs
from bapo.data.pairs import PreferencePair
from bapo.data.profiles import SIMULATED
from bapo.data.readers import load_prompts
from bapo.data.users import Sources, User, build_user, make_pair, parse_spec, sample, user_name
from bapo.errors import ConfigError
from bapo.runtime.config import BaseResponseConfig
from bapo.runtime.models import reward_of


def make_user(spec: str, sources: Sources, n_pairs: int, seed: int = 0, reference=None,
              candidate_tokens: int = 96, candidate_samples: int = 2) -> User:
    """Any user: published data (:func:`bapo.data.users.build_user`), or, for ``psoups:PROFILE``, pairs of the base
    model's candidate answers (``reference``, a :class:`bapo.runtime.reference.Reference`) labelled by the profile.
    At most ``n_pairs``, a seeded sample (all when ``n_pairs`` is 0)."""
    kind, args = parse_spec(spec)
    if kind != "psoups":
        return build_user(spec, sources, n_pairs, seed)
    if reference is None:
        raise ConfigError(f"users: '{spec}' needs the base model to write candidate answers")
    name = user_name(spec)
    rng = random.Random(f"{seed}:{spec}")
    path = sources.path("prompts")
    prompts = load_prompts(path)
    rng.shuffle(prompts)
    pairs: list[PreferencePair] = []
    start = 0
    while start < len(prompts) and (not n_pairs or len(pairs) < n_pairs):
        # a third more prompts than pairs still wanted: some candidate sets tie and give no pair (a profile whose
        # score is often 0, such as friendliness, ties often: then more prompts are taken, until enough)
        take = int((n_pairs - len(pairs)) * 4 / 3) + 1 if n_pairs else len(prompts)
        pairs += simulated_pairs(SIMULATED[args[0]], prompts[start:start + take], reference, name, candidate_tokens,
                                 candidate_samples, seed)
        start += take
    return User(name, spec, sample(pairs, n_pairs, rng), None, path)


def simulated_pairs(profile, prompts: list[list[dict[str, str]]], reference, user: str,
                    max_new_tokens: int = 96, samples: int = 2, seed: int = 0) -> list[PreferencePair]:
    """Label the base model's candidate answers with a profile: for each prompt, the highest- against the lowest-scored
    of its candidates. Candidates: three greedy answers (steered towards the profile's pole, steered away from it,
    unsteered) and ``samples`` unsteered samples (temperature 0.7, top-p 0.95, seeded by ``seed`` and the prompt), all
    cached by the reference, so a user is rebuilt identically. Prompts whose candidates all score the same give no
    pair."""
    written = candidate_texts(reference, prompts, 3 + samples, profile,
                              BaseResponseConfig(max_new_tokens=max_new_tokens, seed=seed))
    cands = [[c[1], c[2], c[0], *c[3:]] for c in written]  # towards, away, unsteered, samples: the tie order below
    pairs = []
    for p, texts_i in zip(prompts, cands):
        scored = sorted(dict.fromkeys(t.strip() for t in texts_i if t.strip()), key=profile)
        if len(scored) >= 2 and profile(scored[-1]) > profile(scored[0]):
            pairs.append(make_pair(p, scored[-1], scored[0], user, f"psoups:{profile.name}"))
    return pairs


@dataclass
class Heterogeneity:
    """Fraction of a user's pairs whose label disagrees with the general judge (ties count one half)."""

    value: float
    stderr: float
    n: int
    judge: str


JUDGE_LABELS = "general labels in the data"
JUDGE_BASE = "base model's length-normalized log-likelihood (last resort)"


def heterogeneity(user: User, judge: str = "auto", reference=None, reward=None) -> Heterogeneity:
    """How far ``user`` departs from general preference.

    ``judge``: ``reward`` (``reward`` = (model, tokenizer) of a sequence-classification reward model), ``labels``
    (the general labels the data carries: VPL's original HH label, flip users' unflipped label), ``base`` (the
    ``reference`` model prefers the response with the higher mean log-prob per token), or ``auto``: the first of
    those that is available.
    """
    if judge == "auto":
        judge = "reward" if reward is not None else "labels" if user.general_agree is not None else "base"
    if judge == "labels":
        if user.general_agree is None:
            raise ConfigError(f"judge: user {user.spec} carries no general labels; use a reward model or the base model")
        disagree = [0.0 if a else 1.0 for a in user.general_agree]
        name = JUDGE_LABELS
    elif judge == "reward":
        if reward is None:
            raise ConfigError("judge: reward needs --reward-model")
        disagree = []
        for p in user.pairs:
            c, r = (reward_of(*reward, p.messages, x) for x in (p.chosen, p.rejected))
            disagree.append(0.5 if c == r else float(c < r))
        name = "reward model"
    elif judge == "base":
        if reference is None:
            raise ConfigError("judge: base needs the base model")
        enc = encode_pairs(user.pairs, reference.renderer)
        vals = reference.logps([s for pair in enc for s in pair], description=f"judging {user.name}")
        disagree = []
        for i in range(len(enc)):
            (lc, nc), (lr, nr) = vals[2 * i], vals[2 * i + 1]
            c, r = lc / max(nc, 1), lr / max(nr, 1)
            disagree.append(0.5 if abs(c - r) < 1e-9 else float(c < r))
        name = JUDGE_BASE
    else:
        raise ConfigError(f"judge: unknown '{judge}'; choose auto, reward, labels or base")
    n = len(disagree)
    if not n:
        raise ConfigError(f"users: {user.spec} has no pairs")
    mean = sum(disagree) / n
    var = sum((x - mean) ** 2 for x in disagree) / max(n - 1, 1)
    return Heterogeneity(mean, (var / n) ** 0.5, n, name)
