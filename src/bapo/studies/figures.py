"""The study's figures: retention and personalization against measured heterogeneity (a line per arm, 95% error
bars), each adapter's personalization against its retention, with several heterogeneities the trend (every adapter a
point, each arm's least-squares line), and in a balance study each strategy side by side per user. An arm is a
method, or ``method+strategy`` in a balance study (:attr:`StudyRow.arm`)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bapo.evaluation.metrics import Z95  # noqa: E402
from bapo.core.methods import split_method  # noqa: E402
from bapo.studies.trend import slope  # noqa: E402
from bapo.studies.tables import StudyRow  # noqa: E402
from bapo.io import atomic_save_figure


def over_seeds(rs: list[StudyRow], metric: str) -> tuple[float, float]:
    """Mean of ``metric`` over one arm's seeds at one user, and its error: with several seeds it combines the spread
    between seeds and the evaluation's own error; with one, it is the evaluation's."""
    k = len(rs)
    vals = [getattr(r, metric) for r in rs]
    mean = sum(vals) / k
    within = sum((getattr(r, f"{metric}_stderr") or 0.0) ** 2 for r in rs) / k
    between = sum((v - mean) ** 2 for v in vals) / (k - 1) if k > 1 else 0.0
    return mean, math.sqrt((between + within) / k)


def aggregate(rows: list[StudyRow], metric: str) -> dict[str, list[tuple[float, float, float]]]:
    """Per arm: (heterogeneity, mean over seeds, error) per user, sorted by heterogeneity (see :func:`over_seeds`)."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for arm in dict.fromkeys(r.arm for r in rows):
        pts = []
        for user in dict.fromkeys(r.user for r in rows):
            rs = [r for r in rows if r.arm == arm and r.user == user and getattr(r, metric) is not None]
            if rs:
                pts.append((rs[0].heterogeneity, *over_seeds(rs, metric)))
        out[arm] = sorted(pts)
    return out


def study_figures(rows: list[StudyRow], out: Path, frontier: dict[float, list[StudyRow]] | None = None,
                  lambdas: dict[str, float] | None = None) -> list[Path]:
    """The study's figures: retention and personalization against measured heterogeneity (a line per method, 95%
    error bars), and each adapter's personalization (held-out reward accuracy; and again the margin, continuous,
    when the records have it) against its retention, with each DPO adapter's weakening frontier (``frontier``: its
    rows at LoRA scales below 1) drawn as a line through its scales, and a base-response method listed at several
    lambdas (``lambdas``: arm -> its lambda) drawn as a line through them."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    panels = [("knowledge_delta", "global knowledge: Δ acc_norm vs base"),
              ("generative_knowledge_delta", "TriviaQA answered: Δ acc vs base"),
              ("alignment_delta", "general alignment: Δ acc_norm vs base"),
              ("refusal_harmful_delta", "harmful requests refused: Δ vs base"),
              ("refusal_harmless_delta", "harmless requests refused: Δ vs base"),
              ("drift_delta", "drift: Δ log p(base answer)/token")]
    panels = [p for p in panels if any(getattr(r, p[0]) is not None for r in rows)]
    for name, spec in (("retention.png", panels),
                       ("personalization.png", [("personal_reward_acc", "personalization: held-out reward accuracy")])):
        fig, axes = grid(len(spec))
        for ax, (metric, title) in zip(axes, spec):
            for i, (arm, pts) in enumerate(aggregate(rows, metric).items()):
                if pts:
                    xs, ys, es = zip(*pts)
                    ax.errorbar(xs, ys, yerr=[Z95 * e for e in es], marker="o", capsize=4, label=arm, color=f"C{i}")
            ax.axhline(0.5 if metric == "personal_reward_acc" else 0.0, color="#888888", lw=1, ls="--")
            ax.set_xlabel("heterogeneity (fraction of pairs against general preference)")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_save_figure(fig, out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)

    users = list(dict.fromkeys(r.user for r in rows))
    figures = [("tradeoff.png", "personal_reward_acc", 0.5, "held-out reward accuracy", None),
               ("tradeoff_margin.png", "personal_margin", 0.0, "held-out reward margin (nats)", None)]
    if len(users) > 1:  # and each user's frontiers on their own: one user's spread hides another's
        figures += [(f"tradeoff_margin_{slug(u)}.png", "personal_margin", 0.0, f"{u}: held-out reward margin (nats)", u)
                    for u in users]
    for name, x, base, label, user in figures:
        mine = [r for r in rows if user in (None, r.user)]
        if any(getattr(r, x) is None for r in mine):
            continue
        theirs = {s: [r for r in rs if user in (None, r.user)] for s, rs in (frontier or {}).items()}
        fig, axes = grid(len(panels))
        for ax, (metric, title) in zip(axes, panels):
            draw_tradeoff(ax, mine, theirs, lambdas or {}, x, base, metric)
            ax.set_xlabel(f"personalization: {label}")
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        atomic_save_figure(fig, out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    if len({r.heterogeneity for r in rows}) > 1:
        paths.append(trend_figure({m: {arm: [(r.heterogeneity, getattr(r, m)) for r in rows if r.arm == arm]
                                       for arm in dict.fromkeys(r.arm for r in rows)} for m, _ in panels},
                                  dict(panels), out / "trend.png"))
    if any(r.balance for r in rows):
        paths.append(balance_figure(rows, panels, out / "balance.png"))
    return paths


def trend_figure(points: dict[str, dict[str, list[tuple[float, float | None]]]], titles: dict[str, str],
                 path: Path, intervals: dict[tuple[str, str], tuple[float, float]] | None = None) -> Path:
    """Does forgetting grow with heterogeneity: a panel per measure (``points``: measure -> arm -> each adapter's
    (measured heterogeneity, change against the base model)), every adapter a point and each arm's least-squares line
    (:func:`bapo.studies.matched.slope`), its slope per unit of heterogeneity and 95% interval in the legend: the
    residuals' (over seeds), or ``intervals[(measure, arm)]`` where given (the reading's, over seeds and items)."""
    fig, axes = grid(len(points))
    for ax, (measure, arms) in zip(axes, points.items()):
        for i, (arm, pts) in enumerate(arms.items()):
            pts = [(x, y) for x, y in pts if y is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            label, line = trend_line(arm, xs, ys, (intervals or {}).get((measure, arm)))
            if line is not None:
                ax.plot(*line, color=f"C{i}", lw=1.5)
            ax.scatter(xs, ys, color=f"C{i}", s=18, alpha=0.8, label=label)
        ax.axhline(0.0, color="#888888", lw=1, ls="--")
        ax.set_xlabel("measured heterogeneity")
        ax.set_title(titles.get(measure, measure), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def balance_figure(rows: list[StudyRow], panels: list[tuple[str, str]], path: Path) -> Path:
    """A balance study at a glance: per user, a bar per arm (mean over seeds, 95% error bar), in a panel per
    personalization measure (the profile's score, for simulated users, first) and per retention measure."""
    personal = [("personal_profile_score", "profile score of answers to held-out prompts"),
                ("personal_reward_acc", "held-out reward accuracy"),
                ("personal_margin", "held-out reward margin (nats)")]
    spec = [p for p in personal + panels if any(getattr(r, p[0]) is not None for r in rows)]
    users = list(dict.fromkeys(r.user for r in rows))
    arms = list(dict.fromkeys(r.arm for r in rows))
    width = 0.8 / len(arms)
    fig, axes = grid(len(spec))
    for ax, (metric, title) in zip(axes, spec):
        for i, arm in enumerate(arms):
            xs, ys, es = [], [], []
            for u, user in enumerate(users):
                rs = [r for r in rows if r.arm == arm and r.user == user and getattr(r, metric) is not None]
                if rs:
                    mean, err = over_seeds(rs, metric)
                    xs.append(u + (i - (len(arms) - 1) / 2) * width)
                    ys.append(mean)
                    es.append(Z95 * err)
            ax.bar(xs, ys, width, yerr=es, capsize=3, color=f"C{i}", label=arm)
        if metric == "personal_reward_acc":
            ax.axhline(0.5, color="#888888", lw=1, ls="--")
        ax.axhline(0.0, color="#888888", lw=1)
        ax.set_xticks(range(len(users)), users, rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def slug(user: str) -> str:
    """A user spec as a file name part: ``flip:0.5`` -> ``flip-0.5``."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in user)


def draw_tradeoff(ax, rows: list[StudyRow], frontier: dict[float, list[StudyRow]], lambdas: dict[str, float],
                  x: str, base: float, metric: str) -> None:
    """One panel: every adapter's personalization (``x``; the base model's is ``base``) against its change on
    ``metric``, a colour per arm, with the DPO adapters' frontier and the anchors' lambda frontiers."""
    several = len({r.heterogeneity for r in rows}) > 1  # with one heterogeneity its labels tell nothing apart
    colours = {arm: f"C{i}" for i, arm in enumerate(dict.fromkeys(r.arm for r in rows))}
    for arm, colour in colours.items():
        rs = [r for r in rows if r.arm == arm and getattr(r, metric) is not None]
        ax.scatter([getattr(r, x) for r in rs], [getattr(r, metric) for r in rs], color=colour, label=arm)
        for r in rs if several else []:
            ax.annotate(f"h={r.heterogeneity:.2f}", (getattr(r, x), getattr(r, metric)), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    draw_frontier(ax, rows, frontier, x, base, metric)
    draw_lambda_frontier(ax, rows, lambdas, x, metric, colours)
    ax.axhline(0.0, color="#888888", lw=1, ls="--")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def grid(n: int, per_row: int = 3):
    """A figure of ``n`` panels, at most ``per_row`` to a row; the axes in reading order, unused ones hidden."""
    rows, cols = math.ceil(n / per_row), min(n, per_row)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def draw_frontier(ax, rows: list[StudyRow], frontier: dict[float, list[StudyRow]], x: str, base: float,
                  metric: str) -> None:
    """One dashed line per DPO adapter from the base model (scale 0) through its scales to itself (scale 1): what
    simply weakening the adapter buys, beside what the other methods reach."""
    full = [r for r in rows if r.method == "dpo"]
    for k, r in enumerate(full):
        pts = [(base, 0.0)] + [(getattr(f[k], x), getattr(f[k], metric)) for s, f in sorted(frontier.items())
                               if getattr(f[k], metric) is not None] + [(getattr(r, x), getattr(r, metric))]
        if len(pts) > 2 and pts[-1][1] is not None:
            ax.plot(*zip(*pts), ls="--", lw=1, color="#555555", marker=".", label="dpo, scaled" if k == 0 else None)


def draw_lambda_frontier(ax, rows: list[StudyRow], lambdas: dict[str, float], x: str, metric: str,
                         colours: dict[str, str] | None = None) -> None:
    """For a base-response loss listed at several lambdas (``bapo``, ``bapo:0.1``, ...): one dotted line per user and
    seed through its arms in order of lambda, the anchor's counterpart of DPO's scale frontier, in the colour of the
    loss's strongest arm (``colours``: arm -> colour), so each method's frontier is told apart."""
    losses: dict[str, list[str]] = {}
    for arm in sorted(lambdas, key=lambdas.get):
        losses.setdefault(split_method(arm)[0], []).append(arm)
    for loss, arms in losses.items():
        if len(arms) < 2:
            continue
        first = True
        for user, seed in dict.fromkeys((r.user, r.seed) for r in rows if r.method in arms):
            mine = {r.method: r for r in rows if (r.user, r.seed) == (user, seed)}
            pts = [(getattr(mine[a], x), getattr(mine[a], metric)) for a in arms
                   if a in mine and getattr(mine[a], metric) is not None]
            if len(pts) > 1:
                colour = (colours or {}).get(arms[-1], "#999999")
                ax.plot(*zip(*pts), ls=":", lw=1.2, color=colour, label=f"{loss}, by lambda" if first else None)
                first = False


def trend_line(arm: str, xs, ys, interval: tuple[float, float] | None = None
               ) -> tuple[str, tuple[list[float], list[float]] | None]:
    """An arm's legend label with its least-squares slope and 95% interval (the residuals', or ``interval``, said to
    span seeds and items), and the fitted line's two ends (None, and the arm's name alone, where too few points or
    heterogeneities give no slope)."""
    try:
        fit = slope(xs, ys)
    except ValueError:
        return arm, None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    ends = [min(xs), max(xs)]
    lo, hi = interval or (fit.lo, fit.hi)
    over = "" if interval is None else " seeds+items"
    return (f"{arm}: slope {fit.slope:+.3f} [{lo:+.3f}, {hi:+.3f}]{over}",
            (ends, [my + fit.slope * (x - mx) for x in ends]))
