"""``bapo report``: PNG plots and one self-contained HTML page from ``bapo eval``'s results.

Two kinds of figure: per-task bars (every model, 95% error bars) and the trade-off scatter, personalization gained
against knowledge and alignment kept, with one line per adapter through its LoRA scales (the frontier you get by
simply weakening that adapter).
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bapo.errors import DataError, Problem  # noqa: E402
from bapo.evaluation.metrics import Z95  # noqa: E402
from bapo.evaluation.records import Record  # noqa: E402
from bapo.evaluation.samples import MAX_CHARS, read_samples, side_by_side  # noqa: E402
from bapo.evaluation.tasks import PERSONAL_KINDS, role_metric  # noqa: E402
from bapo.io import atomic_save_figure, atomic_write_text  # noqa: E402

# Personalization on the x axis: the user's own profile score where the user has one, else the implicit-reward margin
# (nats; the base model's is 0), else the AUC of held-out thumbs (unpaired feedback), else ll_acc; the first whose
# values differ between the models (on the demo's held-out pairs every adapter's ll_acc was 1.000, so all points stood
# on one vertical line).
PERSONAL_METRICS = ("profile_score", "margin", "auc", "ll_acc")
BASE_COLOR = "#888888"
KNOWLEDGE = role_metric("knowledge")
ALIGNMENT = tuple(role_metric(r) for r in ("drift", "alignment", "reward"))


def load_results(path: Path) -> tuple[dict, list[Record]]:
    """``bapo eval``'s results: the run's description and its records."""
    p = path / "results.json" if path.is_dir() else path
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(Problem(str(p), 0, "file", "not found (run bapo eval first)")) from None
    except json.JSONDecodeError as e:
        raise DataError(Problem(str(p), e.lineno, "json", f"malformed JSON ({e.msg})")) from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise DataError(Problem(str(p), 1, "records", "missing: not a bapo eval results file"))
    return data, [Record.from_dict(r) for r in data["records"]]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def personal_metric(records: list[Record]) -> str:
    """The personalization metric the trade-off plots: the first of :data:`PERSONAL_METRICS` that separates the
    models."""
    for metric in PERSONAL_METRICS:
        vals = [r.value for r in records if r.kind in PERSONAL_KINDS and r.metric == metric]
        if vals and max(vals) - min(vals) > 1e-9:
            return metric
    return PERSONAL_METRICS[-1]


def method_colors(records: list[Record]) -> dict[str, str]:
    """One colour per method, the same on every plot of the page; the base model grey."""
    methods = dict.fromkeys(r.method for r in records if r.model != "base")
    return {"base": BASE_COLOR, **{m: f"C{i % 10}" for i, m in enumerate(methods)}}


def task_bars(records: list[Record], task: str, out: Path) -> Path:
    color_of = method_colors(records)
    rows = [r for r in records if r.task == task]
    metrics = list(dict.fromkeys(r.metric for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rs = [r for r in rows if r.metric == metric]
        names = [r.model for r in rs]
        colors = [BASE_COLOR if r.model == "base" else color_of[r.method] for r in rs]
        ax.bar(range(len(rs)), [r.value for r in rs], yerr=[Z95 * (r.stderr or 0) for r in rs], color=colors,
               capsize=4)
        ax.set_xticks(range(len(rs)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{metric} (n = {max(r.n for r in rs)})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if rs and rs[0].kind == "drift":
            ax.axhline(0, color="black", lw=0.8)
    fig.suptitle(task, fontsize=11)
    fig.tight_layout()
    path = out / f"task_{_slug(task)}.png"
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _value(records, model, kind: str | tuple[str, ...], metric):
    kinds = (kind,) if isinstance(kind, str) else kind
    vals = [r for r in records if r.model == model and r.kind in kinds and r.metric == metric]
    if not vals:
        return None
    return sum(r.value for r in vals) / len(vals), max(r.stderr or 0 for r in vals)


def tradeoff(records: list[Record], out: Path) -> Path | None:
    """Personalization (x) against each retention measure (y), one line per adapter through its scales."""
    models = list(dict.fromkeys(r.model for r in records))
    metric_x = personal_metric(records)
    personal = {m: _value(records, m, PERSONAL_KINDS, metric_x) for m in models}
    panels = [(k, m) for k, m in (KNOWLEDGE, *ALIGNMENT) if any(r.kind == k and r.metric == m for r in records)]
    if not panels or not any(v is not None for v in personal.values()):
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    groups: dict[str, list[Record]] = {}
    for r in records:
        if r.adapter:
            groups.setdefault(r.adapter, [])
            if r.model not in [x.model for x in groups[r.adapter]]:
                groups[r.adapter].append(r)
    color_of = method_colors(records)
    methods = list(dict.fromkeys(g[0].method for g in groups.values()))
    for ax, (kind, metric) in zip(axes[0], panels):
        base_x, base_y = personal.get("base"), _value(records, "base", kind, metric)
        for adapter, rs in groups.items():
            pts = []
            if base_x and base_y:
                pts.append((0.0, base_x[0], base_y[0], 0, 0))
            for r in sorted(rs, key=lambda r: r.scale):
                x, y = personal.get(r.model), _value(records, r.model, kind, metric)
                if x and y:
                    pts.append((r.scale, x[0], y[0], x[1], y[1]))
            if not pts:
                continue
            color = color_of[rs[0].method]
            ax.plot([p[1] for p in pts], [p[2] for p in pts], "-", color=color, alpha=0.6)
            for s, x, y, xe, ye in pts[1:] if base_x and base_y else pts:
                ax.errorbar(x, y, xerr=Z95 * xe, yerr=Z95 * ye, fmt="o", color=color, ms=5, capsize=2, alpha=0.9)
                ax.annotate(f"{Path(adapter).name}" + (f"@{s:g}" if len(pts) > 2 else ""), (x, y), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        if base_x and base_y:
            ax.plot(base_x[0], base_y[0], "s", color="#444444", ms=8, label="base")
        for m in methods:
            ax.plot([], [], "o-", color=color_of[m], label=m)
        ax.set_xlabel(f"personalization: held-out {metric_x} →")
        ax.set_ylabel(f"{kind}: {metric} (kept) ↑")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("personalization gained vs. knowledge and alignment kept (95% error bars)", fontsize=11)
    fig.tight_layout()
    path = out / "tradeoff.png"
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _html_table(records: list[Record], task: str) -> str:
    rows = [r for r in records if r.task == task]
    metrics = list(dict.fromkeys(r.metric for r in rows))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    body = []
    for model in dict.fromkeys(r.model for r in rows):
        by = {r.metric: r for r in rows if r.model == model}
        cells = []
        for m in metrics:
            r = by.get(m)
            if r is None:
                cells.append("<td></td>")
                continue
            text = f"{r.value:.3f} <span class=se>± {r.stderr:.3f}</span>"
            if r.delta is not None:
                cls = "pos" if r.delta_lo > 0 else "neg" if r.delta_hi < 0 else "flat"
                text += (f"<br><span class='{cls}'>Δ {r.delta:+.3f} "
                         f"[{r.delta_lo:+.3f}, {r.delta_hi:+.3f}]</span>")
            cells.append(f"<td>{text}</td>")
        method = next(iter(by.values())).method
        body.append(f"<tr><th>{html.escape(model)}</th><td>{html.escape(method)}</td>{''.join(cells)}</tr>")
    n = max(r.n for r in rows)
    return (f"<h3>{html.escape(task)} <small>n = {n}</small></h3><table><tr><th>model</th><th>method</th>{head}</tr>"
            + "".join(body) + "</table>")


def _samples_html(results: Path, first: int) -> list[str]:
    """What the models wrote (``samples.jsonl``, when the evaluation generated answers): the first prompts of each
    generative task, every model's answer beside it."""
    path = results / "samples.jsonl" if results.is_dir() else results.parent / "samples.jsonl"
    if not path.exists():
        return []
    parts = ["<h2>What the models wrote</h2>",
             f"<p>The first {first} prompts of every task whose answers are generated (greedy); all of them are in "
             f"{html.escape(str(path))}.</p>"]
    for shown in side_by_side(read_samples(path), first):
        head = "".join(f"<th>{html.escape(m)}</th>" for m in shown.metrics)
        rows = []
        for s in shown.rows:
            answer = s.answer if len(s.answer) <= MAX_CHARS else s.answer[:MAX_CHARS] + " …"
            values = "".join(f"<td>{s.scores[m]:.3g}</td>" if m in s.scores else "<td></td>" for m in shown.metrics)
            rows.append(f"<tr><th>{html.escape(s.model)}</th><td class=answer>{html.escape(answer) or '<i>(empty)</i>'}"
                        f"</td>{values}</tr>")
        parts.append(f"<h3>{html.escape(shown.task)} {shown.item + 1}. {html.escape(shown.prompt)}</h3>"
                     f"<table><tr><th>model</th><th>answer</th>{head}</tr>{''.join(rows)}</table>")
    return parts


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}.se{color:#777;font-size:90%}.pos{color:#1a7f37}.neg{color:#c62828}.flat{color:#777}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}small{color:#777;font-weight:normal}
td.answer{text-align:left;white-space:pre-wrap;max-width:60em}"""


def write_report(results: Path, out: Path, samples: int = 5) -> Path:
    """Write ``tradeoff.png``, one ``task_*.png`` per task and a self-contained ``report.html`` (with the first
    ``samples`` prompts of each generative task and what every model wrote); return the page."""
    data, records = load_results(Path(results))
    if not records:
        raise DataError(Problem(str(results), 1, "records", "empty: nothing to report"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = list(dict.fromkeys(r.task for r in records))
    bars = [task_bars(records, t, out) for t in tasks]
    trade = tradeoff(records, out)
    meta = {k: data.get(k) for k in ("model", "suite", "created", "seconds")}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>bapo report</title><style>{CSS}</style></head>",
             "<body><h1>bapo: personalization vs. what the model kept</h1>",
             "<p>" + " · ".join(f"<b>{k}</b>: {html.escape(str(v))}" for k, v in meta.items() if v is not None) + "</p>",
             "<p>Each cell: mean ± standard error; for adapters, Δ is the paired change against the base model on the "
             "same items with its 95% interval (green: a real gain, red: a real loss, grey: within noise).</p>"]
    if trade:
        parts += ["<h2>Trade-off</h2>", _img(trade)]
    parts.append("<h2>Tables</h2>")
    parts += [_html_table(records, t) for t in tasks]
    parts.append("<h2>Per task</h2>")
    parts += [_img(b) for b in bars]
    parts += _samples_html(Path(results), samples)
    parts.append("</body></html>")
    page = out / "report.html"
    atomic_write_text(page, "\n".join(parts))
    return page
