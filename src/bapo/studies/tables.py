"""The study's numbers: a row per cell read from its own evaluation records, and each method against a baseline,
paired on items and seed matched; with their markdown forms."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from bapo.errors import ConfigError
from bapo.evaluation.records import Record
from bapo.evaluation.tasks import role_metric
from bapo.studies.plan import Cell

# The study's retention measures and the (task kind, metric, only this task or None) each reads: the kinds' headline
# metrics; the two refusal tasks (plan.generative_tasks) share a kind but measure opposite things, so each is its own.
RETENTION = {"knowledge": (*role_metric("knowledge"), None),
             "generative_knowledge": (*role_metric("generative knowledge"), None),
             "alignment": (*role_metric("alignment"), None),
             "refusal_harmful": ("refusal", "refusal", "refusal_harmful"),
             "refusal_harmless": ("refusal", "refusal", "refusal_harmless"),
             "drift": (*role_metric("drift"), None)}
# The table's column for each measure; those a study runs only when asked (qa_items, refusal_items) appear with them.
COLUMNS = {"knowledge": "knowledge Δ acc_norm", "generative_knowledge": "TriviaQA Δ acc",
           "alignment": "alignment Δ acc_norm", "refusal_harmful": "refusal of harmful Δ",
           "refusal_harmless": "refusal of harmless Δ", "drift": "drift Δ log p/token"}
OPTIONAL = {"generative_knowledge", "refusal_harmful", "refusal_harmless"}


@dataclass(frozen=True)
class BalanceWork:
    """What building a cell's pairs needs from nothing, counted from bapo balance's report: its seconds depend on
    what other cells had already put in the cache (the arm that first meets a prompt pays for its answers), these
    counts do not."""

    answers: int  # candidate answers the model writes (K per examined prompt; 0 with the data's own labels)
    embedded: int  # prompts embedded (bpo's breadth step: every prompt of the pool)
    gradients: int  # per-pair loss gradients (bpo's depth step: every candidate pair of its representative prompts)

    @classmethod
    def of(cls, report: dict[str, Any]) -> BalanceWork:
        bpo = report["strategy"] == "bpo"
        answers = 0 if report["judge"] == "labels" else report["prompts_examined"] * report["config"]["responses"]
        gradients = sum(p["pairs_available"] for p in report["prompts"] if "breadth_cluster" in p) if bpo else 0
        return cls(answers, report["prompts_available"] if bpo else 0, gradients)


@dataclass
class StudyRow:
    """One cell: its user's heterogeneity, its personalization, and its change against the base model on each
    retention measure (pooled over that measure's tasks, item-weighted), each with its standard error."""

    user: str
    method: str
    seed: int
    adapter: str
    heterogeneity: float
    heterogeneity_stderr: float
    judge: str
    personal_reward_acc: float
    personal_reward_acc_stderr: float
    personal_ll_acc_delta: float | None
    personal_ll_acc_delta_stderr: float | None
    personal_margin: float | None = None  # held-out implicit-reward margin in nats (continuous personalization)
    personal_margin_stderr: float | None = None
    knowledge_delta: float | None = None
    knowledge_delta_stderr: float | None = None
    generative_knowledge_delta: float | None = None
    generative_knowledge_delta_stderr: float | None = None
    alignment_delta: float | None = None
    alignment_delta_stderr: float | None = None
    refusal_harmful_delta: float | None = None
    refusal_harmful_delta_stderr: float | None = None
    refusal_harmless_delta: float | None = None
    refusal_harmless_delta_stderr: float | None = None
    drift_delta: float | None = None
    drift_delta_stderr: float | None = None
    task_deltas: dict[str, dict[str, float | None]] = field(default_factory=dict)  # measure -> task -> delta
    balance: str = ""  # the strategy that built the training pairs (bapo balance), if any
    personal_profile_score: float | None = None  # simulated users: the profile's score of answers to held-out prompts
    personal_profile_score_stderr: float | None = None
    train_seconds: float | None = None  # the cell's training run (its last, if it was resumed: run.json)
    balance_seconds: float | None = None  # building its training pairs (bapo balance's report), in a balance study
    balance_work: BalanceWork | None = None  # what building them needed from nothing, whatever the cache held

    @property
    def arm(self) -> str:
        """The method, and with a balance strategy ``method+strategy`` (as :attr:`Cell.arm`)."""
        return f"{self.method}+{self.balance}" if self.balance else self.method

    def to_dict(self) -> dict[str, Any]:
        """Flat, in the column order of ``table.csv``: each measure's pooled delta, then its tasks' own."""
        d = {k: v for k, v in asdict(self).items() if k not in ("task_deltas", "balance_work")
             and not k.startswith(tuple(RETENTION))}
        if self.balance:
            empty = dict.fromkeys(f.name for f in fields(BalanceWork))
            work = asdict(self.balance_work) if self.balance_work else empty
            d.update({f"balance_{k}": v for k, v in work.items()})
        for measure in RETENTION:
            d[f"{measure}_delta"] = getattr(self, f"{measure}_delta")
            d[f"{measure}_delta_stderr"] = getattr(self, f"{measure}_delta_stderr")
            d.update({f"{task}_delta": v for task, v in self.task_deltas.get(measure, {}).items() if task != measure})
        return d


def pooled(recs: list[Record]) -> tuple[float | None, float | None]:
    """Item-weighted mean of several tasks' paired deltas, with its standard error (tasks are independent)."""
    recs = [r for r in recs if r.delta is not None]
    if not recs:
        return None, None
    n = sum(r.n for r in recs)
    d = sum(r.delta * r.n for r in recs) / n
    se = math.sqrt(sum((r.delta_stderr * r.n / n) ** 2 for r in recs))
    return d, se


def study_rows(cells: list[Cell], users: dict[str, dict], records: list[Record],
               scale: float | None = None) -> list[StudyRow]:
    """One row per cell, every number read from that cell's own adapter's evaluation records (with ``scale``: the
    records of the adapter at that LoRA scale, labelled ``name@scale``)."""
    rows = []
    for c in cells:
        label = c.name if scale is None else f"{c.name}@{scale:g}"
        mine = [r for r in records if r.model == label]
        if not mine:
            raise ConfigError(f"study: no evaluation records for {label}")
        h = users[c.user]["heterogeneity"]
        pers = {r.metric: r for r in mine if r.kind == "personal"}
        row = StudyRow(c.spec, c.method, c.seed, mine[0].adapter, h["value"], h["stderr"], h["judge"],
                       pers["reward_acc"].value, pers["reward_acc"].stderr, pers["ll_acc"].delta,
                       pers["ll_acc"].delta_stderr, balance=c.balance)
        if "margin" in pers:
            row.personal_margin, row.personal_margin_stderr = pers["margin"].value, pers["margin"].stderr
        if "profile_score" in pers:
            row.personal_profile_score = pers["profile_score"].value
            row.personal_profile_score_stderr = pers["profile_score"].stderr
        for measure, (kind, metric, only) in RETENTION.items():
            recs = [r for r in mine if r.kind == kind and r.metric == metric and only in (None, r.task)]
            if measure == "drift":  # already a change against the base model's own answers
                recs = [Record(**{**asdict(r), "delta": r.value, "delta_stderr": r.stderr}) for r in recs]
            delta, se = pooled(recs)
            setattr(row, f"{measure}_delta", delta)
            setattr(row, f"{measure}_delta_stderr", se)
            row.task_deltas[measure] = {r.task: r.delta for r in recs}
        rows.append(row)
    return rows


def plus_minus(v, se, digits=3, signed=True) -> str:
    """``+0.123 ± 0.004``; empty for a missing value."""
    if v is None:
        return ""
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    return fmt.format(v) + (f" ± {se:.{digits}f}" if se is not None else "")


def markdown(rows: list[StudyRow]) -> str:
    """The study table: a row per (user, method, seed) (and per scaled DPO adapter, ``dpo@s``, when given); ± is one
    standard error, Δ is against the base model."""
    profile = any(r.personal_profile_score is not None for r in rows)
    margin = any(r.personal_margin is not None for r in rows)
    shown = [m for m in COLUMNS if m not in OPTIONAL or any(getattr(r, f"{m}_delta") is not None for r in rows)]
    lines = ["| user | heterogeneity | method | seed | personal reward acc | " + ("personal margin | " if margin else "")
             + ("profile score | " if profile else "") + " | ".join(COLUMNS[m] for m in shown) + " |",
             "|---" * (5 + margin + profile + len(shown)) + "|"]
    for r in sorted(rows, key=lambda r: (r.heterogeneity, r.user, r.method, r.balance, r.seed)):
        score = plus_minus(r.personal_margin, r.personal_margin_stderr, 2) + " | " if margin else ""
        score += plus_minus(r.personal_profile_score, r.personal_profile_score_stderr, 3, False) + " | " if profile else ""
        lines.append(f"| {r.user} | {plus_minus(r.heterogeneity, r.heterogeneity_stderr, 2, False)} | "
                     f"{r.arm} | "
                     f"{r.seed} | {plus_minus(r.personal_reward_acc, r.personal_reward_acc_stderr, 3, False)} | {score}"
                     + " | ".join(plus_minus(getattr(r, f"{m}_delta"), getattr(r, f"{m}_delta_stderr")) for m in shown)
                     + " |")
    judges = sorted({r.judge for r in rows})
    lines.append(f"\nHeterogeneity judge: {'; '.join(judges)}. ± = one standard error (items; heterogeneity: pairs).")
    return "\n".join(lines) + "\n"


def cost_markdown(rows: list[StudyRow]) -> str:
    """What each arm cost: mean seconds per cell to build its pairs (a balance study) and to train, over its cells;
    in a balance study also the work building the pairs needs from nothing (:class:`BalanceWork`)."""
    arms = list(dict.fromkeys(r.arm for r in rows))
    balance = any(r.balance_seconds is not None for r in rows)
    head = ["building pairs, s", "answers written", "prompts embedded", "pair gradients"] if balance else []
    lines = ["| arm | cells | " + "".join(f"{h} | " for h in head) + "training, s |",
             "|---|---|" + "---|" * len(head) + "---|"]
    for arm in arms:
        mine = [r for r in rows if r.arm == arm]
        work = [r.balance_work for r in mine]
        counts = [mean_spread([getattr(w, f.name) if w else None for w in work]) for f in fields(BalanceWork)]
        cols = [mean_spread([r.balance_seconds for r in mine]), *counts] if balance else []
        lines.append(f"| {arm} | {len(mine)} | " + " | ".join(cols + [mean_spread([r.train_seconds for r in mine])])
                     + " |")
    note = "\nMean over the arm's cells (min-max); a cell resumed after an interruption counts its last run only."
    if balance:
        note += (" Seconds to build pairs depend on the cache (candidate answers and prompt embeddings are shared by "
                 "the cells that need them; the first to ask pays); the counts are what a cell needs from nothing.")
    lines.append(note)
    return "\n".join(lines) + "\n"


def mean_spread(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    return f"{sum(vals) / len(vals):.0f} ({min(vals):.0f}-{max(vals):.0f})" if vals else ""
