"""Base responses y_b and reference log-probs, computed once by the reference model and cached.

BAPO anchors the policy to what the reference model itself says (its *base responses*). This step writes them, and
in the same pass scores the reference log-probs of chosen, rejected and base responses, so training never holds a
second model in memory. Everything is keyed by model fingerprint + token ids (+ generation settings) in a
:class:`~bapo.store.Store`: a rerun reuses it, an interrupted run resumes at the first missing batch.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from bapo import progress
from bapo.core.logprobs import score
from bapo.core.tokens import Encoded, Renderer
from bapo.data.feedback import Feedback
from bapo.runtime import distributed
from bapo.runtime.config import BaseResponseConfig, EngineSettings
from bapo.runtime.generate import generate_batch, sampling_seed, stop_ids
from bapo.runtime.models import cache_root, dtype_name, load_model, load_tokenizer, model_fingerprint, resolve_model
from bapo.runtime.remote import Completion, RemoteEngine, check_serves
from bapo.runtime.store import Store, make_key


def weights_cache_id(fingerprint: str, dtype: torch.dtype) -> str:
    """What cache keys start with: the weights' fingerprint, plus the dtype when it is not float32 (bfloat16 numbers
    and greedy answers differ from float32 ones, so they must never be mixed in one cache)."""
    return fingerprint if dtype == torch.float32 else f"{fingerprint}-{dtype_name(dtype)}"


@dataclass
class Reference:
    """The reference model, its tokenizer and the cache that remembers what it computed."""

    model: object
    tokenizer: object
    renderer: Renderer
    store: Store
    fingerprint: str  # of the weights on disk: what an adapter was trained from
    computed: Counter = field(default_factory=Counter)  # what this process computed itself (not read from the cache)
    engine: EngineSettings = field(default_factory=EngineSettings)  # where it generates: here, or on a server
    _remote: object = None  # the server's client (RemoteEngine), once opened
    _checked: bool = False  # whether the server was checked against this model (on the first prompt not cached)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def cache_id(self) -> str:
        return weights_cache_id(self.fingerprint, getattr(self.model, "dtype", torch.float32))

    def generate(self, prompts: Sequence[list[dict[str, str]]], cfg: BaseResponseConfig,
                 show: bool = True) -> list[list[str]]:
        """``cfg.num_responses`` base responses for each prompt (chat messages), reusing cached ones.

        Prompts are sorted by length into batches and left-padded, so a batch wastes little on padding.
        """
        prompt_ids = [tuple(self.renderer.prompt_ids(m)[-self.renderer.max_prompt_length:]) for m in prompts]
        keys = [make_key("gen", self.cache_id, cfg.key(), ids) for ids in prompt_ids]
        found = self._consistent(self.store.get_generations, keys)
        todo = sorted({k: ids for k, ids in zip(keys, prompt_ids) if k not in found}.items(), key=lambda kv: len(kv[1]))
        # With several processes, each generates every world_size-th batch (batches, not prompts: the same batches
        # as one process would make, so the same texts) and all of them get the merged result.
        batches = distributed.shard([todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)])
        mine: dict[str, list[str]] = {}
        if batches and self.engine.url:
            mine = self._generate_remote([item for chunk in batches for item in chunk], cfg, show)
        elif batches:
            stop = stop_ids(self.model, self.tokenizer)
            with progress.bar("base responses", sum(map(len, batches)), show) as advance, torch.no_grad():
                for chunk in batches:
                    texts = generate_batch(self.model, self.tokenizer, [ids for _, ids in chunk], cfg, stop, chunk[0][0])
                    new = {k: texts[i * cfg.num_responses : (i + 1) * cfg.num_responses] for i, (k, _) in enumerate(chunk)}
                    self.store.put_generations(new)
                    mine.update(new)
                    advance(len(chunk))
        self.computed["generations"] += len(mine)
        found.update(self._merged(mine, self.store.put_generations))
        return [found[k] for k in keys]

    def _generate_remote(self, todo: list[tuple[str, tuple[int, ...]]], cfg: BaseResponseConfig,
                         show: bool) -> dict[str, list[str]]:
        """:meth:`generate` on the server of ``self.engine`` (:mod:`bapo.runtime.remote`): the same prompt ids, the
        answers cached under the same keys as local ones, every few as they arrive."""
        stop = stop_ids(self.model, self.tokenizer)
        remote = self.remote_engine()
        if not self._checked:
            agreement = check_serves(remote, self.model, self.renderer, stop)
            print(f"generating on {remote.url} ({remote.model}: {agreement:.0%} of its greedy tokens are this "
                  f"model's choice too)", flush=True)
            self._checked = True
        n = cfg.num_responses
        parts: dict[str, dict[int, str]] = {}
        mine: dict[str, list[str]] = {}
        ready: dict[str, list[str]] = {}

        def requests():
            for key, ids in todo:
                for j in range(n):
                    # Seeded by the prompt, as local sampling is: a rerun asks for the same text.
                    seed = sampling_seed(cfg, key) + j if cfg.do_sample else None
                    yield (key, j), Completion(ids, cfg.max_new_tokens, cfg.temperature if cfg.do_sample else 0.0,
                                               cfg.top_p if cfg.do_sample else 1.0, seed)

        def flush() -> None:
            if ready:
                self.store.put_generations(ready)
                mine.update(ready)
                ready.clear()

        with progress.bar("base responses", len(todo), show) as advance:
            def done(item: tuple[str, int], text: str) -> None:
                key, j = item
                parts.setdefault(key, {})[j] = text
                if len(parts[key]) == n:
                    ready[key] = [parts.pop(key)[i] for i in range(n)]
                    advance(1)
                    if len(ready) >= 16:
                        flush()

            try:
                remote.complete_many(requests(), done)
            finally:  # what arrived before an error or Ctrl-C stays cached
                flush()
        return mine

    def remote_engine(self):
        """The client of ``engine.url`` (:class:`~bapo.runtime.remote.RemoteEngine`; it contacts the server only
        when asked for something), or None where the reference generates here."""
        if not self.engine.url:
            return None
        if self._remote is None:
            self._remote = RemoteEngine(self.engine.url, self.engine.model, concurrency=self.engine.concurrency)
        return self._remote

    def _consistent(self, get, keys: list[str]) -> dict:
        """What the cache holds, read by every process before any of them writes (so all split the same work)."""
        distributed.barrier()
        found = get(keys)
        distributed.barrier()
        return found

    @staticmethod
    def _merged(mine: dict, put) -> dict:
        """Every process's new results (each has cached its own); with one process, ``mine``."""
        if distributed.world_size() == 1:
            return mine
        merged = {k: v for part in distributed.gather(mine) for k, v in part.items()}
        put({k: v for k, v in merged.items() if k not in mine})
        return merged

    def logps(self, seqs: Sequence[Encoded], batch_size: int = 16, show: bool = True,
              description: str = "reference log-probs") -> list[tuple[float, int]]:
        """Reference ``(log p, n tokens)`` of each sequence's response, reusing cached values."""
        keys = [make_key("logp", self.cache_id, s.prompt, s.response) for s in seqs]
        found = self._consistent(self.store.get_logps, keys)
        todo = list({k: s for k, s in zip(keys, seqs) if k not in found}.items())
        step = batch_size * 8  # commit every few batches: resumable without a transaction per row
        # Each process scores every world_size-th chunk: the chunks one process would score, so the same numbers.
        chunks = distributed.shard([todo[i : i + step] for i in range(0, len(todo), step)])
        mine: dict[str, tuple[float, int]] = {}
        if chunks:
            with progress.bar(description, sum(map(len, chunks)), show) as advance:
                for chunk in chunks:
                    vals = score(self.model, [s for _, s in chunk], self.pad_id, batch_size, progress=advance)
                    new = dict(zip([k for k, _ in chunk], vals))
                    self.store.put_logps(new)
                    mine.update(new)
        self.computed["logps"] += len(mine)
        found.update(self._merged(mine, self.store.put_logps))
        return [found[k] for k in keys]

    def logps_as_scored(self, seqs: Sequence[Encoded], batch_size: int = 16) -> list[float]:
        """The reference's log p of each response computed exactly as :func:`bapo.core.logprobs.score` computes a
        candidate's over the same list and batch size: the same batches, so the same rounding. In bfloat16 a
        log-prob depends on the batch it was computed in, and the per-sequence cache of :meth:`logps` holds values
        from whatever batches first computed them (SmolLM2's base model read a held-out reward accuracy of 0.583
        against them, not its 0.5); an evaluation compares a candidate with these, so the base model matches its own
        reference to the bit in any dtype. Cached whole, keyed by the list and the batch size."""
        key = make_key("logps as scored", self.cache_id, batch_size, [(s.prompt, s.response) for s in seqs])
        cached = self.store.get_eval(key)
        if cached is None:
            cached = {"logp": [v for v, _ in score(self.model, seqs, self.pad_id, batch_size)]}
            self.store.put_eval(key, cached)
            self.computed["logps"] += len(seqs)
        return cached["logp"]


@dataclass
class Example:
    """A training/evaluation item: one pair, its prompt's base responses, and the reference log-probs of each.

    Unpaired feedback (KTO) uses the same two slots: ``chosen`` is the rated answer, ``liked`` its thumbs up (True) or
    down, and ``rejected`` a mismatched answer (another item's, under this prompt: KTO's KL estimate; see
    :func:`bapo.data.feedback.mismatched`)."""

    chosen: Encoded
    rejected: Encoded
    ref_chosen: float
    ref_rejected: float
    base: list[Encoded]
    ref_base: list[float]
    base_texts: list[str]
    liked: bool | None = None


def build_examples(ref: Reference, pairs, encoded: list[tuple[Encoded, Encoded]], cfg: BaseResponseConfig,
                   with_base: bool, batch_size: int = 16, show: bool = True,
                   base_logps: bool = True) -> list[Example]:
    """Attach base responses (when ``with_base``) and reference log-probs to encoded pairs (or rated answers with
    their mismatched ones, :class:`~bapo.data.feedback.Feedback`); all of it cached. ``base_logps=False``: the base
    responses' log-probs are not computed (NaN in their place), for training that takes them from its own batch
    (``reference_logps: in-batch``), which would not read them (docs/PERFORMANCE.md measures the time saved)."""
    base_texts: list[list[str]] = [[] for _ in pairs]
    base_enc: list[list[Encoded]] = [[] for _ in pairs]
    if with_base:
        unique = {p.prompt_key: p.messages for p in pairs}
        texts = dict(zip(unique, ref.generate(list(unique.values()), cfg, show=show)))
        for i, p in enumerate(pairs):
            base_texts[i] = texts[p.prompt_key]
            # Base responses are model output, so always truncated (never rejected) to the length limits.
            base_enc[i] = [encode_base(ref.renderer, p.messages, t) for t in base_texts[i]]
    seqs = [s for (c, r) in encoded for s in (c, r)] + [b for bs in base_enc for b in bs if base_logps]
    vals = ref.logps(seqs, batch_size=batch_size, show=show)
    pair_vals = vals[: 2 * len(encoded)]
    base_vals = iter(vals[2 * len(encoded):] if base_logps else [(math.nan, 0)] * sum(map(len, base_enc)))
    out = []
    for i, (c, r) in enumerate(encoded):
        out.append(Example(c, r, pair_vals[2 * i][0], pair_vals[2 * i + 1][0], base_enc[i],
                           [next(base_vals)[0] for _ in base_enc[i]], base_texts[i],
                           pairs[i].liked if isinstance(pairs[i], Feedback) else None))
    return out


def encode_base(renderer: Renderer, messages, text: str) -> Encoded:
    """A base response as a scored sequence: model output, so always truncated (never rejected) to the limits."""
    enc = renderer.encode(messages, text, "base response", "base", [], truncate=True)
    assert enc is not None
    return enc


class LazyReference:
    """A reference loaded on its first call only: loading costs seconds and memory, and some runs never need it."""

    def __init__(self, load: Callable[[], Reference]):
        self._load, self._ref = load, None

    def __call__(self) -> Reference:
        if self._ref is None:
            self._ref = self._load()
        return self._ref


def open_reference(model: str, max_length: int, max_prompt_length: int, cache_dir: str = "", device: str = "auto",
                   dtype: str = "auto", engine: EngineSettings | None = None) -> Reference:
    """Resolve, load and fingerprint a reference model, with the shared cache; texts are cut (never rejected) to the
    given limits."""
    path = resolve_model(model, cache_dir)
    renderer = Renderer(load_tokenizer(path), max_length, max_prompt_length)
    return load_reference(path, renderer, cache_dir, device, dtype, engine)


# Set by bapo.runtime.cluster inside a Ray task: "store", the driver's cache (a RemoteStore), and "models", this worker
# process's loaded models by (path, device, dtype), kept for its next task
IN_TASK: dict = {}


def load_reference(path: str, renderer: Renderer, cache_dir: str = "", device: str = "auto",
                   dtype: str = "auto", engine: EngineSettings | None = None) -> Reference:
    """The reference for a resolved model whose tokenizer (in ``renderer``) is already loaded: callers validate and
    tokenize their data first, then pay for the model. With ``engine.url`` it generates on that server. Inside a
    Ray task (:data:`IN_TASK`) the model is the worker's, loaded once, and the cache the driver's."""
    if IN_TASK:
        models = IN_TASK["models"]
        if (path, device, dtype) not in models:
            models.clear()
            models[(path, device, dtype)] = load_model(path, device, dtype)
        model, store = models[(path, device, dtype)], IN_TASK["store"]
    else:
        model, store = load_model(path, device, dtype), Store(cache_root(cache_dir) / "reference.sqlite")
    return Reference(model, renderer.tok, renderer, store, model_fingerprint(path), engine=engine or EngineSettings())
