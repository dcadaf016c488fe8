"""``bapo demo`` end to end on the tiny model: three adapters, the held-out table, `bapo eval`, the report."""

import json

from bapo.demo import run_demo


def test_the_demo_runs_and_its_two_views_agree(tmp_path, tiny_model):
    report = run_demo(tmp_path / "demo", model=tiny_model, steps=2, cache_dir=str(tmp_path / "cache"),
                      max_new_tokens=4)
    results = report["results"]
    assert set(results) == {"base", "dpo", "bapo", "bapo_mean"}
    base = results["base"]
    # the base model is its own reference: no margin, no drift, ties everywhere
    assert base["reward_acc"]["value"] == 0.5 and base["base_drift"]["value"] == 0.0
    records = json.loads((tmp_path / "demo" / "eval" / "results.json").read_text())["records"]
    profile = {r["model"]: r["value"] for r in records if r["metric"] == "profile_score"}
    # the held-out table and `bapo eval` score the same answers (generated in the same batches)
    assert profile == {name: r["bullet_rate"]["value"] for name, r in results.items()}
    assert (tmp_path / "demo" / "report" / "report.html").exists() and (tmp_path / "demo" / "results.txt").exists()
