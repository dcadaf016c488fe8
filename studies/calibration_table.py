"""Tabulate the calibration sweep (studies/calibrate.sh): per training setting, DPO against the base model on
personalization and knowledge, and the setting the rule of studies/calibrate.yaml chooses.

    python studies/calibration_table.py study_calibrate > study_calibrate/sweep.md
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

MEASURES = [("personalization", "reward_acc"), ("personalization", "margin"), ("knowledge", "acc_norm"), ("knowledge", "acc"),
            ("generative knowledge", "acc"), ("alignment", "acc_norm"), ("drift", "logp_change_per_token")]


def row(study: Path) -> dict | None:
    path = study / "contrasts.csv"
    if not path.exists():
        return None
    found = {(r["measure"], r["metric"]): r for r in csv.DictReader(path.open()) if r["baseline"] == "base"}
    return {"setting": study.name, **{m: found.get(m) for m in MEASURES}}


def cell(r: dict | None) -> str:
    if r is None:
        return ""
    return f"{float(r['delta']):+.3f} [{float(r['lo']):+.3f}, {float(r['hi']):+.3f}] (n={r['n']})"


def forgets(r: dict) -> bool:
    """The rule: knowledge (pooled MC acc_norm or acc, or TriviaQA) down >= 2 points with the interval below 0, and
    personalization clearly above the base model's 0.5."""
    losses = [r[m] for m in (("knowledge", "acc_norm"), ("knowledge", "acc"), ("generative knowledge", "acc")) if r[m]]
    lost = any(float(x["delta"]) <= -0.02 and float(x["hi"]) < 0 for x in losses)
    p = r[("personalization", "reward_acc")]
    return lost and p is not None and float(p["lo"]) > 0


def main(root: str) -> None:
    rows = [r for r in (row(d) for d in sorted(Path(root).iterdir(), key=_strength) if d.is_dir()) if r]
    print("| setting | " + " | ".join(f"{m} ({k})" for m, k in MEASURES) + " | forgets by the rule |")
    print("|---|" + "---|" * (len(MEASURES) + 1))
    for r in rows:
        print(f"| {r['setting']} | " + " | ".join(cell(r[m]) for m in MEASURES) + f" | {'yes' if forgets(r) else 'no'} |")
    lora = [r for r in rows if not r["setting"].startswith("full-")]
    chosen = next((r["setting"] for r in lora if forgets(r)), None)
    print(f"\nΔ: DPO minus the base model, paired on items, 95% interval. Chosen by the rule (LoRA settings, weakest "
          f"first): {chosen or 'none'}" + ("" if chosen else f" (strongest tried: {lora[-1]['setting'] if lora else '-'})"))


def _strength(d: Path) -> tuple[bool, float, float]:
    """LoRA settings first, each kind by epochs then learning rate: e2-lr0.0005, ..., full-e2-lr0.00005."""
    name = d.name.removeprefix("full-")
    epochs, lr = name.removeprefix("e").split("-lr") if "-lr" in name else ("0", "0")
    return d.name.startswith("full-"), float(epochs), float(lr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "study_calibrate")
