"""The scripts under studies/ that tabulate finished studies: the calibration rule and the trend's join of studies."""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path


STUDIES = Path(__file__).resolve().parents[2] / "studies"
FIELDS = ["user", "method", "baseline", "measure", "metric", "n", "seeds", "delta", "stderr", "lo", "hi", "per_seed",
          "clear"]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def contrast(user, method, baseline, measure, metric, delta, lo, hi, clear=False):
    return dict(user=user, method=method, baseline=baseline, measure=measure, metric=metric, n=100, seeds=1,
                delta=delta, stderr=0.01, lo=lo, hi=hi, per_seed=f"[{delta}]", clear=clear)


def write_study(path: Path, users: dict[str, float], rows: list[dict], seeds: int = 1) -> Path:
    path.mkdir(parents=True)
    meta = {"config": {"seeds": seeds}, "users": {
        spec.replace(":", "-"): {"spec": spec,
                                 "heterogeneity": {"value": h, "stderr": 0.01, "n": 100, "judge": "labels"}}
        for spec, h in users.items()}}
    (path / "study.json").write_text(json.dumps(meta))
    with (path / "contrasts.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def test_calibration_rule_needs_a_clear_loss_of_two_points_and_clear_personalization():
    forgets = script("calibration_table").forgets
    personal = {"delta": "0.2", "lo": "0.05", "hi": "0.3"}
    lost = {"delta": "-0.03", "lo": "-0.05", "hi": "-0.01"}
    base = {m: None for m in script("calibration_table").MEASURES}
    assert forgets({**base, ("personalization", "reward_acc"): personal, ("generative knowledge", "acc"): lost})
    small = {"delta": "-0.015", "lo": "-0.02", "hi": "-0.01"}  # clear, but under 2 points
    assert not forgets({**base, ("personalization", "reward_acc"): personal, ("knowledge", "acc_norm"): small})
    unclear = {"delta": "-0.03", "lo": "-0.06", "hi": "0.001"}
    assert not forgets({**base, ("personalization", "reward_acc"): personal, ("knowledge", "acc"): unclear})
    weak = {"delta": "0.1", "lo": "-0.01", "hi": "0.2"}  # personalization not clearly above 0.5
    assert not forgets({**base, ("personalization", "reward_acc"): weak, ("generative knowledge", "acc"): lost})


def test_trend_table_joins_studies_orders_users_by_heterogeneity_and_draws(tmp_path):
    trend = write_study(tmp_path / "trend", {"flip:0.5": 0.5, "flip:0": 0.0}, [
        contrast("flip:0", "dpo", "base", "generative knowledge", "acc", -0.01, -0.02, 0.0),
        contrast("flip:0.5", "dpo", "base", "generative knowledge", "acc", -0.03, -0.05, -0.01, clear=True),
        contrast("flip:0.5", "bapo", "dpo", "generative knowledge", "acc", 0.02, 0.01, 0.03, clear=True)])
    compare = write_study(tmp_path / "compare", {"flip:1": 1.0}, [
        contrast("flip:1", "dpo", "base", "generative knowledge", "acc", -0.05, -0.06, -0.04, clear=True),
        contrast("flip:1", "kl", "base", "generative knowledge", "acc", 0.0, -0.01, 0.01)], seeds=3)
    figure = tmp_path / "trend.png"
    out = subprocess.run([sys.executable, str(STUDIES / "trend_table.py"), str(trend), str(compare),
                          str(tmp_path / "not-yet"), "--figure", str(figure)],
                         capture_output=True, text=True, check=True)
    rows = [line for line in out.stdout.splitlines() if line.startswith("| flip")]
    assert [r.split(" | ")[0] for r in rows] == ["| flip:0 (0.00, 1)", "| flip:0.5 (0.50, 1)", "| flip:0.5 (0.50, 1)",
                                                  "| flip:1 (1.00, 3)"]
    assert "bapo − dpo" in rows[2] and "+0.020 [+0.010, +0.030]*" in rows[2]
    assert "-0.050 [-0.060, -0.040]*" in rows[3] and "kl" not in out.stdout  # only DPO and BAPO
    assert figure.stat().st_size > 0


def test_trend_table_without_any_finished_study_says_so(tmp_path):
    out = subprocess.run([sys.executable, str(STUDIES / "trend_table.py"), str(tmp_path)], capture_output=True,
                         text=True)
    assert out.returncode == 1 and "no finished study" in out.stderr


def test_carry_packs_a_study_s_scores_and_probes_and_a_new_machine_gets_them_back(tmp_path, monkeypatch):
    from bapo.runtime.store import Store

    carry = script("carry")
    monkeypatch.setattr(carry, "carried", lambda config: tmp_path / "carried" / f"{config.stem}.jsonl.gz")
    config = tmp_path / "study.yaml"
    config.write_text(f"out: {tmp_path / 'out'}\ntrain:\n  cache_dir: {tmp_path / 'cache'}\n")
    store = Store(tmp_path / "cache" / "reference.sqlite")
    store.put_eval("k1", {"acc": [1.0, 0.0]})
    store.put_eval("k2", {"margin": [0.5]})
    store.close()
    probes = tmp_path / "out" / "budget_check" / "probes.json"
    probes.parent.mkdir(parents=True)
    probes.write_text(json.dumps({"cell@1": {"drift": [0.1]}}))
    (probes.parent / "digests.json").write_text(json.dumps({"cell": "abc"}))
    carry.pack(config)
    first = (tmp_path / "carried" / "study.jsonl.gz").read_bytes()
    carry.pack(config)
    assert (tmp_path / "carried" / "study.jsonl.gz").read_bytes() == first  # byte-stable: no noise in git

    # the next session's machine: no cache, no study folder, except what it has already scored again
    import shutil

    shutil.rmtree(tmp_path / "cache")
    shutil.rmtree(tmp_path / "out")
    store = Store(tmp_path / "cache" / "reference.sqlite")
    store.put_eval("k2", {"margin": [0.7]})
    store.close()
    carry.unpack(config)
    store = Store(tmp_path / "cache" / "reference.sqlite")
    assert store.get_eval("k1") == {"acc": [1.0, 0.0]}
    assert store.get_eval("k2") == {"margin": [0.7]}  # what the cache holds is kept
    assert json.loads(probes.read_text()) == {"cell@1": {"drift": [0.1]}}
    assert json.loads((probes.parent / "digests.json").read_text()) == {"cell": "abc"}


def finished_study(study: Path, base: list[float], adapters: list[tuple[dict, list[float]]]) -> Path:
    """A finished study's files as bapo study writes them, for one ARC-Easy measure: each adapter its row (user,
    method, seed and the rest) with its per-item acc_norm; its knowledge_delta is their mean less the base model's."""
    (study / "eval").mkdir(parents=True)
    rows, scores, records = [], {"base": {"arc_easy": {"acc_norm": base}}}, []
    for row, v in adapters:
        name = f"{row['user'].replace(':', '-')}__{row['method'].replace(':', '-')}__s{row['seed']}"
        rows.append({"adapter": f"/x/cells/{name}", "heterogeneity": 0.0, "heterogeneity_stderr": 0.0,
                     "judge": "labels", "personal_reward_acc": 0.7, "personal_reward_acc_stderr": 0.01,
                     "personal_ll_acc_delta": None, "personal_ll_acc_delta_stderr": None,
                     "knowledge_delta": sum(v) / len(v) - sum(base) / len(base), **row})
        scores[name] = {"arc_easy": {"acc_norm": v}}
        records.append({"model": name, "adapter": f"/x/cells/{name}", "scale": 1.0, "method": row["method"],
                        "task": "arc_easy", "kind": "mc", "metric": "acc_norm", "n": len(v),
                        "value": sum(v) / len(v), "stderr": 0.1})
    (study / "study.json").write_text(json.dumps({"rows": rows}))
    (study / "eval" / "results.json").write_text(json.dumps({"records": records}))
    (study / "eval" / "item_scores.json").write_text(json.dumps(scores))
    return study


def test_trend_reading_reads_a_finished_study_s_slopes_over_seeds_and_items(tmp_path):
    base = [1.0, 1.0, 1.0, 1.0]  # ARC-Easy acc_norm per item; each adapter loses some of them
    own = {("flip:0", 0): [1.0, 1.0, 1.0, 1.0], ("flip:0", 1): [1.0, 1.0, 1.0, 0.0],
           ("flip:1", 0): [0.0, 1.0, 1.0, 1.0], ("flip:1", 1): [0.0, 0.0, 1.0, 1.0]}
    study = finished_study(tmp_path / "study", base, [
        ({"user": user, "method": "dpo", "seed": seed, "heterogeneity": float(user[-1])}, v)
        for (user, seed), v in own.items()])
    out = subprocess.run([sys.executable, str(STUDIES / "trend_reading.py"), str(study), "--figure",
                          str(tmp_path / "t.png"), "--out", str(tmp_path / "t.md")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # changes 0, -0.25 at heterogeneity 0 and -0.25, -0.5 at 1: slope -0.25, read over seeds and the 4 items
    assert "| dpo | knowledge | -0.250 |" in out.stdout and "| seeds and items |" in out.stdout
    assert (tmp_path / "t.md").read_text() in out.stdout and (tmp_path / "t.png").stat().st_size > 0
    missing = subprocess.run([sys.executable, str(STUDIES / "trend_reading.py"), str(tmp_path)], capture_output=True,
                             text=True)
    assert missing.returncode == 1 and "study.json: not there" in missing.stderr


def test_hinge_reading_reads_bapo_minus_replay_at_each_ones_margin(tmp_path):
    # BAPO's frontier (lambda 1, 0.1) and replay's, two seeds, 2 ARC-Easy items; the base model answers both
    margins = {("bapo", 0): 10.0, ("bapo:0.1", 0): 30.0, ("replay", 0): 20.0, ("replay:0.1", 0): 40.0,
               ("bapo", 1): 20.0, ("bapo:0.1", 1): 40.0, ("replay", 1): 30.0, ("replay:0.1", 1): 35.0}
    items = {("bapo", 0): [1.0, 0.0], ("bapo:0.1", 0): [0.0, 0.0], ("replay", 0): [0.0, 1.0],
             ("replay:0.1", 0): [0.0, 0.0], ("bapo", 1): [1.0, 0.0], ("bapo:0.1", 1): [0.0, 0.0],
             ("replay", 1): [1.0, 1.0], ("replay:0.1", 1): [1.0, 0.0]}
    study = finished_study(tmp_path / "study", [1.0, 1.0], [
        ({"user": "flip:1", "method": m, "seed": s, "personal_margin": margins[(m, s)]}, v) for (m, s), v in items.items()])
    out = subprocess.run([sys.executable, str(STUDIES / "hinge_reading.py"), str(study), "--out",
                          str(tmp_path / "h.md")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "| flip:1 | bapo:0.1 | s0: 30.0, s1: 40.0 |" in out.stdout and (tmp_path / "h.md").read_text() in out.stdout
    # at BAPO's own margins (10, 20) replay's frontier (20-40, 30-35) is out of reach at both seeds
    assert "| flip:1 | bapo - replay | knowledge | bapo's own | beyond reach |  |  |  | 0/2 | -, - |" in out.stdout
    # at replay's own (20, 30): BAPO's frontier halfway between its two settings (changes -0.5 and -1.0, so -0.75,
    # items [0.5, 0.0] less the base's [1, 1]) minus replay's own change: -0.75 + 0.5 = -0.25 at seed 0 (items
    # +0.5, -1.0 against replay's [0, 1]) and -0.75 - 0.0 = -0.75 at seed 1 (items -0.5, -1.0 against [1, 1]).
    # Mean -0.5; seeds' se sqrt(0.125 / 2) = 0.25; items' se: the seed-mean per-item differences (0, -1) have
    # variance 0.5, sqrt(0.5 / 2) = 0.5; Welch df 1.47 -> 1, t 12.706: half-width 12.706 * sqrt(0.3125) = 7.103
    assert ("| flip:1 | bapo - replay | knowledge | replay's own | -0.500 | [-7.603, +6.603] | 0.250 | 0.500 | 2/2 | "
            "-0.250, -0.750 |") in out.stdout
    wrong = subprocess.run([sys.executable, str(STUDIES / "hinge_reading.py"), str(study), "--second", "kl"],
                           capture_output=True, text=True)
    assert wrong.returncode == 1 and "no 'kl' adapters (its methods: bapo, replay)" in wrong.stderr
