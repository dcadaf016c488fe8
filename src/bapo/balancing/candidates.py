"""Each prompt's candidate pairs: responses, the judge's score of each, and the ordered pairs the scores give.

[BPO] The policy writes several responses per prompt, a judge scores them, and pairs are built from the scores. Here
the reference model (the policy at step 0) writes K responses: one greedy; with a profile judge, two more greedy ones
steered towards and away from the profile's pole by a system prompt (as the simulated users of ``bapo study`` are
built); then seeded samples up to K. All are cached by the reference, so an interrupted run resumes where it stopped.
[GUESS] Every two responses with different scores give a pair (the higher-scored chosen): at most K(K-1)/2 per prompt;
the primary pair (best against worst) comes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from bapo.data.pairs import PreferencePair, prompt_messages
from bapo.data.profiles import SIMULATED, Profile
from bapo.errors import ConfigError
from bapo.runtime.config import BaseResponseConfig
from bapo.runtime.models import reward_of

Judge = Callable[[list[dict[str, str]], str], float]


@dataclass
class Pool:
    """One prompt's candidates. ``pairs`` index ``responses`` as (chosen, rejected), the primary pair first;
    ``scores`` is None where the pairs are the data's own labels."""

    messages: list[dict[str, str]]
    responses: list[str]
    scores: list[float] | None
    pairs: list[tuple[int, int]]

    def pair(self, j: int, user_id: str | None, source: str) -> PreferencePair:
        c, r = self.pairs[j]
        return PreferencePair(prompt_messages(self.messages), self.responses[c], self.responses[r], user_id, source)


def pools_from_pairs(pairs: Sequence[PreferencePair]) -> list[Pool]:
    """Labels only: the data's pairs grouped by prompt, in the data's order (its first pair of a prompt is primary)."""
    pools: dict[str, Pool] = {}
    for p in pairs:
        pool = pools.setdefault(p.prompt_key, Pool(p.messages, [], None, []))
        ids = []
        for text in (p.chosen, p.rejected):
            if text not in pool.responses:
                pool.responses.append(text)
            ids.append(pool.responses.index(text))
        if (ids[0], ids[1]) not in pool.pairs:
            pool.pairs.append((ids[0], ids[1]))
    return list(pools.values())


def scored_pool(messages: list[dict[str, str]], responses: Sequence[str], judge: Judge) -> Pool:
    """A pool from candidate responses (duplicates and empty ones dropped) and the judge's scores."""
    texts = list(dict.fromkeys(t.strip() for t in responses if t.strip()))
    scores = [float(judge(messages, t)) for t in texts]
    ordered = [(i, j) for i in range(len(texts)) for j in range(len(texts)) if scores[i] > scores[j]]
    if ordered:
        best = max(range(len(texts)), key=lambda i: (scores[i], -i))
        worst = min(range(len(texts)), key=lambda i: (scores[i], i))
        ordered.remove((best, worst))
        ordered.insert(0, (best, worst))
    return Pool(messages, texts, scores, ordered)


def make_judge(name: str, reward=None) -> tuple[Judge, Profile | None]:
    """The judge named ``psoups:PROFILE`` (a simulated user's rule; it also steers candidates) or ``reward``
    (``reward`` = (model, tokenizer) of a sequence-classification reward model)."""
    if name.startswith("psoups:"):
        profile = SIMULATED.get(name.split(":", 1)[1])
        if profile is None:
            raise ConfigError(f"judge: unknown profile '{name}'; choose psoups:{' or psoups:'.join(SIMULATED)}")
        return (lambda messages, text: profile(text)), profile
    if name == "reward":
        if reward is None:
            raise ConfigError("judge: reward needs --reward-model")
        return (lambda messages, text: reward_of(*reward, messages, text)), None
    raise ConfigError(f"judge: unknown '{name}'; choose psoups:PROFILE, reward or labels")


def candidate_texts(reference, prompts: Sequence[list[dict[str, str]]], k: int, steer: Profile | None,
                    gen: BaseResponseConfig) -> list[list[str]]:
    """K responses per prompt by the reference (see the module docstring); ``gen`` sets length and sampling."""
    greedy = BaseResponseConfig(max_new_tokens=gen.max_new_tokens, batch_size=gen.batch_size)
    variants = [list(prompts)]
    if steer is not None and k >= 3:
        variants += [[[{"role": "system", "content": s}, *p] for p in prompts] for s in (steer.steer_towards,
                                                                                          steer.steer_away)]
    flat = [p for v in variants for p in v]
    texts = [t[0] for t in reference.generate(flat, greedy)] if flat else []
    n = len(prompts)
    out = [[texts[v * n + i] for v in range(len(variants))] for i in range(n)]
    samples = k - len(variants)
    if samples > 0 and n:
        sampled = BaseResponseConfig(max_new_tokens=gen.max_new_tokens, do_sample=True, num_responses=samples,
                                     temperature=gen.temperature, top_p=gen.top_p, batch_size=gen.batch_size,
                                     seed=gen.seed)
        for cands, more in zip(out, reference.generate(list(prompts), sampled)):
            cands.extend(more)
    return out
