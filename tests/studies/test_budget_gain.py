"""What the forgetting budget gains by choosing among methods (bapo.studies.budget_gain), on constructed cases and a
tiny study."""

import json
import random
import statistics

import pytest

from bapo.runtime.config import BudgetSettings
from bapo.studies.budget_gain import GainRow, SeedChoice, chosen_scale, choices, markdown, probe_items
from tests.helpers import tiny_study

ALL = {"drift": [0, 1], "qa": [0, 1], "refusal": [0, 1]}


def _probe(drift, refusal=0.0, qa=(0.0, 0.0), qa_base=(1.0, 1.0)):
    """One adapter scale's per-item probe losses (two items each)."""
    return {"drift": [drift, drift], "refusal": [refusal, refusal], "qa": list(qa), "qa_base": list(qa_base)}


def test_each_method_takes_its_largest_scale_within_the_budget_and_the_largest_margin_ships():
    # DPO drifts 0.3 at scale 1 and 0.08 at 0.5; BAPO drifts 0.05 at scale 1; replay 0.2 at 1, 0.12 at 0.5
    probes = {"dpo": {1.0: _probe(0.3), 0.5: _probe(0.08)}, "bapo": {1.0: _probe(0.05), 0.5: _probe(0.01)},
              "replay": {1.0: _probe(0.2), 0.5: _probe(0.12)}}
    margins = {"dpo": {1.0: [10.0, 12.0], 0.5: [3.0, 1.0]}, "bapo": {1.0: [4.0, 5.0], 0.5: [1.0, 1.0]},
               "replay": {1.0: [9.0, 9.0], 0.5: [2.0, 2.0]}}
    c = choices(probes, margins, ["dpo", "replay", "bapo"], {"drift": 0.1}, ALL, "u", 2)
    assert (c.dpo.method, c.dpo.scale, c.dpo.margin) == ("dpo", 0.5, 2.0)
    # replay meets the budget at no scale but 0 (the base model): BAPO at scale 1 (margin 4.5) ships
    assert (c.winner.method, c.winner.scale, c.winner.margin) == ("bapo", 1.0, 4.5)
    assert c.gain == pytest.approx(2.5) and c.items == [1.0, 4.0] and (c.user, c.seed) == ("u", 2)
    # a looser budget: DPO keeps scale 1, whose margin no other method beats: no gain
    loose = choices(probes, margins, ["dpo", "replay", "bapo"], {"drift": 0.5}, ALL)
    assert (loose.winner.method, loose.winner.scale, loose.gain, loose.items) == ("dpo", 1.0, 0.0, [0.0, 0.0])
    # a budget no method meets above scale 0: the base model, margin 0 on every pair, is what ships, and DPO alone
    # ships it too
    none = choices(probes, margins, ["dpo", "replay", "bapo"], {"drift": 0.001}, ALL)
    assert (none.dpo.scale, none.winner.scale, none.gain, none.items) == (0.0, 0.0, 0.0, [0.0, 0.0])


def test_the_scale_is_chosen_on_every_measure_of_the_budget_qa_share_included():
    # scale 1 lost one of the two questions the base model knew (qa_share 0.5), scale 0.5 none
    probes = {1.0: _probe(0.01, qa=(1.0, 0.0)), 0.5: _probe(0.01)}
    assert chosen_scale(probes, {"drift": 0.1}, ALL) == 1.0
    assert chosen_scale(probes, {"drift": 0.1, "qa_share": 0.4}, ALL) == 0.5
    assert chosen_scale(probes, {"qa_share": 0.6}, ALL) == 1.0
    # only item 1 in the probe: a question the adapter kept, so nothing is lost
    assert chosen_scale(probes, {"qa_share": 0.4}, {**ALL, "qa": [1]}) == 1.0
    assert chosen_scale({1.0: _probe(0.2, refusal=0.1)}, {"drift": 0.3, "refusal": 0.05}, ALL) == 0.0


def test_the_probes_are_read_at_bapo_train_s_default_sizes():
    items = probe_items({"drift": 40, "qa": 300, "refusal": 100}, BudgetSettings())
    assert {p: len(v) for p, v in items.items()} == {"drift": 10, "qa": 300, "refusal": 50}
    assert items["drift"] == sorted(random.Random(0).sample(range(40), 10))
    assert probe_items({"drift": 40}, BudgetSettings(drift_items=0)) == {"drift": list(range(40))}


def test_the_gain_s_interval_is_over_seeds_and_held_out_pairs():
    from bapo.budget.run import Candidate

    def seed(s, gain, items):
        return SeedChoice("u", s, Candidate("dpo", 0.5, 1.0, 0.0), Candidate("bapo", 1.0, 1.0 + gain, 0.0), items)

    row = GainRow("drift:0.1", "u", [seed(0, 1.0, [0.0, 2.0]), seed(1, 3.0, [2.0, 4.0])])
    g = row.gain
    # seeds: mean 2, sd sqrt(2), se 1; pairs: per-pair means 1 and 3, sd sqrt(2), se 1; Welch df = 4 / (1 + 1) = 2
    assert g.mean == pytest.approx(2.0) and g.hi - g.mean == pytest.approx(4.303 * 2 ** 0.5)
    text = markdown([row])
    assert "| drift:0.1 | u | 2 | 0.5, 0.5; 1.00 | bapo@1 x2; 3.00 | +2.00 | [-4.09, +8.09] | +1.00, +3.00 |" in text


def test_gain_rows_on_a_study_probe_and_measure_margins_once(tmp_path, tiny_model, monkeypatch):
    from bapo.studies import budget_gain, budget_check
    from tests.helpers import write_jsonl

    write_jsonl(tmp_path / "qa.jsonl", [{"question": f"Capital {i}?", "answer": f"city {i}"} for i in range(8)])
    write_jsonl(tmp_path / "harm.jsonl", [{"prompt": f"Do harm {i}"} for i in range(6)])
    cfg, (dpo, bapo) = tiny_study(tmp_path, tiny_model, (
        "tasks:\n  - {name: drift, kind: drift, path: package:general_prompts.jsonl, limit: 2, max_new_tokens: 4}\n"
        f"  - {{name: triviaqa, kind: qa, path: {tmp_path / 'qa.jsonl'}, limit: 3, max_new_tokens: 4}}\n"
        f"  - {{name: refusal_harmful, kind: refusal, path: {tmp_path / 'harm.jsonl'}, limit: 2, "
        "max_new_tokens: 4}\n"))
    rows = budget_gain.gain_rows(cfg, ["dpo", "bapo"], ["drift:0.1", "drift:100"], [1.0, 0.5])
    assert [(r.budget, r.user, len(r.seeds)) for r in rows] == [("drift:0.1", dpo.user, 1), ("drift:100", dpo.user, 1)]
    loose = rows[1].seeds[0]
    assert loose.dpo.scale == 1.0 and loose.winner.scale == 1.0  # nothing binds at 100 nats/token
    # the margins are bapo train's held-out margins: the study's own evaluation of the same adapter at scale 1 agrees
    drift = {(p.cell, p.scale): p.margin for p in budget_check.drift_points(cfg)}
    assert loose.dpo.margin == pytest.approx(drift[(dpo.name, 1.0)], abs=1e-4)
    probes = json.loads((tmp_path / "s" / "budget_check" / "probes.json").read_text())
    assert set(probes) == {f"{c.name}@{s:g}" for c in (dpo, bapo) for s in (1, 0.5)}
    margins = json.loads((tmp_path / "s" / "budget_gain" / "margins.json").read_text())
    assert set(margins[bapo.name]) == {"digest", "1", "0.5"} and len(margins[bapo.name]["1"]) == 3  # 3 held-out pairs
    assert statistics.fmean(margins[dpo.name]["0.5"]) != statistics.fmean(margins[dpo.name]["1"])
    # a second run measures nothing: probes and margins are cached
    monkeypatch.setattr(budget_gain, "open_reference", lambda *a, **k: pytest.fail("margins measured again"))
    monkeypatch.setattr(budget_check, "open_reference", lambda *a, **k: pytest.fail("probed again"))
    again = budget_gain.gain_rows(cfg, ["dpo", "bapo"], ["drift:0.1", "drift:100"], [1.0, 0.5])
    assert [r.seeds for r in again] == [r.seeds for r in rows]
    # a seed without a trained cell of every method is left out (its BAPO cell not finished: no run.json)
    (tmp_path / "s" / "cells" / bapo.name / "run.json").unlink()
    assert budget_gain.gain_rows(cfg, ["dpo", "bapo"], ["drift:0.1"], [1.0, 0.5]) == []


def test_the_script_says_when_no_seed_has_every_method_trained(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    config = tmp_path / "study.yaml"
    config.write_text(f"users: ['flip:1']\nmethods: [dpo, replay, bapo]\nout: {tmp_path / 'out'}\n")
    script = Path(__file__).resolve().parents[2] / "studies" / "budget_gain.py"
    out = subprocess.run([sys.executable, str(script), str(config)], capture_output=True, text=True)
    assert out.returncode == 1 and "no seed has a trained cell of every method" in out.stderr
