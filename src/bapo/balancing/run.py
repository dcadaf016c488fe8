"""``bapo balance``: a user's prompts (or pairs) in, at most B preference pairs out, chosen by one strategy.

Reads top to bottom like the algorithm: validate the data, build each examined prompt's candidate pool (the data's
own pairs, or the model's responses scored by a judge; cached, so a killed run resumes), choose with
:mod:`bapo.balancing.select`, write ``OUT/pairs.jsonl`` (TRL's format) and ``OUT/report.json`` (what was chosen and why).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console
from transformers import set_seed

from bapo import progress
from bapo.balancing.candidates import Pool, candidate_texts, make_judge, pools_from_pairs, scored_pool
from bapo.balancing.config import BalanceConfig
from bapo.balancing.features import pair_gradients, prompt_embeddings
from bapo.balancing.select import (Pick, choose_by_gradient, choose_none, choose_uniform, representatives,
                                 seeded_order, square_root_split)
from bapo.core.losses import LossConfig
from bapo.data.config import renderer
from bapo.data.pairs import PreferencePair, load_pairs
from bapo.data.readers import load_prompts
from bapo.errors import ConfigError
from bapo.io import write_json, write_jsonl
from bapo.runtime.config import BaseResponseConfig
from bapo.runtime.models import add_lora, load_reward_model, load_tokenizer, resolve_model
from bapo.runtime.reference import LazyReference, encode_base, load_reference


@dataclass
class BalanceResult:
    """What a balance run kept: the pairs (also ``OUT/pairs.jsonl``), the prompts they use, and the time it took."""

    out: Path
    pairs: list[PreferencePair]
    prompts: int
    seconds: float


class Pools:
    """Candidate pools by prompt index, built on first use: the data's pairs, or the model's scored responses."""

    def __init__(self, cfg: BalanceConfig, prompts: list[list[dict[str, str]]], fixed: list[Pool] | None, reference,
                 judge=None, profile=None):
        self.cfg, self.prompts, self.reference, self.judge, self.profile = cfg, prompts, reference, judge, profile
        self.built: dict[int, Pool] = dict(enumerate(fixed)) if fixed is not None else {}

    @property
    def max_depth(self) -> int:
        if self.judge is None:
            return max((len(p.pairs) for p in self.built.values()), default=1)
        return self.cfg.responses * (self.cfg.responses - 1) // 2

    def get(self, indices: list[int]) -> list[Pool]:
        todo = [i for i in indices if i not in self.built]
        if todo:
            gen = BaseResponseConfig(max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                                     top_p=self.cfg.top_p, batch_size=self.cfg.batch_size, seed=self.cfg.seed)
            texts = candidate_texts(self.reference(), [self.prompts[i] for i in todo], self.cfg.responses,
                                    self.profile, gen)
            for i, t in zip(todo, texts):
                self.built[i] = scored_pool(self.prompts[i], t, self.judge)
        return [self.built[i] for i in indices]

    def counts(self) -> list[int]:
        """Pairs per prompt; 0 for prompts not examined (strategies then pass them over)."""
        return [len(self.built[i].pairs) if i in self.built else 0 for i in range(len(self.prompts))]


def examine(pools: Pools, order: list[int], need: int, ok: Callable[[Pool], bool]) -> None:
    """Build pools along ``order``, a batch at a time, until ``need`` of them pass ``ok`` (or the prompts run out)."""
    done, start = 0, 0
    while done < need and start < len(order):
        chunk = order[start:start + max(1, (need - done) * 4 // 3 + 1)]  # some prompts' candidates all tie
        done += sum(ok(p) for p in pools.get(chunk))
        start += len(chunk)


def representative_prompts(pools: Pools, clusters: list[list[int]], budget: int) -> dict[int, int]:
    """Prompt -> its breadth cluster: the member nearest each centre that yields a pair (the next nearest where its
    candidates all tie). [GUESS] Where those prompts hold fewer than ``budget`` candidate pairs (labelled data with
    few pairs per prompt), breadth grows: the next member nearest each centre, cluster by cluster, until they hold
    ``budget`` (or the prompts run out), so that depth can still choose B pairs."""
    kept: dict[int, int] = {}
    for rank in range(max(map(len, clusters))):
        lacking = [c for c in range(len(clusters)) if c not in kept.values() and rank < len(clusters[c])]
        for c, pool in zip(lacking, pools.get([clusters[c][rank] for c in lacking])):
            if pool.pairs:
                kept[clusters[c][rank]] = c
        if len(kept) == len(clusters):
            break
    held = sum(len(pools.built[i].pairs) for i in kept)
    for rank in range(1, max(map(len, clusters))):
        if held >= budget:
            break
        more = [(c, m[rank]) for c, m in enumerate(clusters) if rank < len(m) and m[rank] not in kept]
        for (c, i), pool in zip(more, pools.get([i for _, i in more])):
            if held < budget and pool.pairs:
                kept[i], held = c, held + len(pool.pairs)
    return kept


def choose_bpo(cfg: BalanceConfig, pools: Pools, ref, breadth: int, depth: int,
               console: Console) -> tuple[list[Pick], dict[int, int]]:
    """Breadth by prompt-embedding clusters, then depth by pair-gradient clusters (see :mod:`bapo.balancing.select`)."""
    with progress.bar("embedding prompts", len(pools.prompts)) as advance:
        emb = prompt_embeddings(ref, pools.prompts, cfg.batch_size, advance)
    clusters = representatives(emb, breadth, cfg.seed)
    kept = representative_prompts(pools, clusters, cfg.budget)
    rows = [(i, j) for i in kept for j in range(len(pools.built[i].pairs))]
    enc = []
    for i, j in rows:
        c, r = pools.built[i].pairs[j]
        enc.append(tuple(encode_base(ref.renderer, pools.built[i].messages, pools.built[i].responses[x]) for x in (c, r)))
    set_seed(cfg.seed)  # the adapter's start, as a training run with this seed would draw it
    model = add_lora(ref.model, cfg.lora)
    try:
        with progress.bar("pair gradients", len(enc)) as advance:
            grads = pair_gradients(model, enc, ref.pad_id, LossConfig(method="dpo", beta=cfg.beta),
                                   cfg.projection_dim, cfg.seed, advance)
    finally:
        ref.model = model.unload()
    chosen = choose_by_gradient(grads, cfg.budget, cfg.grad_clusters or depth, cfg.seed)
    console.print(f"bpo: {len(kept)} representative prompts, {len(rows)} candidate pairs, {len(chosen)} kept")
    return [Pick(rows[r][0], rows[r][1], "nearest its gradient cluster's centre", k, d) for r, k, d in chosen], kept


def balance(cfg: BalanceConfig, console: Console | None = None) -> BalanceResult:
    """Choose at most ``cfg.budget`` pairs with ``cfg.strategy``; the Python twin of ``bapo balance``."""
    console = console or Console()
    t0 = time.time()
    cfg.validate()

    # 1. Data and judge, checked before any model is loaded.
    if cfg.judge == "labels":
        data_pairs = load_pairs(cfg.data.path, cfg.data.split, cfg.data.user)
        fixed: list[Pool] | None = pools_from_pairs(data_pairs)
        prompts = [p.messages for p in fixed]
        judge = profile = None
        users = {p.user_id for p in data_pairs}
        user_id = cfg.data.user or (users.pop() if len(users) == 1 else None)
    else:
        prompts = list({str(m): m for m in load_prompts(cfg.data.path)}.values())
        fixed = None
        judge, profile = make_judge(cfg.judge, load_reward_model(cfg.reward_model, cfg.device) if cfg.judge ==
                                    "reward" else None)
        user_id = cfg.data.user or cfg.judge.replace(":", "-")
    if not prompts:
        raise ConfigError(f"data.path: {cfg.data.path} holds no prompts")
    model_path = resolve_model(cfg.model, cfg.cache_dir)
    render = renderer(load_tokenizer(model_path), cfg.data)
    reference = LazyReference(lambda: load_reference(model_path, render, cfg.cache_dir, cfg.device, cfg.dtype))
    pools = Pools(cfg, prompts, fixed, reference, judge, profile)

    # 2. Candidates for the prompts a strategy examines, then the choice.
    breadth_of: dict[int, int] = {}
    order = seeded_order(len(prompts), cfg.seed)
    if cfg.strategy == "none":
        examine(pools, order, cfg.budget, lambda p: bool(p.pairs))
        picks = choose_none(pools.counts(), cfg.budget, cfg.seed)
        breadth, depth = len(picks), 1
    else:
        breadth, depth = square_root_split(cfg.budget, cfg.breadth, cfg.depth, pools.max_depth)
        if cfg.strategy == "uniform":
            examine(pools, order, breadth, lambda p: len(p.pairs) >= depth)
            picks = choose_uniform(pools.counts(), breadth, depth, cfg.seed)
        else:
            picks, breadth_of = choose_bpo(cfg, pools, reference(), breadth, depth, console)

    # 3. Outputs: the pairs, grouped by prompt, and the report.
    rank = {i: n for n, i in enumerate(order)}
    picks.sort(key=lambda k: (rank[k.pool], k.pair))
    kept = [pools.built[k.pool].pair(k.pair, user_id, f"balance:{cfg.strategy}") for k in picks]
    out = Path(cfg.out)
    write_jsonl(out / "pairs.jsonl", [p.to_record() for p in kept])
    result = BalanceResult(out, kept, len({k.pool for k in picks}), round(time.time() - t0, 1))
    write_json(out / "report.json", report(cfg, pools, picks, breadth_of, (breadth, depth), result))
    console.print(f"balance ({cfg.strategy}): {len(kept)} pairs over {result.prompts} prompts -> {out / 'pairs.jsonl'}"
                  f" ({result.seconds:.0f} s)")
    return result


def report(cfg: BalanceConfig, pools: Pools, picks: list[Pick], breadth_of: dict[int, int],
           split: tuple[int, int], result: BalanceResult) -> dict:
    """What was chosen and why: per kept pair its prompt, scores, reason (and gradient cluster); per prompt its
    candidates and depth."""
    depth: dict[int, int] = {}
    for k in picks:
        depth[k.pool] = depth.get(k.pool, 0) + 1
    pairs = []
    for k in picks:
        pool = pools.built[k.pool]
        c, r = pool.pairs[k.pair]
        pairs.append({"prompt_index": k.pool, "chosen_index": c, "rejected_index": r, "reason": k.reason,
                      "chosen_score": None if pool.scores is None else pool.scores[c],
                      "rejected_score": None if pool.scores is None else pool.scores[r],
                      **({"gradient_cluster": k.cluster, "distance": round(k.distance, 4)} if k.cluster >= 0 else {})})
    prompts = [{"prompt_index": i, "prompt": pools.built[i].messages[-1]["content"][:200],
                "candidates": len(pools.built[i].responses), "pairs_available": len(pools.built[i].pairs),
                "depth": depth.get(i, 0), **({"breadth_cluster": breadth_of[i]} if i in breadth_of else {})}
               for i in sorted(pools.built)]
    histogram: dict[int, int] = {}
    for d in depth.values():
        histogram[d] = histogram.get(d, 0) + 1
    return {"strategy": cfg.strategy, "budget": cfg.budget, "kept_pairs": len(picks), "kept_prompts": result.prompts,
            "breadth": split[0], "depth": split[1], "depth_histogram": dict(sorted(histogram.items())),
            "prompts_available": len(pools.prompts), "prompts_examined": len(pools.built), "judge": cfg.judge,
            "seconds": result.seconds, "pairs": pairs, "prompts": prompts, "config": asdict(cfg)}
