"""The trend of issue 13: does forgetting grow with heterogeneity, and does BAPO hold it down there? Joins the trend
study (studies/trend.yaml: flip:0, flip:0.5, vpl:helpful, one seed) with the comparison's most heterogeneous user
(studies/compare.yaml: flip:1, three seeds), both trained at the calibrated setting, into one table (stdout, markdown)
and one figure: each measure's change against the base model, DPO and BAPO, against the user's heterogeneity.

    python studies/trend_table.py study_trend study_compare --figure docs/figures/trend_forgetting.png

Reads only what the studies wrote (study.json, contrasts.csv); a study that has not finished yet is left out.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MEASURES = [("personalization", "reward_acc"), ("personalization", "margin"), ("knowledge", "acc_norm"),
            ("generative knowledge", "acc"), ("alignment", "acc_norm"), ("refusal of harmful requests", "refusal"),
            ("refusal of harmless requests", "refusal"), ("drift", "logp_change_per_token")]
PAIRS = [("dpo", "base"), ("bapo", "base"), ("bapo", "dpo")]
PANELS = [("generative knowledge", "acc"), ("knowledge", "acc_norm"), ("refusal of harmful requests", "refusal"),
          ("personalization", "reward_acc")]


def load(study: Path) -> dict[str, dict]:
    """user spec -> {"heterogeneity", "stderr", "seeds", "contrasts": {(method, baseline, measure, metric): row}}."""
    summary, table = study / "study.json", study / "contrasts.csv"
    if not summary.exists() or not table.exists():
        return {}
    meta = json.loads(summary.read_text())
    users = {u["spec"]: {"heterogeneity": u["heterogeneity"]["value"], "stderr": u["heterogeneity"]["stderr"],
                         "judge": u["heterogeneity"]["judge"], "seeds": meta["config"]["seeds"], "contrasts": {}}
             for u in meta["users"].values()}
    for r in csv.DictReader(table.open()):
        if r["user"] in users:
            users[r["user"]]["contrasts"][(r["method"], r["baseline"], r["measure"], r["metric"])] = r
    return users


def cell(r: dict | None) -> str:
    if r is None:
        return ""
    star = "*" if r["clear"] == "True" else ""
    return f"{float(r['delta']):+.3f} [{float(r['lo']):+.3f}, {float(r['hi']):+.3f}]{star}"


def table(users: dict[str, dict]) -> str:
    lines = ["| user (heterogeneity, seeds) | arm | " + " | ".join(f"{m} ({k})" for m, k in MEASURES) + " |",
             "|---|---|" + "---|" * len(MEASURES)]
    for spec, u in users.items():
        for method, baseline in PAIRS:
            cells = [cell(u["contrasts"].get((method, baseline, m, k))) for m, k in MEASURES]
            if any(cells):
                lines.append(f"| {spec} ({u['heterogeneity']:.2f}, {u['seeds']}) | {method} − {baseline} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(users: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.6))
    for ax, (measure, metric) in zip(axes, PANELS):
        for i, method in enumerate(("dpo", "bapo")):
            pts = sorted((u["heterogeneity"], u["contrasts"].get((method, "base", measure, metric)), spec)
                         for spec, u in users.items())
            pts = [(h, r, spec) for h, r, spec in pts if r is not None]
            if not pts:
                continue
            # One line per family of users (flip:H at its heterogeneities); a lone user (a real one) is a point.
            families = {spec.split(":")[0] for _, _, spec in pts}
            for n, family in enumerate(sorted(families)):
                fam = [(h, r, spec) for h, r, spec in pts if spec.split(":")[0] == family]
                x = [h + (i - 0.5) * 0.02 for h, _, _ in fam]  # side by side where heterogeneities coincide
                y = [float(r["delta"]) for _, r, _ in fam]
                err = [[yy - float(r["lo"]) for yy, (_, r, _) in zip(y, fam)],
                       [float(r["hi"]) - yy for yy, (_, r, _) in zip(y, fam)]]
                ax.errorbar(x, y, yerr=err, marker="o" if len(fam) > 1 else "s", capsize=3, color=f"C{i}",
                            linestyle="-" if len(fam) > 1 else "none", label=method if n == 0 else None)
                if i == 0:
                    for xx, yy, (_, _, spec) in zip(x, y, fam):
                        ax.annotate(spec, (xx, yy), fontsize=7, textcoords="offset points", xytext=(4, 4))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{measure}\n({metric}), change vs base", fontsize=9)
        ax.set_xlabel("user's heterogeneity")
        ax.set_xlim(-0.08, 1.12)
    axes[0].legend()
    fig.suptitle("Change against the base model by heterogeneity (share of pairs against general preference); "
                 "95% intervals", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("studies", nargs="+", type=Path, help="study output directories (later ones add users)")
    ap.add_argument("--figure", type=Path, help="where to draw the trend figure (PNG)")
    args = ap.parse_args()
    users: dict[str, dict] = {}
    for study in args.studies:
        for spec, u in load(study).items():
            users.setdefault(spec, u)
    users = dict(sorted(users.items(), key=lambda kv: kv[1]["heterogeneity"]))
    if not users:
        raise SystemExit(f"no finished study among {', '.join(map(str, args.studies))} (study.json and contrasts.csv)")
    print(table(users))
    print("\nΔ against the base model (or BAPO against DPO), paired on items and seed-matched, 95% interval; "
          "* = the interval excludes 0 and every seed agrees. Heterogeneity: "
          + "; ".join(f"{s}: {u['heterogeneity']:.2f} ± {u['stderr']:.2f} ({u['judge']})" for s, u in users.items()))
    if args.figure:
        figure(users, args.figure)
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
