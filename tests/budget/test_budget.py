"""The forgetting budget: the spec, the probe at each scale, the largest scale within the budget built into a
standard PEFT adapter, per user, and in ``bapo serve``'s model list."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bapo
from bapo.budget.probe import ProbeRow, choose
from bapo.data.config import DataConfig
from bapo.errors import ConfigError
from bapo.io import write_json
from bapo.runtime.adapters import applied
from bapo.runtime.config import BudgetSettings
from bapo.runtime.models import load_model
from bapo.training.config import TrainConfig
from tests.helpers import make_pairs, write_jsonl
from tests.test_cli import bapo as bapo_cli


def config(tmp_path, tiny_model, spec, out="out", **kw) -> TrainConfig:
    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        write_jsonl(data, make_pairs(12, 2))
    cfg = TrainConfig(model=tiny_model, out=str(tmp_path / out), data=DataConfig(path=str(data), holdout=0.2),
                      max_steps=6, batch_size=2, lr=2e-2, save_steps=100, **kw)
    cfg.base.max_new_tokens = 6
    cfg.budget.spec = spec
    cfg.budget.drift_items = 8
    return cfg


BAD = [("knowledge:0.1", "forgetting_budget: unknown measure 'knowledge'; choose from drift, qa, qa_share, refusal"),
       ("drift:-0.1", "forgetting_budget: drift: the limit must be a finite number >= 0, not -0.1"),
       ("drift", "forgetting_budget: 'drift' is not MEASURE:LIMIT (for example drift:0.1)"),
       ("drift:lots", "forgetting_budget: drift: 'lots' is not a number"),
       ("drift:0.1,drift:0.2", "forgetting_budget: drift is given twice"),
       ("qa:0.02", "forgetting_budget: qa needs its probe set: give it with --budget-qa-data"),
       ("qa_share:0.4", "forgetting_budget: qa_share needs its probe set: give it with --budget-qa-data")]


def test_a_bad_budget_is_one_line_exit_2_before_any_model_work(tmp_path):
    for spec, message in BAD:  # each message as validation words it (the command prints it as the line below)
        with pytest.raises(ConfigError) as e:
            TrainConfig(out="x", data=DataConfig(path="d.jsonl"), budget=BudgetSettings(spec=spec)).validate()
        assert str(e.value) == message
    data = write_jsonl(tmp_path / "d.jsonl", make_pairs(4, 1))
    r = bapo_cli("train", "--data", data, "--out", tmp_path / "out", "--model", tmp_path / "no-such-model",
                 "--forgetting-budget", BAD[0][0])
    assert r.returncode == 2 and r.stderr.strip() == f"error: {BAD[0][1]}"  # the spec, not the missing model
    assert not (tmp_path / "out").exists()


def test_the_largest_scale_within_every_limit_is_chosen():
    rows = [ProbeRow(1.0, {"drift": 0.3}, False), ProbeRow(0.75, {"drift": 0.05}, True),
            ProbeRow(0.5, {"drift": 0.2}, False), ProbeRow(0.0, {"drift": 0.0}, True)]
    assert choose(rows) == 0.75
    assert choose([ProbeRow(1.0, {"drift": 0.3}, False), ProbeRow(0.0, {"drift": 0.0}, True)]) == 0.0
    assert BudgetSettings(spec=" drift:0.1, refusal:0.05 ").limits() == {"drift": 0.1, "refusal": 0.05}
    with pytest.raises(ConfigError, match="scale"):
        BudgetSettings(spec="drift:0.1", scales=[1.5, 0.0]).validate()


@pytest.mark.parametrize("limits,items,unchecked", [
    ({"drift": 0.1}, {"drift": 10}, None),
    ({"drift": 0.1, "refusal": 0.05}, {"drift": 40, "refusal": 50}, None),
    ({"refusal": 0.02}, {"refusal": 50}, "the refusal probe is not validated"),  # a budget below the checked range
    ({"refusal": 0.1}, {"refusal": 25}, "the refusal probe is not validated"),  # fewer requests than were checked
    ({"drift": 0.1, "qa": 0.05}, {"drift": 10, "qa": 300}, "the qa probe is not validated"),  # qa never held
    # drift below its checked budgets, and qa
    ({"drift": 0.01, "qa": 0.05}, {"drift": 10, "qa": 300}, "the drift and qa probes are not validated"),
    ({"qa_share": 0.4}, {"qa_share": 300}, None),  # the share of what the base model knew: validated from 300, 0.4
    ({"qa_share": 0.2}, {"qa_share": 300}, "the qa_share probe is not validated"),
    ({"qa_share": 0.5}, {"qa_share": 100}, "the qa_share probe is not validated"),
])
def test_the_user_is_told_which_probes_were_not_validated_at_their_size_and_budget(tmp_path, limits, items, unchecked):
    from bapo.budget.run import BudgetChoice, describe

    rows = [ProbeRow(1.0, {m: 0.0 for m in limits}, True)]
    write_json(tmp_path / "run.json", {"forgetting_budget": BudgetChoice(limits, rows, 1.0, 3.0, items).record([1.0])})
    said = " ".join(str(x) for x in describe(tmp_path))
    if unchecked is None:
        assert "not validated" not in said
    else:
        assert unchecked in said


def test_qa_share_is_the_share_of_what_the_base_model_knew_that_was_lost(monkeypatch):
    from bapo.budget.probe import Prober, share_lost

    # the base model knew questions 0 and 1 of four; losing 0 and gaining 3 is a net loss of nothing
    assert share_lost([1.0, 0.0, 0.0, -1.0], [1.0, 1.0, 0.0, 0.0]) == 0.0
    assert share_lost([1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]) == 0.5
    assert share_lost([0.0, 0.0, -1.0], [0.0, 0.0, 0.0]) == 0.0  # it knew none: nothing to lose
    # qa and qa_share read one probe, scored once: a quarter of all questions is half of what the base model knew
    prober = Prober.__new__(Prober)
    prober.limits, prober.base_items = {"qa": 0.1, "qa_share": 0.4}, {"qa": [1.0, 1.0, 0.0, 0.0]}
    prober.tasks = {"qa": type("T", (), {"items": [0] * 4})()}
    scored = []
    monkeypatch.setattr(Prober, "scores", lambda self, model, p, scorer=None: scored.append(p) or [0.0, 1.0, 0.0, 0.0])
    assert prober.losses(None) == {"qa": 0.25, "qa_share": 0.5} and scored == ["qa"]
    assert prober.sizes() == {"qa": 4, "qa_share": 4}


def test_the_base_models_probe_scores_are_cached_across_probers(tmp_path, tiny_model, monkeypatch):
    from bapo.budget.probe import Prober
    from bapo.runtime.reference import open_reference

    ref = open_reference(tiny_model, 128, 64, str(tmp_path / "c"), "cpu", "float32")
    first = Prober(ref, BudgetSettings(spec="drift:0.1", drift_items=5))
    monkeypatch.setattr(Prober, "scores", lambda *a: pytest.fail("the base model was scored again"))
    again = Prober(ref, BudgetSettings(spec="drift:0.1", drift_items=5))
    assert again.base_items == first.base_items and len(first.base_items["drift"]) == 5
    monkeypatch.undo()
    other = Prober(ref, BudgetSettings(spec="drift:0.1", drift_items=4))  # another probe set: scored anew
    assert len(other.base_items["drift"]) == 4


def test_the_chosen_scale_is_built_into_a_standard_adapter_and_recorded(tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)])
    harmful = write_jsonl(tmp_path / "harm.jsonl", [{"prompt": f"How do I pick lock number {i}?"} for i in range(6)])
    free = config(tmp_path, tiny_model, "drift:1000,qa:1,qa_share:1,refusal:1", out="free")  # anything goes: scale 1
    free.budget.qa_path, free.budget.refusal_path = str(qa), str(harmful)
    res = bapo.train(free)
    rec = json.loads((res.out / "run.json").read_text())["forgetting_budget"]
    assert res.budget_scale == rec["scale"] == 1.0
    assert [r["scale"] for r in rec["probe"]] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert set(rec["probe"][0]["losses"]) == {"drift", "qa", "qa_share", "refusal"}
    drift = {r["scale"]: r["losses"]["drift"] for r in rec["probe"]}
    assert drift[1.0] > 0 and drift[0.0] == 0.0  # the trained adapter moved away from the reference's answers
    from bapo.budget.run import describe

    assert rec["items"] == {"drift": 8, "qa": 6, "qa_share": 6, "refusal": 6}  # the probe sizes: what was validated
    said = " ".join(str(x) for x in describe(res.out))
    # the user is told what the budget can promise: no probe this small was validated
    assert "the drift, qa, qa_share and refusal probes are not validated" in said

    # a limit between the losses of two scales: the largest scale within it is built in
    limit = (drift[0.5] + drift[0.75]) / 2 if drift[0.5] < drift[0.75] else drift[0.25]
    tight = config(tmp_path, tiny_model, f"drift:{limit}", out="tight")
    res = bapo.train(tight)
    rec = json.loads((res.out / "run.json").read_text())["forgetting_budget"]
    want = max(r["scale"] for r in rec["probe"] if r["losses"]["drift"] <= limit)
    assert res.budget_scale == rec["scale"] == want and 0 < want < 1
    trained, scaled = load_file(str(res.out / "as_trained" / "adapter_model.safetensors")), \
        load_file(str(res.out / "adapter_model.safetensors"))
    for k, v in trained.items():
        assert torch.equal(scaled[k], v * want if ".lora_B." in k else v), k
    ids = torch.tensor([[3, 17, 29, 41, 5]])
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(res.out)).eval()
    with torch.no_grad(), applied(load_model(tiny_model, "cpu", "float32"), res.out / "as_trained", want,
                                  merge=False) as m:
        assert torch.allclose(plain(input_ids=ids).logits, m(input_ids=ids).logits, atol=1e-5)
    assert json.loads((res.out / "bapo_export.json").read_text())["budget"] == {"drift": limit}


def test_only_the_base_model_within_the_budget_warns_that_nothing_survives(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "d.jsonl", make_pairs(12, 2))
    r = bapo_cli("train", "--data", data, "--out", tmp_path / "out", "--model", tiny_model, "--max-steps", "6",
                 "--batch-size", "2", "--lr", "0.02", "--base-max-new-tokens", "6", "--forgetting-budget", "drift:0",
                 "--budget-drift-items", "8", "--budget-scales", "1,0")
    assert r.returncode == 0, r.stderr
    assert "nothing of the user's taste survives" in r.stdout and "forgetting budget: drift <= 0" in r.stdout
    rec = json.loads((tmp_path / "out" / "run.json").read_text())["forgetting_budget"]
    assert rec["scale"] == 0.0 and [x["within"] for x in rec["probe"]] == [False, True]
    assert all(not v.any() for k, v in load_file(str(tmp_path / "out" / "adapter_model.safetensors")).items()
               if ".lora_B." in k)


def test_per_user_budgets_land_in_users_csv(tmp_path, tiny_model):
    rows = make_pairs(8, 1, user="ann") + [{**r, "prompt": r["prompt"] + " (b)"} for r in make_pairs(8, 1, user="bo")]
    cfg = config(tmp_path, tiny_model, "drift:1000", per_user=True)
    cfg.data.path = str(write_jsonl(tmp_path / "users.jsonl", rows))
    from bapo.budget.run import train_each_user

    done = train_each_user(cfg)
    assert [u.budget_scale for u in done.users] == [1.0, 1.0]
    table = list(csv.DictReader(open(Path(cfg.out) / "users.csv")))
    assert [(r["user"], r["budget_scale"]) for r in table] == [("ann", "1.0"), ("bo", "1.0")]
    again = train_each_user(cfg)  # a rerun reads the choices back
    assert [u.budget_scale for u in again.users] == [1.0, 1.0]


def test_an_adapter_trained_again_into_its_folder_is_the_one_probed(tmp_path, tiny_model):
    """OUT/as_trained keeps the adapter as trained while OUT holds it scaled; trained again into OUT (``--resume``
    with other settings), OUT's A matrices differ from the copy's, and the new adapter replaces the stale copy."""
    from types import SimpleNamespace

    from bapo.budget.run import AS_TRAINED, apply_budget, same_training
    from bapo.runtime.export import write_scaled
    from tests.helpers import make_adapter

    out = make_adapter(tiny_model, tmp_path / "out", seed=0)
    probed = []
    prober = SimpleNamespace(limits={"drift": 1.0}, sizes=lambda: {"drift": 10},
                             table=lambda path, served_as="": probed.append(path) or [
        ProbeRow(1.0, {"drift": 2.0}, False), ProbeRow(0.5, {"drift": 0.5}, True), ProbeRow(0.0, {"drift": 0.0}, True)])
    first = load_file(str(out / "adapter_model.safetensors"))
    assert apply_budget(out, prober, [1.0, 0.5, 0.0]).scale == 0.5
    assert same_training(out / AS_TRAINED, out)  # OUT is scaled (B halved); the same training all the same
    write_scaled(out / AS_TRAINED, out, 0.25, {})  # as a kill half way through a later rescaling might leave it
    apply_budget(out, prober, [1.0, 0.5, 0.0])
    assert all(load_file(str(out / AS_TRAINED / "adapter_model.safetensors"))[k].equal(v) for k, v in first.items())

    make_adapter(tiny_model, tmp_path / "again", seed=1)  # a new training written over OUT's files
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (out / name).write_bytes((tmp_path / "again" / name).read_bytes())
    assert not same_training(out / AS_TRAINED, out)
    apply_budget(out, prober, [1.0, 0.5, 0.0])
    new = load_file(str(tmp_path / "again" / "adapter_model.safetensors"))
    assert all(load_file(str(out / AS_TRAINED / "adapter_model.safetensors"))[k].equal(v) for k, v in new.items())
    assert probed == [str(out / AS_TRAINED)] * 3


def test_the_budget_chooses_among_methods_the_largest_held_out_margin_within_it(tmp_path, tiny_model):
    from bapo.budget.run import CANDIDATES, held_out

    cfg = config(tmp_path, tiny_model, "drift:10")  # a budget every scale meets: the margins decide
    cfg.loss.method = "dpo,replay"
    result = bapo.train(cfg)
    out = Path(cfg.out)
    choice = json.loads((out / "run.json").read_text())["method_choice"]
    margins = {c["method"]: c["margin"] for c in choice["candidates"]}
    assert set(margins) == {"dpo", "replay"} and all(c["scale"] == 1.0 for c in choice["candidates"])
    winner = max(margins, key=margins.get)
    assert choice["chosen"] == winner and result.budget_scale == 1.0 and margins["dpo"] != margins["replay"]
    # OUT is the winner's adapter, as a standard PEFT folder, and the candidates' margins are what they score
    assert adapter_of(out) == adapter_of(out / CANDIDATES / winner)
    again = {c.method: c.margin for c in held_out(cfg, {m: out / CANDIDATES / m for m in margins})}
    assert again == pytest.approx(margins)
    # a rerun reads the trained candidates back instead of training them again
    first = (out / CANDIDATES / "dpo" / "adapter_model.safetensors").stat().st_mtime_ns
    bapo.train(cfg)
    assert (out / CANDIDATES / "dpo" / "adapter_model.safetensors").stat().st_mtime_ns == first
    with pytest.raises(ConfigError, match="several methods"):
        TrainConfig(out="x", data=DataConfig(path="d.jsonl")).for_method("dpo,bapo", "x").validate()


def test_a_candidate_may_carry_its_own_lambda(tmp_path, tiny_model):
    from bapo.budget.run import candidate_dir, describe
    from bapo.options import load_yaml

    cfg = config(tmp_path, tiny_model, "drift:10")
    cfg.loss.method, cfg.loss.anchor_lambda = "replay,replay:0.25", 2.0
    bapo.train(cfg)
    out = Path(cfg.out)
    choice = json.loads((out / "run.json").read_text())["method_choice"]
    assert [c["method"] for c in choice["candidates"]] == ["replay", "replay:0.25"]
    # each trained with its own weight, into a file-safe folder; the two are different adapters
    assert candidate_dir(out, "replay:0.25").name == "replay-l0.25"
    lams = {m: load_yaml(candidate_dir(out, m) / "config.yaml", TrainConfig).loss.anchor_lambda
            for m in ("replay", "replay:0.25")}
    assert lams == {"replay": 2.0, "replay:0.25": 0.25}
    assert adapter_of(candidate_dir(out, "replay")) != adapter_of(candidate_dir(out, "replay:0.25"))
    assert adapter_of(out) == adapter_of(candidate_dir(out, choice["chosen"]))
    assert len(describe(out)) > 2  # the table reads the chosen candidate's own folder
    # alone, a lambda of its own is --anchor-lambda; only a base-response method takes one
    with pytest.raises(ConfigError, match="alone, give --anchor-lambda 0.1 --method bapo"):
        TrainConfig(out="x", data=DataConfig(path="d.jsonl"), loss=replace(cfg.loss, method="bapo:0.1")).validate()
    with pytest.raises(ConfigError, match="loss.method: 'dpo:0.1': only a base-response method"):
        replace(cfg, loss=replace(cfg.loss, method="bapo,dpo:0.1")).validate()


def adapter_of(folder: Path) -> dict:
    return {k: v.tolist() for k, v in load_file(str(folder / "adapter_model.safetensors")).items()}


def test_per_user_the_budget_chooses_each_users_method(tmp_path, tiny_model):
    from bapo.budget.run import CANDIDATES, train_each_user

    rows = make_pairs(8, 1, user="ann") + [{**r, "prompt": r["prompt"] + " (b)"} for r in make_pairs(8, 1, user="bo")]
    cfg = config(tmp_path, tiny_model, "drift:1000", per_user=True)
    cfg.data.path = str(write_jsonl(tmp_path / "users.jsonl", rows))
    cfg.loss.method = "dpo,replay"
    done = train_each_user(cfg)
    out = Path(cfg.out)
    table = {r["user"]: r for r in csv.DictReader(open(out / "users.csv"))}
    for user in ("ann", "bo"):
        choice = json.loads((out / user / "run.json").read_text())["method_choice"]
        margins = {c["method"]: c["margin"] for c in choice["candidates"]}
        assert set(margins) == {"dpo", "replay"} and choice["chosen"] == max(margins, key=margins.get)
        assert table[user]["method"] == choice["chosen"]
        assert adapter_of(out / user) == adapter_of(out / CANDIDATES / choice["chosen"] / user)
    assert [u.method for u in done.users] == [table["ann"]["method"], table["bo"]["method"]]
