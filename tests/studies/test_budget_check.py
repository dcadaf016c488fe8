"""Validating forgetting-budget probes against the full measures (bapo.studies.budget_check), on constructed cases."""

import json

import pytest

from bapo.studies.budget_check import Point, default_probes, full_points, hold_rows, markdown
from tests.helpers import tiny_study


def test_the_probe_chooses_a_scale_and_the_full_measure_judges_it():
    # two adapters, each measured in full at scales 1 and 0.5; qa losses (share of questions lost)
    points = [Point("a", 1.0, {"qa": 0.08}, 4.0), Point("a", 0.5, {"qa": 0.01}, 1.0),
              Point("b", 1.0, {"qa": 0.01}, 2.0), Point("b", 0.5, {"qa": 0.0}, 0.5)]
    # the probe's per-item losses: 'a' at 1 looks fine on the probe (0.0) but is not (0.08); 'a' at 0.5 looks fine
    probes = {"a@1": {"qa": [0.0] * 4}, "a@0.5": {"qa": [0.0] * 4},
              "b@1": {"qa": [0.0, 0.0, 1.0, 1.0]}, "b@0.5": {"qa": [0.0] * 4}}
    rows = hold_rows(points, probes, {"qa": [4]}, {"qa": [0.02]})
    (r,) = rows
    # a: the probe picks 1 (0.0 <= 0.02), where the full loss is 0.08: the budget breaks; b: the probe sees 0.5 at 1
    # and picks 0.5, where the full loss is 0: it holds (but keeps 0.5/2 of b's margin, where the full measure
    # would have kept all of it)
    assert (r.cases, r.holds, r.chose_base) == (2, 0.5, 0.0)
    assert r.binding == 0.5  # only a's full loss at its strongest scale (0.08) exceeds the budget
    assert r.holds_binding == 0.0  # and there the budget broke
    assert r.kept == pytest.approx((4.0 / 4.0 + 0.5 / 2.0) / 2)
    assert r.kept_full == pytest.approx((1.0 / 4.0 + 2.0 / 2.0) / 2)
    # a budget nothing meets on the probe: scale 0, the base model, which always holds and keeps nothing
    (z,) = hold_rows(points, {k: {"qa": [1.0] * 4} for k in probes}, {"qa": [4]}, {"qa": [0.02]})
    assert (z.holds, z.holds_binding, z.kept, z.chose_base) == (1.0, 1.0, 0.0, 1.0)


def test_adapters_a_budget_does_not_bind_do_not_vouch_for_the_probe():
    # ten adapters lose nothing at any scale (any probe's choice holds for them); one loses 0.2 at scale 1, which a
    # blind probe lets through: 10 of 11 hold, over 90%, yet the probe failed the only adapter the budget mattered for
    points = [Point(f"n{i}", s, {"qa": 0.0}, 1.0) for i in range(10) for s in (1.0, 0.5)]
    points += [Point("a", 1.0, {"qa": 0.2}, 4.0), Point("a", 0.5, {"qa": 0.0}, 1.0)]
    probes = {f"{p.cell}@{p.scale:g}": {"qa": [0.0] * 4} for p in points}
    (r,) = hold_rows(points, probes, {"qa": [4]}, {"qa": [0.1]})
    assert r.holds == pytest.approx(10 / 11) and r.holds_binding == 0.0 and r.binding == pytest.approx(1 / 11)
    assert default_probes([r]) == {} and "| 91% | 0% |" in markdown([r])


def test_the_cheapest_probe_that_holds_is_the_default():
    import random

    points = [Point("a", 1.0, {"qa": 0.2}, 4.0), Point("a", 0.5, {"qa": 0.0}, 1.0)]
    # at scale 1 the loss sits in the last two of four probe items; a 2-item probe (a seeded subset) may miss it
    probes = {"a@1": {"qa": [0.0, 0.0, 0.5, 0.5]}, "a@0.5": {"qa": [0.0] * 4}}
    rows = hold_rows(points, probes, {"qa": [2, 4]}, {"qa": [0.1]}, seed=0)
    two, four = rows
    assert (two.items, four.items) == (2, 4)
    assert four.holds == 1.0 and four.kept == 0.25  # mean 0.25 > 0.1 at scale 1: 0.5 is chosen, where nothing is lost
    # a 2-item probe is a random draw, as a user's would be: the row averages 20 seeded draws
    sees = [bool(set(random.Random(d).sample(range(4), 2)) & {2, 3}) for d in range(20)]
    assert two.holds == pytest.approx(sum(sees) / 20) and 0 < two.holds < 1
    assert default_probes(rows) == {("qa", 0.1): 2 if two.holds >= 0.9 else 4}
    assert "| qa | 4 | 0.1 | 1 | 100% | 100%" in markdown(rows)
    # a budget the full measure never exceeds binds nothing: it holds for any probe, and validates none
    (loose,) = hold_rows(points, probes, {"qa": [4]}, {"qa": [0.5]})
    assert (loose.binding, loose.holds) == (0.0, 1.0) and default_probes([loose]) == {}


def test_what_the_choice_costs_in_multiple_choice_knowledge_and_over_refusal():
    points = [Point("a", 1.0, {"qa": 0.2, "knowledge": 0.03, "over_refusal": 0.1}, 4.0),
              Point("a", 0.5, {"qa": 0.0, "knowledge": 0.01, "over_refusal": 0.02}, 1.0)]
    probes = {"a@1": {"qa": [0.2] * 4}, "a@0.5": {"qa": [0.0] * 4}}
    strict, loose = hold_rows(points, probes, {"qa": [4]}, {"qa": [0.1, 0.3]})
    assert strict.knowledge_lost == pytest.approx(0.01) and loose.knowledge_lost == pytest.approx(0.03)
    assert strict.over_refusal == pytest.approx(0.02) and loose.over_refusal == pytest.approx(0.1)
    assert "| +1.0 pts | +2.0 pts |" in markdown([strict])


def test_full_points_read_the_study_records(tmp_path):
    (tmp_path / "suite.yaml").write_text(
        "tasks:\n  - {name: drift, kind: drift, path: package:general_prompts.jsonl}\n"
        "  - {name: triviaqa, kind: qa, path: package:general_prompts.jsonl}\n"
        "  - {name: refusal_harmful, kind: refusal, path: package:general_prompts.jsonl}\n"
        "  - {name: refusal_harmless, kind: refusal, path: package:general_prompts.jsonl}\n")

    def rec(model, task, kind, metric, value, delta, scale=1.0):
        return {"model": model, "adapter": "" if model == "base" else f"/s/cells/{model.split('@')[0]}",
                "scale": scale, "method": "dpo", "task": task, "kind": kind, "metric": metric, "n": 10,
                "value": value, "stderr": 0.0, "delta": delta}

    recs = [rec("c", "drift", "drift", "logp_change_per_token", -0.3, -0.3),
            rec("c", "triviaqa", "qa", "acc", 0.05, -0.04), rec("c", "refusal_harmful", "refusal", "refusal", 0.1, -0.2),
            rec("c", "refusal_harmless", "refusal", "refusal", 0.1, 0.5), rec("c", "arc", "mc", "acc_norm", 0.4, -0.02),
            rec("c", "personal:u", "personal", "margin", 3.0, 3.0)]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps({"records": recs}))
    (p,) = full_points(tmp_path)
    assert (p.cell, p.scale, p.margin) == ("c", 1.0, 3.0)
    # qa_share: 0.04 of all questions lost, where the base model answered 0.05 + 0.04 = 0.09 right
    assert p.full == pytest.approx({"drift": 0.3, "qa": 0.04, "refusal": 0.2, "knowledge": 0.02, "over_refusal": 0.5,
                                    "qa_share": 0.04 / 0.09})


def test_the_qa_share_probe_divides_what_was_lost_by_what_the_base_model_knew_on_the_same_items():
    # the base model answered items 0 and 1 of four right; at scale 1 the adapter lost item 0 (half of what it knew),
    # a quarter of all items; at 0.5 it lost nothing and got item 3 right as well (a gain: loss -1)
    points = [Point("a", 1.0, {"qa": 0.25, "qa_share": 0.5}, 4.0), Point("a", 0.5, {"qa": 0.0, "qa_share": 0.0}, 1.0)]
    probes = {"a@1": {"qa": [1.0, 0.0, 0.0, 0.0], "qa_base": [1.0, 1.0, 0.0, 0.0]},
              "a@0.5": {"qa": [0.0, 0.0, 0.0, -1.0], "qa_base": [1.0, 1.0, 0.0, 0.0]}}
    # a budget of 0.3: qa reads 0.25 at scale 1 and keeps it, qa_share reads 0.5 and steps down to 0.5
    qa, share = hold_rows(points, probes, {"qa": [4], "qa_share": [4]}, {"qa": [0.3], "qa_share": [0.3]})
    assert (qa.measure, qa.kept) == ("qa", 1.0) and (share.measure, share.kept, share.holds) == ("qa_share", 0.25, 1.0)
    # two items drawn: a draw without items 0 or 1 holds nothing the base model knew, so reads no loss
    import random

    rows = hold_rows(points, probes, {"qa_share": [2, 4]}, {"qa_share": [0.3]}, seed=0)
    draws = [random.Random(d).sample(range(4), 2) for d in range(20)]
    lost = [(1 if 0 in idx else 0) / sum(i in (0, 1) for i in idx) if set(idx) & {0, 1} else 0.0 for idx in draws]
    assert rows[0].holds == pytest.approx(sum(x > 0.3 for x in lost) / 20)


def test_probe_study_probes_held_back_items_at_every_measured_scale_and_resumes(tmp_path, tiny_model, monkeypatch):
    from bapo.options import dump_yaml
    from bapo.studies import budget_check
    from bapo.training.config import TrainConfig
    from tests.helpers import make_adapter, write_jsonl

    write_jsonl(tmp_path / "qa.jsonl", [{"question": f"Capital {i}?", "answer": f"city {i}"} for i in range(12)])
    write_jsonl(tmp_path / "harm.jsonl", [{"prompt": f"Do harm {i}"} for i in range(10)])
    (tmp_path / "suite.yaml").write_text(
        "tasks:\n  - {name: drift, kind: drift, path: package:general_prompts.jsonl, limit: 3, max_new_tokens: 4}\n"
        "  - {name: triviaqa, kind: qa, path: qa.jsonl, limit: 5, max_new_tokens: 4}\n"
        "  - {name: refusal_harmful, kind: refusal, path: harm.jsonl, limit: 4, max_new_tokens: 4}\n")
    cell = make_adapter(tiny_model, tmp_path / "cells" / "u__dpo__s0")
    (cell / "config.yaml").write_text(dump_yaml(TrainConfig(model=tiny_model, device="cpu", dtype="float32")))
    metrics = {("drift", "drift", "logp_change_per_token"): -0.2, ("triviaqa", "qa", "acc"): -0.1,
               ("refusal_harmful", "refusal", "refusal"): 0.0, ("personal:u", "personal", "margin"): 2.0}
    recs = [{"model": f"u__dpo__s0@{s:g}", "adapter": str(cell), "scale": s, "method": "dpo", "task": t, "kind": k,
             "metric": m, "n": 5, "value": d, "stderr": 0.0, "delta": d * s}
            for s in (1.0, 0.5) for (t, k, m), d in metrics.items()]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps({"records": recs}))

    probes = budget_check.probe_study(tmp_path, qa_items=6, refusal_items=100)
    assert set(probes) == {"u__dpo__s0@1", "u__dpo__s0@0.5"}
    # 12 questions, 5 in the full measure: 6 of the other 7 probed; 10 requests, 4 in the full measure: the other 6
    assert [len(probes["u__dpo__s0@1"][m]) for m in ("qa", "refusal")] == [6, 6]
    assert len(probes["u__dpo__s0@1"]["drift"]) == 40  # the default drift probe: the package's 40 general prompts
    assert probes["u__dpo__s0@1"] != probes["u__dpo__s0@0.5"]  # the scale applied
    # the base model's own score on each probed question, the same for every scale (what qa_share divides by)
    base = probes["u__dpo__s0@1"]["qa_base"]
    assert len(base) == 6 and set(base) <= {0.0, 1.0} and probes["u__dpo__s0@0.5"]["qa_base"] == base
    with monkeypatch.context() as m:
        m.setattr(budget_check, "open_reference", lambda *a, **k: pytest.fail("the cache was not used"))
        assert budget_check.probe_study(tmp_path, qa_items=6, refusal_items=100) == probes
    # a cache written before the base model's scores were kept gets them, and keeps its probes
    cache = tmp_path / "budget_check" / "probes.json"
    cache.write_text(json.dumps({k: {m: v for m, v in p.items() if m != "qa_base"} for k, p in probes.items()}))
    assert budget_check.probe_study(tmp_path, qa_items=6, refusal_items=100) == probes
    # the adapter trained again with other weights (a lost study folder): its probes are not its own any more
    make_adapter(tiny_model, cell, seed=1)
    again = budget_check.probe_study(tmp_path, qa_items=6, refusal_items=100)
    assert again["u__dpo__s0@1"] != probes["u__dpo__s0@1"]


def test_a_measure_is_judged_on_the_adapters_measured_on_it_in_full():
    # 'a' was measured on everything, 'd' (its study still scoring) on drift alone: qa is judged on 'a' only, drift
    # on both; what no drift-only adapter measured (ARC-Easy + PIQA) is averaged over those that did
    points = [Point("a", 1.0, {"drift": 0.3, "qa": 0.2, "knowledge": 0.04}, 4.0),
              Point("a", 0.5, {"drift": 0.05, "qa": 0.0, "knowledge": 0.01}, 1.0),
              Point("d", 1.0, {"drift": 0.4}, 3.0), Point("d", 0.5, {"drift": 0.02}, 1.0)]
    probes = {f"{p.cell}@{p.scale:g}": {"drift": [p.full["drift"]] * 2, "qa": [0.0, 0.0]} for p in points}
    drift, qa = hold_rows(points, probes, {"drift": [2], "qa": [2]}, {"drift": [0.1], "qa": [0.1]})
    assert (drift.measure, drift.cases, drift.holds, qa.measure, qa.cases, qa.holds) == ("drift", 2, 1.0, "qa", 1, 0.0)
    assert drift.knowledge_lost == pytest.approx(0.01)  # 'a' at 0.5; 'd' measured none
    only_drift = [p for p in points if p.cell == "d"]
    (r,) = hold_rows(only_drift, probes, {"drift": [2], "qa": [2]}, {"drift": [0.1], "qa": [0.1]})
    assert r.measure == "drift" and "| 33% | 33% | 0% | - | - |" in markdown([r])  # d at 0.5 keeps 1/3; qa: no row
    # a budget only the base model meets: it lost nothing of ARC-Easy + PIQA, but 'd' was never measured on them
    (z,) = hold_rows(only_drift, probes, {"drift": [2]}, {"drift": [0.01]})
    assert z.chose_base == 1.0 and "| 100% | - | - |" in markdown([z])
    (a,) = hold_rows(points[:2], probes, {"drift": [2]}, {"drift": [0.01]})
    assert a.chose_base == 1.0 and a.knowledge_lost == 0.0


def _evals(tmp_path) -> int:
    from bapo.runtime.store import Store

    return Store(tmp_path / "cache" / "reference.sqlite").db.execute("SELECT COUNT(*) FROM evals").fetchone()[0]


def test_drift_points_measure_every_trained_cell_at_its_study_scales_under_the_study_keys(tmp_path, tiny_model):
    from bapo.studies import budget_check

    cfg, (dpo, bapo) = tiny_study(tmp_path, tiny_model, (
        "tasks:\n  - {name: arc, kind: mc, path: nowhere.jsonl}\n"  # not read: drift alone is measured
        "  - {name: drift, kind: drift, path: package:general_prompts.jsonl, limit: 3, max_new_tokens: 4}\n"))
    assert budget_check.study_targets(cfg) == [(dpo.name, 1.0), (dpo.name, 0.5), (bapo.name, 1.0)]
    points = budget_check.drift_points(cfg)
    assert [(p.cell, p.scale) for p in points] == [(bapo.name, 1.0), (dpo.name, 0.5), (dpo.name, 1.0)]
    assert all(set(p.full) == {"drift"} and p.full["drift"] > 0 for p in points)  # a random adapter drifts
    # cached: base, the 2 adapters and dpo@0.5, each on drift and on the held-out pairs, and the reference's own
    # log-probs on each task (logps_as_scored); a second call scores nothing
    assert _evals(tmp_path) == 4 * 2 + 2
    assert budget_check.drift_points(cfg) == points
    assert _evals(tmp_path) == 10


def test_scored_points_read_what_the_study_has_scored_and_score_nothing(tmp_path, tiny_model):
    from dataclasses import replace

    from bapo.evaluation.runner import evaluate
    from bapo.studies import budget_check
    from bapo.studies.plan import eval_config
    from tests.helpers import write_jsonl

    write_jsonl(tmp_path / "qa.jsonl", [{"question": f"Capital {i}?", "answer": f"city {i}"} for i in range(4)])
    write_jsonl(tmp_path / "harm.jsonl", [{"prompt": f"Do harm {i}"} for i in range(3)])
    cfg, (dpo, bapo) = tiny_study(tmp_path, tiny_model, (
        "tasks:\n  - {name: drift, kind: drift, path: package:general_prompts.jsonl, limit: 2, max_new_tokens: 4}\n"
        f"  - {{name: triviaqa, kind: qa, path: {tmp_path / 'qa.jsonl'}, max_new_tokens: 4}}\n"
        f"  - {{name: refusal_harmful, kind: refusal, path: {tmp_path / 'harm.jsonl'}, max_new_tokens: 4}}\n"))
    assert budget_check.scored_points(cfg) == [] and _evals(tmp_path) == 0
    out = tmp_path / "s"
    evaluate(replace(eval_config(cfg, [dpo, bapo], out / "suite.yaml", out), out=str(out / "eval")))  # scale 1
    scored = _evals(tmp_path)
    points = budget_check.scored_points(cfg)
    assert [(p.cell, p.scale) for p in points] == [(bapo.name, 1.0), (dpo.name, 1.0)]  # dpo@0.5: not scored yet
    assert set(points[0].full) >= {"drift", "qa", "refusal"} and _evals(tmp_path) == scored
    # with DPO's frontier scored too, every target is a full point; budget_check reads drift-only points for none
    evaluate(replace(eval_config(cfg, [dpo], out / "suite.yaml", out), adapter_scales=[0.5], out=str(out / "f")))
    full = budget_check.study_points(cfg)
    assert [(p.cell, p.scale) for p in full] == [(bapo.name, 1.0), (dpo.name, 0.5), (dpo.name, 1.0)]
    assert all("qa" in p.full for p in full)
