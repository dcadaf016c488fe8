"""What an adapter costs at each scale, measured on small probe sets against the base model.

Each measure is a *loss*, positive where the adapter lost something the base model had:

- ``drift``: minus the per-token change of log p of the reference's own greedy answers to general prompts
  (:func:`bapo.evaluation.metrics.drift_scores`): nats per token the model moved away from what it used to say;
- ``qa``: the base model's share of probe questions answered correctly minus the adapter's (generative knowledge);
- ``qa_share``: the same questions lost, as a share of those the base model answered correctly (:func:`share_lost`):
  what the adapter forgot of what the model knew, which, unlike ``qa``, is not capped by how hard the questions are;
- ``refusal``: the base model's share of harmful probe requests refused minus the adapter's (generative alignment).

The probes are the evaluation's own task kinds (:mod:`bapo.evaluation.tasks`), on seeded subsets; the reference's
answers and log-probs, and the base model's probe scores, are cached by the reference. ``qa`` and ``qa_share`` read
the same probe (scored once).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

from bapo.evaluation.tasks import KINDS, Scorer, Task, TaskSpec, generates, generation_key, load_task
from bapo.runtime.adapters import applied
from bapo.runtime.config import BudgetSettings
from bapo.runtime.reference import Reference
from bapo.runtime.remote import RemoteModel
from bapo.runtime.store import make_key

# Where each measure's probe was checked against the full measures and held, where its budget binds, for at least 90%
# of a study's adapters (docs/RESULTS.md, "Which forgetting-budget probe can be trusted"; 2026-12-06, DPO's frontier
# at flip:0.5, and its rivals' adapters): measure -> (fewest probe items, smallest budget) from which it held. drift
# held at 10-40 prompts and every budget from 0.05 to 1 nats/token; refusal at 50 requests from budget 0.05 up (and
# 100); qa_share at 300 questions from budget 0.4 up (not at 0.2, nor at 50 or 100 questions); qa held at no size or
# budget (the share a probe loses is capped by the base model's own accuracy on its questions, which differs from set
# to set). Outside these a budget holds on the probe's own items, and bapo train says so.
VALIDATED: dict[str, tuple[int, float]] = {"drift": (10, 0.05), "refusal": (50, 0.05), "qa_share": (300, 0.4)}


def validated(measure: str, items: int, budget: float) -> bool:
    """Whether a probe of ``items`` items at ``budget`` lies in the range its validation held in (:data:`VALIDATED`)."""
    least = VALIDATED.get(measure)
    return least is not None and items >= least[0] and budget >= least[1]


# probe -> (task kind, its headline metric); a measure reads the probe of its name, qa_share reads qa's
PROBES = {"drift": ("drift", "logp_change_per_token"), "qa": ("qa", "acc"), "refusal": ("refusal", "refusal")}


def probe_of(measure: str) -> str:
    """The probe a measure reads (:data:`PROBES`)."""
    return "qa" if measure == "qa_share" else measure


def share_lost(item_losses: list[float], base_scores: list[float]) -> float:
    """Questions lost (net of those gained) over those the base model answered right, on the same items; 0 where it
    answered none: there was nothing there to lose."""
    right = sum(base_scores)
    return sum(item_losses) / right if right else 0.0


@dataclass(frozen=True)
class ProbeRow:
    """The adapter at one scale: its loss on each measure, and whether all stay within the budget."""

    scale: float
    losses: dict[str, float]
    within: bool


class Prober:
    """The probe tasks of a budget over one reference, prepared once and reused for every adapter (``--per-user``)."""

    def __init__(self, ref: Reference, settings: BudgetSettings, batch_size: int = 16,
                 items: dict[str, list] | None = None):
        """``items`` replaces a measure's probe items (what :mod:`bapo.studies.budget_check` probes with: items the
        full measures do not contain)."""
        self.ref, self.settings, self.limits = ref, settings, settings.limits()
        self.scorer = Scorer(ref, batch_size)
        probes = sorted({probe_of(m) for m in self.limits})
        self.tasks = {p: self._task(p, (items or {}).get(p)) for p in probes}
        self.base_items = {p: self._base_scores(p) for p in probes}

    def _task(self, measure: str, items: list | None = None) -> Task:
        s = self.settings
        path, limit = {"drift": (s.drift_prompts, s.drift_items), "qa": (s.qa_path, s.qa_items),
                       "refusal": (s.refusal_path, s.refusal_items)}[measure]
        kind = PROBES[measure][0]
        spec = TaskSpec(f"budget_{measure}", kind, path, limit=limit, seed=0,
                        max_new_tokens={"drift": 64, "qa": 16, "refusal": 32}[measure])
        task = load_task(spec) if items is None else Task(spec, items, "")
        if KINDS[kind].prepare is not None:
            task.prepared = KINDS[kind].prepare(task, self.scorer)
        return task

    def _base_scores(self, measure: str) -> list[float]:
        """The base model's per-item probe scores, from the reference's cache when an earlier process scored them
        (keyed by the weights, their dtype, the probe's task and its items, and for a generated probe the
        generation batch: greedy answers depend on the prompts batched with them)."""
        task = self.tasks[measure]
        gen = generation_key(generates(task), self.scorer.generate_batch_size, str(self.ref.model.device))
        key = make_key("probe", self.ref.cache_id, task.spec.key(), repr(task.items), *gen)
        cached = self.ref.store.get_eval(key)
        if cached is None:
            cached = {"scores": self.scores(self.ref.model, measure)}
            self.ref.store.put_eval(key, cached)
        return cached["scores"]

    def scores(self, model, measure: str, scorer: Scorer | None = None) -> list[float]:
        """``model``'s per-item scores on the probe of ``measure`` (its headline metric)."""
        task = self.tasks[measure]
        return task.kind.score(model, task, scorer or self.scorer, lambda n: None)[PROBES[measure][1]]

    def item_losses(self, model, scorer: Scorer | None = None) -> dict[str, list[float]]:
        """Each probe's per-item loss of ``model`` against the base model on the same items."""
        return {p: [b - x for b, x in zip(self.base_items[p], self.scores(model, p, scorer))] for p in self.tasks}

    def losses(self, model, scorer: Scorer | None = None) -> dict[str, float]:
        """Each measure's loss of ``model`` against the base model (drift's base value is 0 by definition)."""
        items = self.item_losses(model, scorer)
        return {m: share_lost(items["qa"], self.base_items["qa"]) if m == "qa_share"
                else statistics.fmean(items[m]) for m in self.limits}

    def sizes(self) -> dict[str, int]:
        """How many items each measure's probe has."""
        return {m: len(self.tasks[probe_of(m)].items) for m in self.limits}

    @property
    def remote(self) -> bool:
        """Whether the probes' answers are generated on a server (``--generate-with``)."""
        return self.ref.remote_engine() is not None

    def table(self, adapter: str, served_as: str = "") -> list[ProbeRow]:
        """The adapter at every scale of the settings, largest first; scale 0 is the base model (no loss). With a
        server (``--generate-with``), the probes' answers come from the adapter it serves as ``served_as`` (at each
        scale through bapo serve's ``adapter_scale``), checked against ``adapter`` applied here."""
        rows = []
        for scale in sorted(set(self.settings.scales), reverse=True):
            if scale == 0.0:
                losses = {m: 0.0 for m in self.limits}
            else:
                with applied(self.ref.model, adapter, scale) as model:
                    scorer = self.scorer
                    if self.remote:
                        remote = RemoteModel(self.ref.remote_engine(), served_as, model, scale)
                        scorer = replace(scorer, generate_on=remote)
                    losses = self.losses(model, scorer)
            rows.append(ProbeRow(scale, losses, all(losses[m] <= lim for m, lim in self.limits.items())))
        return rows


def choose(rows: list[ProbeRow]) -> float:
    """The largest scale whose losses all stay within the budget (0, the base model, when none does)."""
    return max((r.scale for r in rows if r.within), default=0.0)
