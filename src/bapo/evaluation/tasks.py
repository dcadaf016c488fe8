"""What ``bapo eval`` measures. A *task kind* is everything about one kind of measurement in one place: how its items
are loaded, what the reference prepares for it, how a model is scored on it, which metric is its headline, what it
measures (its role) and what it costs. Suites (lists of tasks) are YAML files.

Task kinds:

- ``mc``: zero-shot multiple choice by log-likelihood of each choice (global knowledge).
- ``general_pairs``: general-population preference pairs (general alignment).
- ``drift``: prompts the reference model answers; measures how far a model moved from those answers.
- ``reward``: prompts a model answers; a reward model (``--reward-model``) scores the answers.
- ``qa``: short-answer questions (TriviaQA) asked in the chat template and judged by a rule (generative knowledge).
- ``refusal``: requests a model answers; the share of refusals by a phrase rule (generative alignment: on harmful
  requests, such as HH's first human turns, higher is safer; on harmless ones, lower is more helpful).
- ``personal``: an adapter's own held-out pairs (personalization); made from the adapter, never listed in a suite.
- ``feedback``: an adapter's own held-out thumbs up and down (personalization from unpaired feedback: the AUC of
  the implicit reward); made from the adapter like ``personal``.

The ``default`` suite uses only data shipped in the package, so it runs anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bapo.core.tokens import Encoded, encode_pairs
from bapo.data.feedback import Feedback
from bapo.data.pairs import PreferencePair
from bapo.data.profiles import PROFILES, profile_key
from bapo.data.readers import load_general_pairs, load_mc, load_prompts, load_qa
from bapo.errors import ConfigError
from bapo.evaluation import metrics
from bapo.options import read_yaml
from bapo.runtime.config import BaseResponseConfig
from bapo.runtime.reference import Example, Reference, encode_base


@dataclass
class TaskSpec:
    """One evaluation task. ``path`` may be ``package:NAME`` for a file shipped in ``bapo/resources``."""

    name: str
    kind: str
    path: str
    limit: int = 0  # 0 = every item; otherwise a seeded random subset of this size
    seed: int = 0
    max_new_tokens: int = 64  # drift / reward: length of generated answers

    def key(self) -> str:
        """Cache key of its scores: what the task reads, and its kind's scoring version (cached scores of an older
        definition are never mixed with new ones)."""
        version = KINDS[self.kind].version if self.kind in KINDS else 1
        fields = [self.kind, self.path, self.limit, self.seed, self.max_new_tokens] + ([version] if version > 1 else [])
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


@dataclass
class Task:
    """A task ready to score: its spec, its items, its cache key, and what the reference prepared for it."""

    spec: TaskSpec
    items: list
    key: str
    rule: str = ""  # personal tasks: the name of the user's scoring rule in bapo.data.profiles, if there is one
    prepared: Any = None

    @property
    def kind(self) -> "TaskKind":
        return KINDS[self.spec.kind]


@dataclass(frozen=True)
class Scorer:
    """What scoring a model needs besides the model: the reference (tokenizer, renderer), batch sizes, reward model."""

    ref: Reference
    batch_size: int = 16  # sequences per scoring batch
    reward: tuple | None = None  # (model, tokenizer) of a sequence-classification reward model
    generate_batch_size: int = 32  # prompts per generation batch (length-sorted)
    generate_on: Any = None  # a RemoteModel: the model being scored, answering on a server (--generate-with)

    def answering(self, model):
        """What generates the answers of ``model``: the server's copy where there is one, else ``model``."""
        return model if self.generate_on is None else self.generate_on


@dataclass(frozen=True)
class TaskKind:
    """One kind of measurement: loader, preparation, scorer, headline metric, role and cost, in one place."""

    name: str
    role: str  # what it measures: knowledge, alignment, drift, reward or personalization
    headline: str  # the metric the study and the report read
    load: Callable[[TaskSpec], list]
    score: Callable[[Any, Task, Scorer, Callable[[int], None]], dict[str, list]]  # metric -> per item (+ answers)
    sequences: Callable[[list], int]  # what its progress bar counts
    chars: Callable[[list], int] = lambda items: 0  # characters read per model (prices the study's dry run)
    prepare: Callable[[Task, Scorer], Any] | None = None  # what the reference computes for it, once
    prompts: Callable[[Task], list[str]] = lambda task: []  # what a generative kind asks, per answer (samples.jsonl)
    answered: tuple[str, ...] = ()  # its metrics that judge those answers, one value per answer
    version: int = 1  # raised when its scores change meaning: part of every cache key of the kind
    generates: bool = False  # may score answers the model generates: see :func:`generates`


def _prepare_drift(task: Task, s: Scorer) -> tuple[list, list[float]]:
    """The reference's own answers to the prompts, and its log-probs of them, computed in the batches a candidate's
    are (:meth:`~bapo.runtime.reference.Reference.logps_as_scored`)."""
    prompts = task.items
    texts = s.ref.generate(prompts, BaseResponseConfig(max_new_tokens=task.spec.max_new_tokens))
    seqs = [encode_base(s.ref.renderer, m, r) for m, rs in zip(prompts, texts) for r in rs]
    return seqs, s.ref.logps_as_scored(seqs, s.batch_size)


def _prepare_personal(task: Task, s: Scorer) -> list[Example]:
    """The held-out pairs with the reference's log-probs of chosen and rejected (for the implicit reward), computed in
    the batches :func:`bapo.evaluation.metrics.personal_scores` scores a candidate's in."""
    unscored = [Example(c, r, 0.0, 0.0, [], [], []) for c, r in encode_pairs(task.items, s.ref.renderer)]
    return metrics.as_scored(s.ref, unscored, s.batch_size)


def _prepare_feedback(task: Task, s: Scorer) -> list[tuple[Encoded, float, bool]]:
    """The held-out rated answers with the reference's log-prob of each (for the implicit reward), computed in the
    batches a candidate's are."""
    seqs = [s.ref.renderer.encode(f.messages, f.completion, f.source, "completion", [], truncate=True)
            for f in task.items]
    return [(x, v, f.liked) for x, v, f in zip(seqs, s.ref.logps_as_scored(seqs, s.batch_size), task.items)]


def _profile_prompts(task: Task) -> list[list[dict[str, str]]]:
    """The distinct held-out prompts a user with a scoring rule is asked for answers on (none without a rule)."""
    return list({p.prompt_key: p.messages for p in task.items}.values()) if task.rule else []


def _score_personal(model, task: Task, s: Scorer, advance) -> dict[str, list]:
    out: dict[str, list] = metrics.personal_scores(model, task.prepared, s.ref.pad_id, s.batch_size, advance)
    if task.rule:  # the user's own rule, applied to what the model now writes for held-out prompts
        out.update(metrics.profile_scores(s.answering(model), s.ref.renderer, _profile_prompts(task),
                                          PROFILES[task.rule],
                                          batch_size=s.generate_batch_size))
    return out


def _asked(prompts: list[list[dict[str, str]]]) -> list[str]:
    """Each chat's last message: what the model answered."""
    return [m[-1]["content"] for m in prompts]


def _score_reward(model, task: Task, s: Scorer, advance) -> dict[str, list[float]]:
    rm, rtok = s.reward
    return metrics.reward_scores(s.answering(model), s.ref.renderer, task.items, rm, rtok, task.spec.max_new_tokens,
                                 s.generate_batch_size)


def _load_spec(loader: Callable[..., list]) -> Callable[[TaskSpec], list]:
    return lambda spec: loader(spec.path, spec.limit, spec.seed)


KINDS: dict[str, TaskKind] = {k.name: k for k in [
    TaskKind("mc", "knowledge", "acc_norm", _load_spec(load_mc),
             lambda model, t, s, adv: metrics.mc_scores(model, s.ref.tokenizer, t.items, s.batch_size * 2, adv),
             sequences=lambda items: sum(len(i.choices) for i in items),
             chars=lambda items: sum(len(i.context) + sum(map(len, i.choices)) for i in items),
             version=2),  # 2: acc_norm per character of the choice, as lm-evaluation-harness (was per byte of " "+choice)
    TaskKind("general_pairs", "alignment", "acc_norm", _load_spec(load_general_pairs),
             lambda model, t, s, adv: metrics.general_pair_scores(model, s.ref.renderer, t.items, s.batch_size, adv),
             sequences=lambda items: 2 * len(items),
             chars=lambda items: sum(sum(len(m["content"]) for m in i.messages) + len(i.chosen) + len(i.rejected)
                                     for i in items)),
    TaskKind("drift", "drift", "logp_change_per_token", _load_spec(load_prompts),
             lambda model, t, s, adv: metrics.drift_scores(model, *t.prepared, s.ref.pad_id, s.batch_size, adv),
             sequences=len, prepare=_prepare_drift, version=2),  # 2: the reference scored in the candidates' batches
    TaskKind("reward", "reward", "score", _load_spec(load_prompts), _score_reward, sequences=len,
             prompts=lambda t: _asked(t.items), answered=("score",), generates=True),
    TaskKind("qa", "generative knowledge", "acc", _load_spec(load_qa),
             lambda model, t, s, adv: metrics.qa_scores(s.answering(model), s.ref.renderer, t.items,
                                                        t.spec.max_new_tokens,
                                                        s.generate_batch_size, adv), sequences=len,
             prompts=lambda t: [it.question + metrics.QA_INSTRUCTION for it in t.items], answered=("acc", "unjudged"),
             generates=True),
    TaskKind("refusal", "refusal", "refusal", _load_spec(load_prompts),
             lambda model, t, s, adv: metrics.refusal_scores(s.answering(model), s.ref.renderer, t.items,
                                                             t.spec.max_new_tokens,
                                                             s.generate_batch_size, adv), sequences=len,
             prompts=lambda t: _asked(t.items), answered=("refusal", "unjudged"), generates=True),
    TaskKind("personal", "personalization", "reward_acc", lambda spec: [], _score_personal,
             sequences=lambda items: 2 * len(items), prepare=_prepare_personal, version=2,  # 2: as drift's
             prompts=lambda t: _asked(_profile_prompts(t)), answered=("profile_score",), generates=True),
    TaskKind("feedback", "personalization", "auc", lambda spec: [],
             lambda model, t, s, adv: metrics.feedback_scores(model, t.prepared, s.ref.pad_id, s.batch_size, adv),
             sequences=len, prepare=_prepare_feedback, version=2),  # 2: as drift's
]}
PERSONAL_KINDS = ("personal", "feedback")  # made from an adapter's held-out data, never listed in a suite
SUITE_KINDS = tuple(k for k in KINDS if k not in PERSONAL_KINDS)


def generates(task: Task) -> bool:
    """Whether scoring ``task`` generates answers (then its cache key holds the generation batch): a generative kind
    that asks something (a personal task asks only where its user has a scoring rule)."""
    return task.kind.generates and bool(task.kind.prompts(task))


def generation_key(generated: bool, batch_size: int, device: str = "cpu") -> list[tuple[str, int]]:
    """The part of a cache key that a task's greedy answers depend on besides the weights: the generation batch
    (length-sorted; in bfloat16 an answer depends on the prompts batched with it) and, on a CPU, torch's thread count
    where it is not one thread per CPU (in bfloat16 a greedy answer also depends on it: docs/PERFORMANCE.md, "--workers
    in bfloat16"; one thread per CPU, a plain run's setting, is left out, so caches from before
    it was keyed stay valid). Empty for a task that generates nothing (``generated`` False, :func:`generates`).
    ``bapo eval``'s scores and the forgetting budget's base probe are keyed with it alike."""
    if not generated:
        return []
    threads = torch.get_num_threads()
    cpu = torch.device(device).type == "cpu" and threads != os.cpu_count()
    return [("length-sorted generation batch", batch_size), *([("cpu threads", threads)] if cpu else [])]


def role_metric(role: str) -> tuple[str, str]:
    """(task kind, headline metric) of the kind that measures ``role``: what the study and report read for it."""
    kind = next(k for k in KINDS.values() if k.role == role)
    return kind.name, kind.headline


def load_task(spec: TaskSpec) -> Task:
    return Task(spec, spec_items(spec), spec.key())


def spec_items(spec: TaskSpec) -> list:
    return KINDS[spec.kind].load(spec)


def personal_task(name: str, pairs: list[PreferencePair] | list[Feedback], who: str, tie_nats: float) -> Task:
    """A user's held-out pairs (or thumbs: a ``feedback`` task) as a task; ``who`` (their user id, else the adapter's
    name) names their scoring rule when :data:`bapo.data.profiles.PROFILES` has one (see
    :func:`bapo.data.profiles.profile_key`)."""
    kind = "feedback" if pairs and isinstance(pairs[0], Feedback) else "personal"
    rule = profile_key(who) if kind == "personal" else ""
    held = [p.to_record() for p in pairs]
    version = KINDS[kind].version
    key = hashlib.sha256(json.dumps([rule, tie_nats, held] + ([version] if version > 1 else [])).encode()).hexdigest()[:16]
    return Task(TaskSpec(name, kind, ""), pairs, key, rule)


# ---------------------------------------------------------------------------------------------------------------
# Suites


@dataclass
class Suite:
    tasks: list[TaskSpec] = field(default_factory=list)


def default_suite() -> Suite:
    return Suite([
        TaskSpec("knowledge_mc", "mc", "package:knowledge_mc.jsonl"),
        TaskSpec("general_drift", "drift", "package:general_prompts.jsonl"),
    ])


def load_suite(name_or_path: str) -> Suite:
    if name_or_path == "default":
        return default_suite()
    p = Path(name_or_path)
    if not p.exists():
        raise ConfigError(f"--suite {name_or_path}: not 'default' and no such file")
    raw = read_yaml(p) or {}
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(f"{p}: expected 'tasks:' with a list of {{name, kind, path}}")
    out = []
    for i, t in enumerate(tasks):
        if not isinstance(t, dict) or not {"name", "kind", "path"} <= set(t):
            raise ConfigError(f"{p}: tasks[{i}]: needs name, kind and path")
        if t["kind"] not in SUITE_KINDS:
            raise ConfigError(f"{p}: tasks[{i}].kind: unknown '{t['kind']}'; choose one of {', '.join(SUITE_KINDS)}")
        unknown = set(t) - {"name", "kind", "path", "limit", "seed", "max_new_tokens"}
        if unknown:
            raise ConfigError(f"{p}: tasks[{i}]: unknown option(s) {', '.join(sorted(unknown))}")
        path = t["path"]
        if not path.startswith("package:") and not Path(path).is_absolute():
            path = str((p.parent / path).resolve())  # relative to the suite file
        out.append(TaskSpec(**{**t, "path": path}))
    return Suite(out)
