"""``bapo study`` end to end on a tiny model and a miniature copy of the shared data layout."""

import gzip
import json
import re
from pathlib import Path

from dataclasses import replace
from types import SimpleNamespace

import pytest

import bapo.studies.run
from bapo.data.users import Sources
from bapo.evaluation.config import EvalConfig
from bapo.io import as_dicts
from bapo.evaluation.runner import evaluate
from bapo.studies.config import StudyConfig, study_training
from bapo.studies.contrasts import contrasts, contrasts_markdown
from bapo.studies.figures import aggregate
from bapo.studies.plan import Cell, plan
from bapo.studies.run import run_study, train_config
from bapo.studies.users import heterogeneity
from bapo.studies.users import make_user as build_user
from tests.helpers import write_jsonl


def run_eval(cfg: EvalConfig) -> list[dict]:
    return as_dicts(evaluate(cfg).records)


def hh(q: str, a: str) -> str:
    return f"\n\nHuman: {q}\n\nAssistant: {a}"


def mini_data(root: Path) -> Path:
    (root / "knowledge").mkdir(parents=True)
    (root / "general").mkdir()
    (root / "prompts").mkdir()
    (root / "personal").mkdir()
    write_jsonl(root / "knowledge/arc_easy.jsonl", [{"query": f"Question: What is {i} plus 1?\nAnswer:",
                                                     "choices": [str(i + 1), str(i + 2), "x"], "gold": 0}
                                                    for i in range(5)])
    write_jsonl(root / "knowledge/piqa.jsonl", [{"query": f"Open jar {i}", "choices": ["twist lid", "eat lid"],
                                                 "gold": 0} for i in range(5)])
    with gzip.open(root / "general/hh_harmless_base_test.jsonl.gz", "wt") as f:
        for i in range(5):
            f.write(json.dumps({"chosen": hh(f"Help {i}?", "Sure, here is how."),
                                "rejected": hh(f"Help {i}?", "No.")}) + "\n")
    general = [{"text": [hh(f"Tell me about topic {i}.", "A long and friendly answer " + "ok " * (i % 4)),
                         hh(f"Tell me about topic {i}.", f"Short {i}.")], "score": [1, 0]} for i in range(24)]
    (root / "general/dsp_helpful_test.json").write_text(json.dumps(general))
    write_jsonl(root / "prompts/alpaca_eval_instructions.jsonl", [{"instruction": f"Say {w}."} for w in "abc"])
    dsp = [{"query": f"Explain thing {i}.", "responses": {d: f"{d} answer {i}" for d in
                                                          ("academy", "business", "entertainment", "literature", "normal")}}
           for i in range(6)]
    (root / "personal/dsp_domain_preference_test.json").write_text(json.dumps(dsp))
    for style in ("concise", "verbose"):
        rows = [{"instruction": f"Task {i}", "output": f"{style} output {i}", "generator": f"m_{style}"} for i in range(7)]
        (root / f"personal/alpacaeval_gpt-3.5-turbo-1106_{style}.json").write_text(json.dumps(rows))
    with gzip.open(root / "personal/vpl_relabeled_hh_both_test.jsonl.gz", "wt") as f:
        for i in range(10):
            f.write(json.dumps({"prompt": f"Human: Q{i}?", "responses": [f"yes {i}", f"no {i}"],
                                "label": i % 2, "original_label": 0, "objective": "helpful"}) + "\n")
    return root


@pytest.fixture
def study_cfg(tmp_path, tiny_model):
    data = mini_data(tmp_path / "data")
    train = study_training()
    train.model, train.epochs, train.batch_size, train.lr = tiny_model, 1, 4, 5e-3
    train.base.max_new_tokens, train.data.max_length, train.data.max_prompt_length = 6, 128, 64
    return StudyConfig(users=["flip:0", "flip:1"], methods=["dpo", "bapo"], seeds=1, out=str(tmp_path / "study"),
                       pairs_per_user=8, holdout_pairs=4, eval_items=0, alignment_items=0, drift_prompts=3,
                       sources=Sources(data_dir=str(data)), train=train)


def test_flip_users_reverse_a_nested_rule_chosen_fraction(tmp_path):
    src = Sources(data_dir=str(mini_data(tmp_path / "data")))
    half, all_ = build_user("flip:0.5", src, 0), build_user("flip:1", src, 0)
    assert len(half.pairs) == 24 and heterogeneity(half).value == 0.5 and heterogeneity(all_).value == 1.0
    flipped = [p for p, a in zip(half.pairs, half.general_agree) if not a]
    # the length rule reverses the pairs where the general choice is longest relative to the rejected one
    assert all(len(p.rejected) - len(p.chosen) >= max(len(q.chosen) - len(q.rejected)
                                                      for q, a in zip(half.pairs, half.general_agree) if a)
               for p in flipped)
    vpl = build_user("vpl:helpful", src, 0)
    assert len(vpl.pairs) == 10 and heterogeneity(vpl).value == 0.5  # label disagrees with original on odd rows
    assert vpl.pairs[1].chosen == "no 1" and vpl.pairs[0].chosen == "yes 0"


def test_real_data_users_prefer_their_own_responses(tmp_path):
    src = Sources(data_dir=str(mini_data(tmp_path / "data")))
    lit = build_user("dsp:literature", src, 0)
    assert len(lit.pairs) == 24 and lit.general_agree is None  # 6 queries x (3 other domains + the original)
    assert all(p.chosen.startswith("literature") and not p.rejected.startswith("literature") for p in lit.pairs)
    assert {p.rejected.split()[0] for p in lit.pairs} == {"academy", "business", "entertainment", "normal"}
    verbose = build_user("alpacaeval:verbose", src, 5)
    assert len(verbose.pairs) == 5 and all(p.chosen.startswith("verbose") and p.rejected.startswith("concise")
                                           for p in verbose.pairs)
    assert build_user("alpacaeval:verbose", src, 5).pairs == verbose.pairs  # the sample is seeded
    assert all(p.user_id == "alpacaeval-verbose" for p in verbose.pairs)


def test_bad_user_specs_and_files_are_clear_errors(tmp_path):
    from bapo.errors import BapoError

    src = Sources(data_dir=str(mini_data(tmp_path / "data")))
    for spec, msg in [("dsp:law", "DOMAIN"), ("flip:1.5", "[0, 1]"), ("nobody", "unknown user"),
                      ("psoups:rude", "PROFILE"), ("vpl:kind", "vpl:helpful")]:
        with pytest.raises(BapoError, match=re.escape(msg)):
            build_user(spec, src, 0)
    (tmp_path / "data/personal/dsp_domain_preference_test.json").write_text('[{"query": "q", "responses": {}}]')
    with pytest.raises(BapoError, match="record 1: responses"):
        build_user("dsp:academy", src, 0)
    with pytest.raises(BapoError, match="sources.vpl: .* not found"):
        build_user("vpl:helpful", Sources(data_dir=str(tmp_path / "nowhere")), 0)


def test_dry_run_prints_a_plan_and_trains_nothing(study_cfg, capsys):
    res = run_study(study_cfg, dry_run=True)
    assert [c.name for c in res.cells] == ["flip-0__dpo__s0", "flip-0__bapo__s0", "flip-1__dpo__s0", "flip-1__bapo__s0"]
    assert res.estimated_seconds > 0
    assert not (Path(study_cfg.out) / "cells").exists()
    study_cfg.frontier_scales = [0.5, 1.0]  # two DPO adapters again at half scale (1.0 is the adapter itself)
    scaled = run_study(study_cfg, dry_run=True)
    assert scaled.estimated_seconds > res.estimated_seconds
    assert "2 scaled DPO adapters" in " ".join(capsys.readouterr().out.split())


def test_a_base_response_method_may_carry_its_own_lambda(study_cfg):
    from bapo.errors import ConfigError

    study_cfg.users, study_cfg.methods = ["flip:1"], ["dpo", "bapo", "bapo:0.1", "replay:0"]
    study_cfg.train.loss.anchor_lambda = 2.0
    cells = plan(study_cfg)
    assert [c.name for c in cells] == ["flip-1__dpo__s0", "flip-1__bapo__s0", "flip-1__bapo-l0.1__s0",
                                       "flip-1__replay-l0__s0"]
    assert [c.arm for c in cells] == ["dpo", "bapo", "bapo:0.1", "replay:0"] and cells[2].loss == "bapo"
    losses = [train_config(study_cfg, c, Path(study_cfg.out)).loss for c in cells]
    assert [(x.method, x.anchor_lambda) for x in losses] == [("dpo", 2.0), ("bapo", 2.0), ("bapo", 0.1), ("replay", 0.0)]
    study_cfg.validate()
    assert study_cfg.lambdas() == {"bapo": 2.0, "bapo:0.1": 0.1, "replay:0": 0.0}
    # the trade-off figure draws bapo through its lambdas, one dotted line per user and seed (replay has one arm)
    import matplotlib.pyplot as plt
    from bapo.studies.figures import draw_lambda_frontier

    rows = [SimpleNamespace(user="u", seed=s, method=m, personal_margin=x, knowledge_delta=-x / 10)
            for s in (0, 1) for m, x in (("dpo", 3.0), ("bapo", 0.2), ("bapo:0.1", 1.0), ("replay:0", 2.0))]
    fig, ax = plt.subplots()
    draw_lambda_frontier(ax, rows, study_cfg.lambdas(), "personal_margin", "knowledge_delta")
    lines = ax.get_lines()
    assert len(lines) == 2 and [tuple(line.get_xdata()) for line in lines] == [(1.0, 0.2)] * 2  # lambda 0.1, then 2
    assert lines[0].get_label() == "bapo, by lambda"
    plt.close(fig)
    fig, ax = plt.subplots()  # in the colour of bapo's own points (its strongest lambda), told apart from the others
    draw_lambda_frontier(ax, rows, study_cfg.lambdas(), "personal_margin", "knowledge_delta",
                         {"dpo": "C0", "bapo": "C1", "bapo:0.1": "C2", "replay:0": "C3"})
    assert {line.get_color() for line in ax.get_lines()} == {"C1"}
    plt.close(fig)
    for methods, msg in [(["dpo:0.1"], "only a base-response method"), (["bapo:much"], "a number >= 0"),
                         (["bapo:-1"], "a number >= 0"), (["bapo:0.1", "bapo:0.1"], "named twice"),
                         (["nope:0.1"], "only a base-response method")]:
        with pytest.raises(ConfigError, match=msg):
            replace(study_cfg, methods=methods).validate()


def test_an_arm_may_put_the_anchor_over_kto(study_cfg):
    """``bapo/kto``: BAPO's anchor over KTO, trained on the user's pairs as thumbs; ``kto`` alone likewise."""
    from bapo.errors import ConfigError

    study_cfg.users, study_cfg.methods = ["flip:1"], ["dpo", "kto", "bapo/kto", "bapo/kto:0.1"]
    cells = plan(study_cfg)
    assert [c.name for c in cells] == ["flip-1__dpo__s0", "flip-1__kto__s0", "flip-1__bapo-kto__s0",
                                       "flip-1__bapo-kto-l0.1__s0"]
    assert [c.unpaired for c in cells] == [False, True, True, True]
    losses = [train_config(study_cfg, c, Path(study_cfg.out)).loss for c in cells]
    assert [(x.method, x.pairwise, x.anchor_lambda) for x in losses] == [
        ("dpo", "dpo", 1.0), ("kto", "kto", 1.0), ("bapo", "kto", 1.0), ("bapo", "kto", 0.1)]
    study_cfg.validate()
    for methods, msg in [(["dpo/kto"], "only a base-response method"), (["bapo/nope"], "pref_loss")]:
        with pytest.raises(ConfigError, match=msg):
            replace(study_cfg, methods=methods).validate()


def test_miniature_study_end_to_end_and_resume(study_cfg, tiny_model, monkeypatch):
    study_cfg.frontier_scales = [0.0, 0.5]
    evaluated, real = [], bapo.studies.run.evaluate_models
    monkeypatch.setattr(bapo.studies.run, "evaluate_models", lambda cfg, ev, console: evaluated.append(
        ([Path(a).name.split("__")[1] for a in ev.adapters], ev.adapter_scales)) or real(cfg, ev, console))
    result = run_study(study_cfg)
    # DPO's adapters and their frontier are scored first (an evaluation stopped part way has what every matched
    # reading rests on), then every model (DPO's from the cache); the frontier is not evaluated twice
    assert evaluated == [(["dpo", "dpo"], [1.0]), (["dpo", "dpo"], [0.0, 0.5]),
                         (["dpo", "bapo", "dpo", "bapo"], [1.0])]
    monkeypatch.setattr(bapo.studies.run, "evaluate_models", real)
    out = Path(study_cfg.out)
    summary = json.loads((out / "study.json").read_text())
    rows = summary["rows"]
    assert rows == [r.to_dict() for r in result.rows] and summary["contrasts"] == as_dicts(result.contrasts)
    # the DPO adapters' weakening frontier: at scale 0 each is the base model (no change, reference-tied reward)
    zero, half = summary["frontier"]["0"], summary["frontier"]["0.5"]
    assert [r["user"] for r in zero] == [r["user"] for r in half] == ["flip:0", "flip:1"]
    assert all(r["personal_reward_acc"] == 0.5 and r["knowledge_delta"] == 0.0 for r in zero)
    assert half[1]["drift_delta"] != rows[2]["drift_delta"]  # half the adapter moves the model another amount
    assert [(r["user"], r["method"]) for r in rows] == [("flip:0", "dpo"), ("flip:0", "bapo"), ("flip:1", "dpo"),
                                                         ("flip:1", "bapo")]
    assert [r["heterogeneity"] for r in rows] == [0.0, 0.0, 1.0, 1.0]
    for r in rows:
        assert Path(r["adapter"]) == out / "cells" / f"{r['user'].replace(':', '-')}__{r['method']}__s0"
        assert (Path(r["adapter"]) / "run.json").exists()
        for k in ("personal_reward_acc", "knowledge_delta", "alignment_delta", "drift_delta", "arc_easy_delta"):
            assert isinstance(r[k], float), k
    table = (out / "table.md").read_text()
    # 4 cells and the 2 DPO cells at scales 0 and 0.5; 7 measures x (2 users x 2 methods against the base model + 2
    # users x bapo against dpo, dpo@0 and dpo@0.5) contrasts
    matched = summary["matched"]  # BAPO read along its own frontier at DPO's, DPO@0.5's and its own personalization
    assert {(m["user"], m["method"], m["level"]) for m in matched} == {
        (u, "bapo", lv) for u in ("flip:0", "flip:1") for lv in ("full DPO", "DPO@0.5", "bapo's own")}
    assert all(m["seeds"] == 1 and m["seeds_in_reach"] == (m["delta"] is not None) for m in matched)
    # the per-item scores behind the readings' intervals: every cell, every DPO cell at each frontier scale, and the
    # base model (DPO's frontier at scale 0) for each user; their mean less the base model's is the table's change
    assert set(result.items) == {(u, m, 0, 1.0) for u in ("flip:0", "flip:1") for m in ("dpo", "bapo")} | {
        (u, "dpo", 0, s) for u in ("flip:0", "flip:1") for s in (0.0, 0.5)} | {(u, "base", 0, 0.0) for u in
                                                                              ("flip:0", "flip:1")}
    base = json.loads((out / "eval" / "item_scores.json").read_text())["base"]
    base_knowledge = [x for task in ("arc_easy", "piqa") if task in base for x in base[task]["acc_norm"]]
    for key, row in (((("flip:1", "dpo", 0, 1.0)), rows[2]), (("flip:1", "dpo", 0, 0.5), half[1])):
        mine = result.items[key]["knowledge"]
        assert len(mine) == len(base_knowledge)
        assert sum(mine) / len(mine) - sum(base_knowledge) / len(base_knowledge) == pytest.approx(row["knowledge_delta"])
    assert "Retention at matched personalization" in table
    assert summary["trend"] == [] and "Forgetting against heterogeneity" not in table  # 2 adapters an arm: no slope
    assert table.count("\n| flip:") == 4 + 4 + 7 * (4 + 2 + 2 + 2) + len(matched) and "general labels in the data" in table
    assert "| flip:1 | 1.00 ± 0.00 | dpo@0.5 | 0 |" in table and "personal margin" in table
    assert (out / "table.csv").read_text().splitlines()[0].startswith("user,method,seed,adapter,heterogeneity")
    # what each arm cost: its cells' training seconds, read from their run.json
    assert rows[0]["train_seconds"] == json.loads((out / "cells" / "flip-0__dpo__s0" / "run.json").read_text())["seconds"]
    assert "What each arm cost" in table and "| bapo | 2 | " in table
    assert {Path(f).name for f in summary["figures"]} == {"retention.png", "personalization.png", "tradeoff.png",
                                                          "tradeoff_margin.png", "tradeoff_margin_flip-0.png",
                                                          "tradeoff_margin_flip-1.png",  # and one per user
                                                          "trend.png"}  # two heterogeneities
    assert all(isinstance(r["personal_margin"], float) for r in rows)
    versus = summary["contrasts"]
    arms = (("dpo", "base"), ("bapo", "base"), ("bapo", "dpo"), ("bapo", "dpo@0"), ("bapo", "dpo@0.5"))
    personal = (("personalization", "reward_acc"), ("personalization", "margin"))
    retention = (("knowledge", "acc_norm"), ("knowledge", "acc"), ("alignment", "acc_norm"), ("alignment", "acc"),
                 ("drift", "logp_change_per_token"))
    assert {(c["user"], c["method"], c["baseline"], c["measure"], c["metric"]) for c in versus} == {
        (u, m, b, measure, metric) for u in ("flip:0", "flip:1") for m, b in arms
        for measure, metric in personal + retention} | {  # personalization, each user's items pooled
        ("pooled (2 users)", m, b, measure, metric) for m, b in arms for measure, metric in personal}
    assert "bapo − dpo" in table and "dpo − base" in table and (out / "contrasts.csv").exists()
    drift = {(c["method"], c["baseline"]): c["delta"] for c in versus
             if c["user"] == "flip:1" and c["measure"] == "drift"}
    assert drift["bapo", "dpo"] == pytest.approx(rows[3]["drift_delta"] - rows[2]["drift_delta"], abs=1e-6)
    assert drift["bapo", "base"] == pytest.approx(rows[3]["drift_delta"], abs=1e-6)
    # against DPO at scale 0 (the base model itself) every contrast is the contrast against the base model
    for c in versus:
        if c["baseline"] == "dpo@0":
            twin = next(b for b in versus if b["baseline"] == "base" and
                        (b["user"], b["method"], b["measure"], b["metric"]) ==
                        (c["user"], c["method"], c["measure"], c["metric"]))
            assert (c["delta"], c["n"]) == pytest.approx((twin["delta"], twin["n"]), abs=1e-9)
    assert drift["bapo", "dpo@0.5"] == pytest.approx(rows[3]["drift_delta"] - half[1]["drift_delta"], abs=1e-6)
    know = next(c for c in versus if (c["user"], c["method"], c["baseline"], c["measure"], c["metric"])
                == ("flip:0", "dpo", "base", "knowledge", "acc_norm"))
    assert know["delta"] == pytest.approx(rows[0]["knowledge_delta"], abs=1e-6)
    # each row's numbers are its own adapter's: evaluate one cell alone and compare
    cell = rows[3]
    alone = run_eval(EvalConfig(model=tiny_model, adapters=[cell["adapter"]], suite=str(out / "suite.yaml"),
                                out=str(out / "alone"), max_length=128, max_prompt_length=64))
    mine = {(r["task"], r["metric"]): r for r in alone if r["model"] != "base"}
    assert mine[("arc_easy", "acc_norm")]["delta"] == pytest.approx(cell["arc_easy_delta"])
    assert mine[("personal:flip-1", "reward_acc")]["value"] == pytest.approx(cell["personal_reward_acc"])
    assert len({r["personal_reward_acc"] for r in rows} | {r["drift_delta"] for r in rows}) > 2

    # rerun: everything is cached, nothing is trained again, the same table comes back
    monkeypatch.setattr(bapo.studies.run, "train", lambda cfg: pytest.fail("a finished cell was trained again"))
    again = run_study(study_cfg)
    assert [r.personal_reward_acc for r in again.rows] == [r["personal_reward_acc"] for r in rows]

    # the dry run prices what the cache leaves: nothing now; one adapter and its models once its run.json is gone
    done = run_study(study_cfg, dry_run=True).estimate
    assert (done.left, done.train_left, done.models_left) == (0.0, 0, 0) and done.from_nothing > 0
    (out / "cells" / "flip-1__dpo__s0" / "run.json").unlink()
    one = run_study(study_cfg, dry_run=True).estimate
    assert (one.train_left, one.models_left) == (1, 3)  # the adapter, and it again at scales 0 and 0.5
    assert 0 < one.left < done.from_nothing
    study_cfg.drift_prompts = 2  # a task the cache has no scores for: every model is to be scored again
    changed = run_study(study_cfg, dry_run=True).estimate
    assert (changed.train_left, changed.models_left) == (1, 1 + 4 + 2 * 2)


def test_a_study_of_full_fine_tuning_evaluates_model_directories(study_cfg):
    study_cfg.users, study_cfg.methods, study_cfg.train.finetune = ["flip:1"], ["dpo"], "full"
    result = run_study(study_cfg)
    cell = Path(study_cfg.out) / "cells" / "flip-1__dpo__s0"
    assert (cell / "model.safetensors").exists() and not (cell / "adapter_config.json").exists()
    row, = result.rows
    assert row.knowledge_delta is not None and row.drift_delta != 0.0  # every weight moved: the model answers anew
    again = run_study(study_cfg, dry_run=True).estimate
    assert (again.train_left, again.models_left) == (0, 0)  # a model directory's scores are found in the cache too


def test_contrasts_pair_items_and_match_seeds():
    cells = [Cell("u", "flip:1", m, s) for m in ("dpo", "bapo") for s in (0, 1)]
    records = [SimpleNamespace(task=t, kind=k) for t, k in (("arc", "mc"), ("piqa", "mc"), ("hh", "general_pairs"),
                                                            ("personal:u", "personal"))]
    scores = {"u__dpo__s0": {"arc": {"acc_norm": [1, 0]}, "piqa": {"acc_norm": [1]}, "hh": {"acc_norm": [0, 0, 0, 0]},
                             "personal:u": {"reward_acc": [0.5, 1]}},
              "u__bapo__s0": {"arc": {"acc_norm": [1, 1]}, "piqa": {"acc_norm": [1]}, "hh": {"acc_norm": [1, 1, 1, 0]},
                              "personal:u": {"reward_acc": [0.5, 1]}},
              "u__dpo__s1": {"arc": {"acc_norm": [0, 0]}, "piqa": {"acc_norm": [1]}, "hh": {"acc_norm": [0, 0, 0, 0]},
                             "personal:u": {"reward_acc": [1, 1]}},
              "u__bapo__s1": {"arc": {"acc_norm": [1, 0]}, "piqa": {"acc_norm": [0]}, "hh": {"acc_norm": [1, 1, 0, 1]},
                              "personal:u": {"reward_acc": [0, 1]}}}
    rows = {r["measure"]: r for r in as_dicts(contrasts(cells, records, scores, "dpo"))}
    assert set(rows) == {"personalization", "knowledge", "alignment"}  # no drift task was scored
    k = rows["knowledge"]  # per-item differences: seed 0 [0, 1, 0], seed 1 [1, 0, -1]; averaged [.5, .5, -.5]
    assert (k["method"], k["baseline"], k["n"], k["seeds"]) == ("bapo", "dpo", 3, 2)
    # over seeds and items: seeds' part var([1/3, 0]) / 2 = 1/36, items' part var([.5, .5, -.5]) / 3 = 1/9;
    # Welch-Satterthwaite df = (5/36)^2 / ((1/36)^2 / 1 + (1/9)^2 / 2) = 25/9 -> 2, t = 4.303
    assert k["delta"] == pytest.approx(1 / 6) and k["stderr"] == pytest.approx(5 ** 0.5 / 6)
    assert k["seed_se"] == pytest.approx(1 / 6) and k["lo"] == pytest.approx(1 / 6 - 4.303 * 5 ** 0.5 / 6)
    assert k["per_seed"] == pytest.approx([1 / 3, 0.0]) and not k["clear"]
    a = rows["alignment"]  # averaged differences [1, 1, .5, .5]: sd 0.2887 over 4 items; the seeds agree exactly
    assert a["delta"] == pytest.approx(0.75) and a["stderr"] == pytest.approx(0.2887 / 2, abs=1e-4)
    assert a["seed_se"] == 0.0 and a["lo"] == pytest.approx(0.75 - 3.182 * 0.2887 / 2, abs=1e-3)  # df 3
    assert a["lo"] > 0 and a["per_seed"] == pytest.approx([0.75, 0.75]) and a["clear"]
    p = rows["personalization"]  # seed 0 ties, seed 1 [-1, 0]: the seeds do not agree
    assert p["delta"] == pytest.approx(-0.25) and p["per_seed"] == pytest.approx([0.0, -0.5]) and not p["clear"]


def test_contrasts_pool_personalization_over_users_seed_by_seed():
    cells = [Cell(u, f"psoups:{u}", m, s) for u in ("u", "v") for m in ("dpo", "bapo") for s in (0, 1)]
    records = [SimpleNamespace(task=t, kind=k) for t, k in (("arc", "mc"), ("personal:u", "personal"),
                                                            ("personal:v", "personal"))]
    arc = {"arc": {"acc_norm": [1, 0]}}
    scores = {"u__dpo__s0": {**arc, "personal:u": {"profile_score": [0.0, 0.0]}},
              "u__bapo__s0": {**arc, "personal:u": {"profile_score": [1.0, 0.0]}},
              "u__dpo__s1": {**arc, "personal:u": {"profile_score": [0.0, 1.0]}},
              "u__bapo__s1": {**arc, "personal:u": {"profile_score": [1.0, 1.0]}},
              "v__dpo__s0": {**arc, "personal:v": {"profile_score": [0.5]}},
              "v__bapo__s0": {**arc, "personal:v": {"profile_score": [0.0]}},
              "v__dpo__s1": {**arc, "personal:v": {"profile_score": [0.0]}},
              "v__bapo__s1": {**arc, "personal:v": {"profile_score": [1.0]}}}
    found = {(r["user"], r["measure"], r["metric"]): r for r in as_dicts(contrasts(cells, records, scores, "dpo"))}
    pooled = found["pooled (2 users)", "personalization", "profile_score"]
    # per item, seed matched: seed 0 [1, 0 | -0.5], seed 1 [1, 0 | 1]; averaged over seeds [1, 0, 0.25]
    assert pooled["n"] == 3 and pooled["seeds"] == 2 and pooled["delta"] == pytest.approx(1.25 / 3)
    assert pooled["per_seed"] == pytest.approx([0.5 / 3, 2 / 3])
    assert found["psoups:u", "personalization", "profile_score"]["n"] == 2
    assert ("pooled (2 users)", "knowledge", "acc_norm") not in found  # the users' adapters meet the same items


def test_contrasts_against_the_base_model_and_on_raw_accuracy():
    cells = [Cell("u", "flip:1", "dpo", s) for s in (0, 1)]
    records = [SimpleNamespace(task=t, kind=k) for t, k in (("arc", "mc"), ("personal:u", "personal"),
                                                            ("personal:v", "personal"))]
    scores = {"base": {"arc": {"acc": [1, 1, 0], "acc_norm": [0, 1, 0]},
                       "personal:u": {"reward_acc": [0.5, 0.5], "margin": [0.0, 0.0]},
                       "personal:v": {"reward_acc": [0.5, 0.5, 0.5]}},  # another user's pairs: not this user's
              "u__dpo__s0": {"arc": {"acc": [0, 1, 0], "acc_norm": [0, 1, 0]},
                             "personal:u": {"reward_acc": [1, 1], "margin": [2.0, 1.0]}},
              "u__dpo__s1": {"arc": {"acc": [0, 0, 0], "acc_norm": [1, 1, 0]},
                             "personal:u": {"reward_acc": [1, 0], "margin": [0.5, -1.5]}}}
    found = contrasts(cells, records, scores, "base")
    rows = {(r["measure"], r["metric"]): r for r in as_dicts(found)}
    assert set(rows) == {("personalization", "reward_acc"), ("personalization", "margin"), ("knowledge", "acc_norm"),
                         ("knowledge", "acc")}
    raw = rows["knowledge", "acc"]  # seed 0 [-1, 0, 0], seed 1 [-1, -1, 0]; averaged [-1, -.5, 0]
    assert (raw["method"], raw["baseline"], raw["n"], raw["seeds"]) == ("dpo", "base", 3, 2)
    # seeds' part var([-1/3, -2/3]) / 2 = 1/36, items' part var([-1, -.5, 0]) / 3 = 1/12: stderr 1/3, df 2.9 -> 2
    assert raw["delta"] == pytest.approx(-0.5) and raw["stderr"] == pytest.approx(1 / 3)
    assert (raw["lo"], raw["hi"]) == pytest.approx((-0.5 - 4.303 / 3, -0.5 + 4.303 / 3))
    assert raw["per_seed"] == pytest.approx([-1 / 3, -2 / 3]) and not raw["clear"]
    assert rows["knowledge", "acc_norm"]["per_seed"] == pytest.approx([0.0, 1 / 3])
    p = rows["personalization", "reward_acc"]
    assert p["n"] == 2 and p["delta"] == pytest.approx(0.25) and p["per_seed"] == pytest.approx([0.5, 0.0])
    m = rows["personalization", "margin"]  # the base model's margin is 0; averaged over seeds [1.25, -0.25]
    # seeds' part var([1.5, -0.5]) / 2 = 1, items' part var([1.25, -0.25]) / 2 = 0.5625
    assert m["delta"] == pytest.approx(0.5) and m["stderr"] == pytest.approx(1.25) and m["per_seed"] == [1.5, -0.5]
    md = contrasts_markdown(found)
    assert "\nAgainst the base model:" in md and "dpo − base: -0.500 ± 0.333" in md
    glance = md.split("Against the base model:")[0].splitlines()  # a row per arm, a column per headline measure
    assert glance[0].startswith("flip:1, at a glance")
    assert glance[2] == ("| method − baseline | personalization (reward_acc) | personalization (margin) | "
                         "knowledge (acc_norm) |")  # raw accuracy only in the full list
    p, m, k = (rows[c] for c in (("personalization", "reward_acc"), ("personalization", "margin"),
                                 ("knowledge", "acc_norm")))
    assert glance[4] == (f"| dpo − base | +0.250 [{p['lo']:+.3f}, {p['hi']:+.3f}] | +0.500 [{m['lo']:+.3f}, "
                         f"{m['hi']:+.3f}] | +0.167 [{k['lo']:+.3f}, {k['hi']:+.3f}] |")


def test_every_arm_is_also_compared_with_the_configs_baselines():
    from bapo.errors import ConfigError
    from bapo.studies.run import versus_baselines

    cfg = StudyConfig(methods=["dpo", "bapo", "replay"], baselines=["replay"])
    cfg.validate()
    cells = [Cell("u", "flip:1", m, 0) for m in cfg.methods]
    scores = {"base": {"arc": {"acc_norm": [0, 0]}}, "u__dpo__s0": {"arc": {"acc_norm": [1, 0]}},
              "u__bapo__s0": {"arc": {"acc_norm": [1, 1]}}, "u__replay__s0": {"arc": {"acc_norm": [0, 1]}}}
    ev = SimpleNamespace(records=[SimpleNamespace(task="arc", kind="mc")], item_scores=scores)
    found = {(c.method, c.baseline): c.delta for c in versus_baselines(cfg, cells, ev)}
    assert set(found) == {(m, "base") for m in cfg.methods} | {("bapo", "dpo"), ("replay", "dpo"),
                                                                ("dpo", "replay"), ("bapo", "replay")}
    assert found["bapo", "replay"] == pytest.approx(0.5) and found["dpo", "replay"] == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="baselines: 'kl' is not one of the study's methods"):
        StudyConfig(methods=["dpo", "bapo"], baselines=["kl"]).validate()


def test_aggregate_combines_seeds():
    rows = [SimpleNamespace(arm="dpo", user="u", heterogeneity=0.5, m=v, m_stderr=0.1) for v in (1.0, 3.0)]
    (h, mean, err), = aggregate(rows, "m")["dpo"]
    assert (h, mean) == (0.5, 2.0)
    assert err == pytest.approx(((2.0 + 0.01) / 2) ** 0.5)


def test_study_rows_show_the_generative_measures_each_refusal_task_alone(tmp_path):
    from bapo.evaluation.records import Record
    from bapo.studies.figures import study_figures
    from bapo.studies.tables import markdown, study_rows

    cell = Cell("u", "flip:1", "dpo", 0)

    def rec(task, kind, metric, n, value, delta, se):
        return Record(cell.name, "a", 1.0, "dpo", task, kind, metric, n, value, 0.01, delta, se, delta - 2 * se,
                      delta + 2 * se)

    records = [rec("personal:u", "personal", "reward_acc", 64, 0.7, 0.2, 0.05),
               rec("personal:u", "personal", "ll_acc", 64, 0.6, 0.1, 0.05),
               rec("arc_easy", "mc", "acc_norm", 100, 0.5, 0.01, 0.01), rec("piqa", "mc", "acc_norm", 300, 0.6, 0.03, 0.01),
               rec("triviaqa", "qa", "acc", 1000, 0.04, -0.06, 0.008), rec("triviaqa", "qa", "unjudged", 1000, 0, 0, 0),
               rec("refusal_harmful", "refusal", "refusal", 200, 0.3, -0.10, 0.03),
               rec("refusal_harmless", "refusal", "refusal", 200, 0.05, +0.02, 0.01)]
    users = {"u": {"heterogeneity": {"value": 1.0, "stderr": 0.0, "judge": "labels"}}}
    row, = study_rows([cell], users, records)
    assert row.knowledge_delta == pytest.approx((100 * 0.01 + 300 * 0.03) / 400)  # item-weighted pool
    assert (row.generative_knowledge_delta, row.generative_knowledge_delta_stderr) == (-0.06, 0.008)
    # the two refusal tasks share a kind and a metric and are never pooled
    assert (row.refusal_harmful_delta, row.refusal_harmless_delta) == (-0.10, 0.02)
    assert row.alignment_delta is None and row.drift_delta is None
    d = row.to_dict()
    assert d["triviaqa_delta"] == -0.06 and d["refusal_harmful_delta"] == -0.10
    md = markdown([row])
    assert "TriviaQA Δ acc" in md and "refusal of harmful Δ" in md and "-0.060 ± 0.008" in md
    header, rule, line = md.splitlines()[:3]
    assert header.count("|") == rule.count("|") == line.count("|")
    without = markdown([replace(row, generative_knowledge_delta=None, refusal_harmful_delta=None,
                                refusal_harmless_delta=None)])
    assert "TriviaQA" not in without and "refusal" not in without  # only the measures a study ran
    figures = study_figures([row], tmp_path)
    assert all(f.stat().st_size > 0 for f in figures)
    assert "tradeoff_margin.png" not in {f.name for f in figures}  # records without the margin: that figure is not drawn


class CannedReference:
    """Greedy: long answers when told to be thorough, short when told to be brief, medium otherwise. Sampled: one
    answer of a single word, then answers of 60 words (so samples can be the extremes)."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, cfg):
        self.calls.append(cfg)
        if cfg.do_sample:
            return [[" ".join(["word"] * (1 if k == 0 else 60)) + "." for k in range(cfg.num_responses)]
                    for _ in prompts]
        out = []
        for p in prompts:
            system = p[0]["content"] if p[0]["role"] == "system" else ""
            n = 40 if "thoroughly" in system else 3 if "short" in system else 12
            out.append([" ".join(["word"] * n) + "."])
        return out


def test_simulated_user_labels_the_base_models_candidates_by_its_profile(tmp_path):
    from bapo.data.profiles import SIMULATED

    src = Sources(data_dir=str(mini_data(tmp_path / "data")))
    ref = CannedReference()
    user = build_user("psoups:concise", src, 3, reference=ref, candidate_samples=0)
    assert len(user.pairs) == 3 and user.general_agree is None and not any(c.do_sample for c in ref.calls)
    for p in user.pairs:
        assert len(p.chosen.split()) == 3 and len(p.rejected.split()) == 40
        assert SIMULATED["concise"](p.chosen) > SIMULATED["concise"](p.rejected)
        assert p.messages[0]["role"] == "user"  # the steering system prompt is not part of the user's pair
    detailed = build_user("psoups:detailed", src, 3, reference=CannedReference(), candidate_samples=0)
    assert all(len(p.chosen.split()) == 40 for p in detailed.pairs)

    # with samples, the sampled answers (seeded, cached like any generation) join the candidates
    ref = CannedReference()
    sampled = build_user("psoups:concise", src, 3, seed=5, reference=ref, candidate_samples=2)
    assert [(c.do_sample, c.num_responses, c.seed) for c in ref.calls] == [(False, 1, 0), (True, 2, 5)]
    assert all(len(p.chosen.split()) == 1 and len(p.rejected.split()) == 60 for p in sampled.pairs)


def test_cli_study_dry_run_and_bad_user(tmp_path, tiny_model):
    import subprocess
    import sys

    data = mini_data(tmp_path / "data")
    cmd = [sys.executable, "-m", "bapo.cli", "study", "--model", tiny_model, "--data-dir", str(data),
           "--out", str(tmp_path / "s"), "--users", "flip:0,flip:1", "--dry-run"]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "study plan: 4 adapters" in ok.stdout and "estimated run time" in ok.stdout
    sweep = subprocess.run(cmd[:-3] + ["--flip-rate", "0,0.25,1", "--dry-run"], capture_output=True, text=True)
    assert sweep.returncode == 0 and "study plan: 6 adapters" in sweep.stdout and "flip:0.25" in sweep.stdout
    bad = subprocess.run(cmd[:-3] + ["--users", "flip:2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "flip:2" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_reward_model_judge_counts_pairs_the_reward_model_ranks_the_other_way(tmp_path, tiny_model):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from bapo.runtime.models import reward_of

    tok = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                                    num_hidden_layers=1, num_attention_heads=2, num_labels=1,
                                                    pad_token_id=tok.pad_token_id)).eval()
    src = Sources(data_dir=str(mini_data(tmp_path / "data")))
    user = build_user("flip:0.5", src, 9)
    h = heterogeneity(user, "auto", reward=(rm, tok))
    by_hand = [float(reward_of(rm, tok, p.messages, p.chosen) < reward_of(rm, tok, p.messages, p.rejected))
               for p in user.pairs]
    assert h.judge == "reward model" and h.n == 9  # an odd count: a sign error cannot hide at one half
    assert h.value == pytest.approx(sum(by_hand) / 9)
    assert heterogeneity(user, "labels").value == pytest.approx(4 / 9)  # the data's own labels, when asked for


def test_balance_study_builds_each_strategys_pairs_at_the_budget(study_cfg, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": f"Describe item number {i} briefly."}
                                                       for i in range(30)])
    study_cfg.sources.prompts = str(prompts)
    study_cfg.users, study_cfg.methods, study_cfg.balance = ["dsp:academy", "psoups:concise"], ["dpo"], [
        "none", "uniform", "bpo"]
    study_cfg.pair_budget, study_cfg.balance_responses, study_cfg.pairs_per_user = 4, 4, 0
    study_cfg.judge, study_cfg.drift_prompts = "base", 0
    result = run_study(study_cfg)
    out = Path(study_cfg.out)
    assert [c.name for c in result.cells] == [f"{u}__dpo+{b}__s0" for u in ("dsp-academy", "psoups-concise")
                                              for b in ("none", "uniform", "bpo")]
    for c in result.cells:
        kept = (out / "balance" / f"{c.user}__{c.balance}__s0" / "pairs.jsonl").read_text().splitlines()
        assert 0 < len(kept) <= 4
        assert (out / "cells" / c.name / "train.jsonl").read_text().splitlines() == kept
    held = {json.loads(x)["prompt"] for x in (out / "users/psoups-concise.holdout.jsonl").read_text().splitlines()}
    pool = {json.loads(x)["prompt"] for x in (out / "users/psoups-concise.prompts.jsonl").read_text().splitlines()}
    assert held and not held & pool  # never trained on a held-out prompt
    rows = {(r.user, r.balance): r for r in result.rows}
    assert rows["psoups:concise", "bpo"].personal_profile_score is not None  # what the simulated user would see
    assert rows["dsp:academy", "none"].personal_profile_score is None
    table = (out / "table.md").read_text()
    assert "dpo+bpo − dpo+none" in table and "dpo+bpo − dpo+uniform" in table and "profile score" in table
    report = json.loads((out / "balance" / "psoups-concise__bpo__s0" / "report.json").read_text())
    assert rows["psoups:concise", "bpo"].balance_seconds == report["seconds"]  # what building the pairs cost
    assert "building pairs, s" in table and "| dpo+bpo | 2 | " in table
    # What building the pairs needs from nothing: labels write no answers; bpo embeds the whole pool and takes the
    # gradient of at least every pair it keeps.
    assert rows["dsp:academy", "none"].balance_work.answers == 0
    none = json.loads((out / "balance" / "psoups-concise__none__s0" / "report.json").read_text())
    assert rows["psoups:concise", "none"].balance_work.answers == 4 * none["prompts_examined"] >= 4 * 4
    bpo = rows["psoups:concise", "bpo"].balance_work
    assert bpo.embedded == len(pool) and bpo.gradients >= report["kept_pairs"] and bpo.answers > 0
    uniform = rows["psoups:concise", "uniform"].balance_work
    assert uniform.embedded == 0 == uniform.gradients
    assert "answers written" in table and "pair gradients" in table
    assert "balance_gradients" in (out / "table.csv").read_text().splitlines()[0]
    assert set(aggregate(result.rows, "personal_reward_acc")) == {"dpo+none", "dpo+uniform", "dpo+bpo"}  # not pooled
    assert (out / "figures" / "balance.png").stat().st_size > 0


def test_workers_give_the_numbers_of_one_process(study_cfg, tmp_path, monkeypatch):
    """Models scored in 2 processes (1 thread each) against everything in this process: the same adapters (cells
    train in this process either way) and the same per-item scores; each worker's output in OUT/logs."""
    study_cfg.frontier_scales = [0.5]
    study_cfg.users = ["flip:1"]
    one = run_study(study_cfg)
    monkeypatch.setenv("BAPO_CACHE_DIR", str(tmp_path / "cache-workers"))  # nothing computed by the first run
    two = run_study(replace(study_cfg, out=str(tmp_path / "study-workers"), workers=2))
    for a, b in zip(one.rows, two.rows):
        assert (Path(a.adapter) / "adapter_model.safetensors").read_bytes() == \
            (Path(b.adapter) / "adapter_model.safetensors").read_bytes()
    for folder in ("eval", "eval_frontier"):
        mine = json.loads((Path(study_cfg.out) / folder / "item_scores.json").read_text())
        theirs = json.loads((tmp_path / "study-workers" / folder / "item_scores.json").read_text())
        assert mine == theirs and len(mine) == (3 if folder == "eval" else 2)  # base, dpo, bapo | base, dpo@0.5
    same = {"adapter": "", "train_seconds": None}  # where they are and how long training took differ, nothing else
    assert [r.to_dict() | same for r in one.rows] == [r.to_dict() | same for r in two.rows]
    logs = list((tmp_path / "study-workers" / "logs").glob("worker-*.log"))
    # pools only for what is not cached: base and DPO (2), DPO@0.5 (1), BAPO (1); the second frontier pass none
    assert 2 <= len(logs) <= 4


def test_with_workers_this_process_reads_their_answers_and_generates_none(study_cfg, monkeypatch):
    """On a CPU, answers are cached under the thread count that made them (bapo.evaluation.tasks.generation_key):
    the study reads its workers' answers at their count, so this process generates no answer of its own (nor does
    the dry run count them as left)."""
    from bapo.evaluation import metrics
    from bapo.studies.estimate import work_left

    def no(*a, **k):
        raise AssertionError("answers generated in the study's own process, not by its workers")

    study_cfg.users, study_cfg.refusal_items = ["flip:1"], 2
    monkeypatch.setattr(metrics, "refusal_scores", no)  # the spawned workers import their own, untouched
    result = run_study(replace(study_cfg, workers=2))
    assert {r.refusal_harmful_delta is not None for r in result.rows} == {True}
    cfg = replace(study_cfg, workers=2)
    assert work_left(cfg, plan(cfg), Path(cfg.out) / "suite.yaml", Path(cfg.out)).models == 0


def test_workers_raise_a_jobs_error(tmp_path):
    from bapo.errors import ConfigError
    from bapo.runtime.workers import run_jobs

    with pytest.raises(ConfigError, match="bad job 2"):
        run_jobs(_fails_on_two, [(1,), (2,), (3,)], 2, tmp_path / "logs", "jobs", show=False)
    assert run_jobs(_square, [(1,), (2,), (3,)], 2, tmp_path / "logs", "jobs", show=False) == [1, 4, 9]


def _fails_on_two(i: int) -> int:
    from bapo.errors import ConfigError

    if i == 2:
        raise ConfigError(f"bad job {i}")
    return i


def _square(i: int) -> int:
    return i * i


def test_a_study_under_torchrun_gives_the_table_of_one_process(study_cfg, tmp_path):
    """Two processes (torchrun, gloo on CPU) run a whole study: users built once, every cell trained by both (the same
    global batch), the models split between them for scoring, and one table, the single process's."""
    import subprocess
    import sys

    from bapo.options import dump_yaml

    study_cfg.users = ["flip:1"]
    tables = {}
    for name, launcher, batch in (("one", [sys.executable], 4),
                                  ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                           "--nproc_per_node", "2"], 2)):
        cfg = replace(study_cfg, out=str(tmp_path / name), train=replace(study_cfg.train, batch_size=batch))
        (tmp_path / f"{name}.yaml").write_text(dump_yaml(cfg))
        proc = subprocess.run([*launcher, "-m", "bapo.cli", "study", "--config", str(tmp_path / f"{name}.yaml")],
                              capture_output=True, text=True, timeout=600,
                              env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                   "BAPO_CACHE_DIR": str(tmp_path / f"cache_{name}")})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("study: ") == 1  # one process wrote and printed the outputs
        tables[name] = json.loads((tmp_path / name / "study.json").read_text())
    one, two = tables["one"], tables["two"]
    assert [(r["user"], r["method"]) for r in one["rows"]] == [(r["user"], r["method"]) for r in two["rows"]] == \
        [("flip:1", "dpo"), ("flip:1", "bapo")]
    # the adapters agree to float rounding (gloo sums gradients in another order), so every measure nearly does
    for r1, r2 in zip(one["rows"], two["rows"]):
        for k, v in r1.items():
            if isinstance(v, float) and not k.endswith("seconds"):
                assert r2[k] == pytest.approx(v, rel=1e-3, abs=1e-3), k
    assert [(c["method"], c["baseline"], c["measure"], c["metric"]) for c in one["contrasts"]] == \
        [(c["method"], c["baseline"], c["measure"], c["metric"]) for c in two["contrasts"]]
    assert sorted(p.name for p in (tmp_path / "two" / "users").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one" / "users").iterdir())


def test_some_arms_may_have_more_seeds_than_the_rest(study_cfg):
    from bapo.errors import ConfigError

    study_cfg.users, study_cfg.methods, study_cfg.seeds = ["flip:0.5"], ["dpo", "bapo", "bapo:0.1"], 2
    study_cfg.more_seeds = ["dpo=4", "bapo=3"]
    study_cfg.validate()
    assert [(c.method, c.seed) for c in plan(study_cfg)] == [("dpo", 0), ("dpo", 1), ("dpo", 2), ("dpo", 3),
                                                              ("bapo", 0), ("bapo", 1), ("bapo", 2),
                                                              ("bapo:0.1", 0), ("bapo:0.1", 1)]
    for bad in (["kl=5"], ["dpo=x"], ["dpo=1"], ["dpo"]):
        with pytest.raises(ConfigError, match="more_seeds: "):
            replace(study_cfg, more_seeds=bad).validate()


def test_a_contrast_of_one_seed_has_an_interval_over_items_only():
    cells = [Cell("u", "flip:1", m, 0) for m in ("dpo", "bapo")]
    records = [SimpleNamespace(task="arc", kind="mc")]
    scores = {"u__dpo__s0": {"arc": {"acc_norm": [0, 0, 1, 0]}}, "u__bapo__s0": {"arc": {"acc_norm": [1, 1, 1, 0]}}}
    k, = contrasts(cells, records, scores, "dpo")
    # differences [1, 1, 0, 0]: sd 0.5774 over 4 items, a normal interval; the seeds' spread is unknown
    assert k.seed_se is None and k.delta == 0.5 and k.stderr == pytest.approx(0.5774 / 2, abs=1e-4)
    assert k.lo == pytest.approx(0.5 - 1.96 * 0.5774 / 2, abs=1e-3) and not k.clear  # [-0.066, +1.066]


def test_so_far_reads_the_scored_adapters_and_trains_or_scores_nothing(study_cfg, monkeypatch):
    from bapo.errors import ConfigError

    study_cfg.users = ["flip:1"]
    with pytest.raises(ConfigError, match="--so-far: .* no scored adapter yet"):
        run_study(study_cfg, so_far=True)
    run_study(study_cfg)
    study_cfg.methods = ["dpo", "bapo", "bapo:0.1"]  # an arm added: its cell is neither trained nor scored
    monkeypatch.setattr("bapo.studies.run.train_cell", lambda *a: pytest.fail("--so-far trained a cell"))
    monkeypatch.setattr("bapo.runtime.store.Store.put_eval", lambda *a: pytest.fail("--so-far scored a model"))
    res = run_study(study_cfg, so_far=True)
    assert [r.method for r in res.rows] == ["dpo", "bapo"]
    assert not (Path(study_cfg.out) / "cells" / "flip-1__bapo-0.1__s0").exists()
    table = (Path(study_cfg.out) / "table.md").read_text()
    assert "| bapo |" in table and "the 2 of the study's 3 adapters whose every score was cached" in table
    assert json.loads((Path(study_cfg.out) / "study.json").read_text())["planned"] == 3


def test_so_far_leaves_out_an_adapter_missing_any_score_its_frontier_included(study_cfg, tmp_path, monkeypatch):
    from bapo.studies import estimate

    out = tmp_path / "s"
    cells = [Cell("u", "flip:1", m, 0) for m in ("dpo", "bapo", "kl")]
    for c in cells[:2] + [Cell("u", "flip:1", "dpo", 1)]:
        (out / "cells" / c.name).mkdir(parents=True)
        (out / "cells" / c.name / "run.json").write_text("{}")
    cells.append(Cell("u", "flip:1", "dpo", 1))
    left = {"base": False}

    def unscored_labels(cfg, done, suite, out_):
        assert [c.name for c in done] == ["u__dpo__s0", "u__bapo__s0", "u__dpo__s1"]  # kl is not trained
        return (["base"] if left["base"] else []) + ["u__bapo__s0"], ["u__dpo__s1@0.5"]

    monkeypatch.setattr(estimate, "unscored_labels", unscored_labels)
    assert [c.name for c in estimate.scored_cells(study_cfg, cells, tmp_path / "suite.yaml", out)] == ["u__dpo__s0"]
    left["base"] = True
    assert estimate.scored_cells(study_cfg, cells, tmp_path / "suite.yaml", out) == []


def test_the_trend_figure_fits_each_arm_s_adapters_by_least_squares(tmp_path):
    from bapo.studies.figures import trend_figure, trend_line

    # y = 1 - 2x exactly at three heterogeneities: slope -2, an interval of width 0; two points: no line
    label, (xs, ys) = trend_line("dpo", [0.0, 0.5, 1.0, 1.0], [1.0, 0.0, -1.0, -1.0])
    assert label == "dpo: slope -2.000 [-2.000, -2.000]" and xs == [0.0, 1.0] and ys == pytest.approx([1.0, -1.0])
    assert trend_line("bapo", [0.0, 1.0], [0.0, 1.0]) == ("bapo", None)
    assert trend_line("bapo", [0.5, 0.5, 0.5], [0.0, 1.0, 2.0]) == ("bapo", None)  # one heterogeneity
    # a slope with scatter: (0, 0), (0, 2), (1, 1), (1, 3): slope 1, residuals +-1, se sqrt(4/2/1), t(2) = 4.303
    label, _ = trend_line("dpo", [0, 0, 1, 1], [0, 2, 1, 3])
    assert label == f"dpo: slope +1.000 [{1 - 4.303 * 2 ** 0.5:+.3f}, {1 + 4.303 * 2 ** 0.5:+.3f}]"
    # an interval given (the reading's, over seeds and items) replaces the residuals' and says so
    label, _ = trend_line("dpo", [0, 0, 1, 1], [0, 2, 1, 3], (-9.0, 11.0))
    assert label == "dpo: slope +1.000 [-9.000, +11.000] seeds+items"
    path = trend_figure({"knowledge_delta": {"dpo": [(0.0, 0.1), (0.5, None), (1.0, -0.2), (1.0, -0.1)],
                                             "bapo": []}}, {"knowledge_delta": "knowledge"}, tmp_path / "t.png")
    assert path.stat().st_size > 0
