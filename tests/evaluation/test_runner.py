"""``bapo eval`` and ``bapo report`` end to end on a tiny model with two tiny adapters."""

import json
import math
import shutil
from dataclasses import replace

import pytest

import bapo
from bapo.data.config import DataConfig
from bapo.evaluation import tasks
from bapo.evaluation.config import EvalConfig
from bapo.io import as_dicts
from bapo.evaluation.report import write_report
from bapo.evaluation.runner import evaluate
from bapo.training.config import TrainConfig
from tests.helpers import make_pairs, write_jsonl


def run_eval(cfg: EvalConfig) -> list[dict]:
    """``bapo eval``'s records, as the dicts written to results.json."""
    return as_dicts(evaluate(cfg).records)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("cmp")
    import os

    os.environ["BAPO_CACHE_DIR"] = str(root / "cache")
    data = write_jsonl(root / "pairs.jsonl", make_pairs(10, 2, user="ann"))
    adapters = []
    for method in ("dpo", "bapo"):
        cfg = TrainConfig(model=tiny_model, out=str(root / method), data=DataConfig(path=str(data), holdout=0.3),
                          max_steps=3, batch_size=2, lr=2e-2, cache_dir=str(root / "cache"))
        cfg.loss.method = method
        cfg.base.max_new_tokens = 6
        adapters.append(str(bapo.train(cfg).out))
    mc = [{"query": f"Question: {i} + {i}?", "choices": [str(2 * i), str(i), "x"], "gold": 0} for i in range(8)]
    write_jsonl(root / "mc.jsonl", mc)
    hh = [{"chosen": f"\n\nHuman: hi {i}\n\nAssistant: hello {i}", "rejected": f"\n\nHuman: hi {i}\n\nAssistant: go away"}
          for i in range(6)]
    write_jsonl(root / "hh.jsonl", hh)
    write_jsonl(root / "prompts.jsonl", [{"prompt": f"Tell me about {w}."} for w in ("cats", "rain", "tea", "maps")])
    (root / "suite.yaml").write_text(
        "tasks:\n  - {name: mc, kind: mc, path: mc.jsonl}\n  - {name: hh, kind: general_pairs, path: hh.jsonl}\n"
        "  - {name: drift, kind: drift, path: prompts.jsonl, max_new_tokens: 6}\n")
    return root, adapters


@pytest.fixture(scope="module")
def evaluated(setup, tiny_model):
    root, adapters = setup
    return run_eval(EvalConfig(model=tiny_model, adapters=adapters, suite=str(root / "suite.yaml"),
                               out=str(root / "res"), adapter_scales=[0.0, 1.0], cache_dir=str(root / "cache")))


def test_eval_records_for_base_and_every_adapter_scale(setup, evaluated):
    root, _ = setup
    records = evaluated
    models = list(dict.fromkeys(r["model"] for r in records))
    assert models == ["base", "dpo@0", "dpo@1", "bapo@0", "bapo@1"]
    tasks = {r["task"] for r in records}
    assert tasks == {"mc", "hh", "drift", "personal:ann"}
    by = {(r["model"], r["task"], r["metric"]): r for r in records}
    assert by[("base", "mc", "acc")]["n"] == 8 and by[("base", "hh", "acc_norm")]["n"] == 6
    assert by[("base", "drift", "logp_change_per_token")]["value"] == pytest.approx(0.0, abs=1e-4)
    assert by[("base", "personal:ann", "reward_acc")]["value"] == 0.5  # the reference ties with itself
    for metric in ("acc", "acc_norm"):  # scale 0 is the base model: the same answers, a zero change
        r = by[("dpo@0", "mc", metric)]
        assert r["value"] == by[("base", "mc", metric)]["value"] and r["delta"] == 0.0
    moved = by[("dpo@1", "drift", "logp_change_per_token")]
    assert moved["value"] != 0.0 and moved["delta_lo"] <= moved["delta"] <= moved["delta_hi"]
    assert by[("dpo@1", "personal:ann", "margin")]["value"] > 0  # it learned something of the user
    assert by[("bapo@1", "personal:ann", "margin")]["method"] == "bapo"

    out = root / "res"
    saved = json.loads((out / "results.json").read_text())
    assert saved["records"] == json.loads(json.dumps(records)) and saved["machine"]["cpus"]
    items = json.loads((out / "item_scores.json").read_text())  # the per-item values behind every mean
    assert len(items["dpo@1"]["mc"]["acc_norm"]) == 8
    assert sum(items["dpo@1"]["mc"]["acc_norm"]) / 8 == pytest.approx(by[("dpo@1", "mc", "acc_norm")]["value"])
    assert (out / "results.csv").read_text().splitlines()[0].startswith("model,adapter,scale,method,task")
    md = (out / "results.md").read_text()
    assert "### mc (n = 8)" in md and "| dpo@1 | dpo |" in md


def test_a_rerun_comes_from_the_cache(setup, tiny_model, monkeypatch):
    root, adapters = setup
    first = run_eval(EvalConfig(model=tiny_model, adapters=adapters[:1], suite=str(root / "suite.yaml"),
                                out=str(root / "res2"), cache_dir=str(root / "cache")))

    def boom(*a, **k):
        raise AssertionError("scored again")

    for name, kind in list(tasks.KINDS.items()):
        monkeypatch.setitem(tasks.KINDS, name, replace(kind, score=boom))
    again = run_eval(EvalConfig(model=tiny_model, adapters=adapters[:1], suite=str(root / "suite.yaml"),
                                out=str(root / "res3"), cache_dir=str(root / "cache")))
    assert again == first


def test_bad_adapter_and_suite_errors(setup, tiny_model, tmp_path):
    root, _ = setup
    with pytest.raises(bapo.ConfigError, match="not an adapter directory"):
        run_eval(EvalConfig(model=tiny_model, adapters=[str(tmp_path)], out=str(tmp_path / "r")))
    with pytest.raises(bapo.ConfigError, match="no such file"):
        run_eval(EvalConfig(model=tiny_model, suite=str(tmp_path / "nope.yaml"), out=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


def test_report_writes_plots_and_a_self_contained_page(setup, evaluated, tmp_path):
    import matplotlib.image as mpimg

    root, _ = setup
    page = write_report(root / "res", tmp_path / "rep")
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert pngs == ["task_drift.png", "task_hh.png", "task_mc.png", "task_personal_ann.png", "tradeoff.png"]
    for p in pngs:
        img = mpimg.imread(tmp_path / "rep" / p)
        assert img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 0.01  # a real picture, not a blank
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 5 and "<table>" in text and "dpo@1" in text
    assert "src='http" not in text and 'src="http' not in text  # nothing fetched from elsewhere


def test_the_report_plots_personalization_that_separates_the_models_in_one_colour_per_method(
        setup, evaluated, tmp_path, monkeypatch):
    """The trade-off's x axis is the first of profile score, margin and ll_acc whose values differ between models
    (ll_acc of every adapter was 1.000 in the demo); a method has one colour in the bars and in the trade-off."""
    from matplotlib.axes import Axes

    from bapo.evaluation.report import load_results, personal_metric

    root, _ = setup
    _, records = load_results(root / "res")
    tied = [r for r in records if not (r.kind == "personal" and r.metric == "margin")]
    for r in tied:
        if r.kind == "personal" and r.metric == "ll_acc":
            r.value = 1.0  # every model the same, as in the demo
    assert personal_metric(tied) == "ll_acc"  # nothing separates them: the last resort
    assert personal_metric(records) == "margin"  # this user has no profile rule: the margin, which differs
    seen: dict[str, set] = {"bar": set(), "line": set()}
    bar, errorbar = Axes.bar, Axes.errorbar

    def spy_bar(self, x, height, *a, color=None, **kw):
        seen["bar"].update(color or [])
        return bar(self, x, height, *a, color=color, **kw)

    def spy_errorbar(self, x, y, *a, color=None, **kw):
        if color is not None:  # bar() draws its own error bars through errorbar, without a colour
            seen["line"].add(color)
        return errorbar(self, x, y, *a, color=color, **kw)

    monkeypatch.setattr(Axes, "bar", spy_bar)
    monkeypatch.setattr(Axes, "errorbar", spy_errorbar)
    write_report(root / "res", tmp_path / "rep")
    assert seen["line"] == {"C0", "C1"} and seen["bar"] == {"#888888", "C0", "C1"}  # dpo C0, bapo C1 everywhere


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed (apt-get install chromium)")
def test_report_page_renders_in_headless_chromium(setup, evaluated, tmp_path):
    from tests.helpers import screenshot

    root, _ = setup
    img = screenshot(write_report(root / "res", tmp_path / "rep"), tmp_path)
    assert img.shape[:2] == (1600, 1200)
    assert img[..., :3].std() > 0.05  # tables and plots drawn, not an empty white page


def test_reward_model_scores_generated_answers(setup, tiny_model, tmp_path):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    root, adapters = setup
    tok = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                    num_labels=1, pad_token_id=tok.pad_token_id))
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    (tmp_path / "s.yaml").write_text(f"tasks:\n  - {{name: rw, kind: reward, path: {root / 'prompts.jsonl'}, max_new_tokens: 5}}\n")
    records = run_eval(EvalConfig(model=tiny_model, adapters=adapters[:1], suite=str(tmp_path / "s.yaml"),
                                  out=str(tmp_path / "r"), reward_model=str(tmp_path / "rm"), cache_dir=str(root / "cache")))
    rw = {r["model"]: r for r in records if r["task"] == "rw"}
    assert set(rw) == {"base", "dpo"} and rw["base"]["n"] == 4 and rw["base"]["metric"] == "score"
    assert all(math.isfinite(r["value"]) for r in rw.values())
    with pytest.raises(bapo.ConfigError, match="needs --reward-model"):
        run_eval(EvalConfig(model=tiny_model, suite=str(tmp_path / "s.yaml"), out=str(tmp_path / "r2")))


def test_a_profile_user_also_gets_the_rule_score_of_generated_answers(setup, tiny_model, tmp_path, monkeypatch):
    from bapo.data import profiles

    root, adapters = setup
    seen = []
    monkeypatch.setitem(profiles.PROFILES, "ann", lambda text: seen.append(text) or float(len(text) % 2))
    records = run_eval(EvalConfig(model=tiny_model, adapters=adapters[:1], suite=str(root / "suite.yaml"),
                                  out=str(tmp_path / "r"), cache_dir=str(root / "cache")))
    prof = {r["model"]: r for r in records if r["metric"] == "profile_score"}
    assert set(prof) == {"base", "dpo"} and prof["base"]["n"] == 6  # 30% of 20 distinct prompts held out
    assert prof["base"]["value"] == sum(len(t) % 2 for t in seen[:6]) / 6


def test_bullet_rule():
    from bapo.data.profiles import PROFILES, is_bullet_list

    assert is_bullet_list("- a\n- b\n- c") and is_bullet_list("1. a\n2) b")
    assert not is_bullet_list("- only one") and not is_bullet_list("A paragraph.\nAnother line.\n- one bullet")
    assert PROFILES["bullet-lover"]("* x\n* y") == 1.0


def test_merged_adapter_scores_like_the_unmerged_one_and_leaves_the_base_exact(setup, tiny_model):
    from bapo.runtime.models import load_model

    _, adapters = setup
    for dtype in ("float32", "bfloat16"):  # bfloat16 keeps the adapter's branch unmerged: the same numbers again
        _merged_like_unmerged(load_model(tiny_model, "cpu", dtype), adapters[0])


def _merged_like_unmerged(model, adapter) -> None:
    import torch

    from bapo.core.logprobs import score
    from bapo.core.tokens import Encoded
    from bapo.runtime.adapters import applied

    before = {k: v.clone() for k, v in model.state_dict().items()}
    seqs = [Encoded((7, 8, 9), (10, 11, 12, 13)), Encoded((7, 8), (20, 21))]
    base_scores = score(model, seqs, 0)
    for scale in (1.0, 0.5):
        with applied(model, adapter, scale, merge=False) as m:
            plain = score(m, seqs, 0)
        with applied(model, adapter, scale, merge=True) as m:
            merged = score(m, seqs, 0)
        assert [n for _, n in merged] == [n for _, n in plain]
        assert [v for v, _ in merged] == pytest.approx([v for v, _ in plain], abs=1e-5)
        assert [v for v, _ in merged] != pytest.approx([v for v, _ in base_scores], abs=1e-3)  # the adapter acts
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert score(model, seqs, 0) == base_scores


def test_in_bfloat16_an_adapter_computes_in_bfloat16_and_scores_as_in_float32(setup, tiny_model):
    """Over a bfloat16 model the adapter's weights are loaded in bfloat16 (no float32 branch casting every layer's
    input up and back), and scores match float32's to bfloat16's rounding."""
    import torch

    from bapo.core.logprobs import score
    from bapo.core.tokens import Encoded
    from bapo.runtime.adapters import applied
    from bapo.runtime.models import load_model

    _, adapters = setup
    seqs = [Encoded((7, 8, 9), (10, 11, 12, 13)), Encoded((7, 8), (20, 21))]
    scores = {}
    for dtype in ("float32", "bfloat16"):
        with applied(load_model(tiny_model, "cpu", dtype), adapters[0], 0.5) as m:
            assert {p.dtype for n, p in m.named_parameters() if "lora_" in n} == {getattr(torch, dtype)}
            scores[dtype] = [v for v, _ in score(m, seqs, 0)]
    assert scores["bfloat16"] == pytest.approx(scores["float32"], rel=0.02)


def test_generated_answers_are_written_beside_their_prompts_and_scores(setup, tiny_model, tmp_path, monkeypatch):
    from bapo.evaluation import metrics

    root, adapters = setup
    write_jsonl(tmp_path / "qa.jsonl", [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)])
    (tmp_path / "s.yaml").write_text(
        "tasks:\n  - {name: trivia, kind: qa, path: qa.jsonl, max_new_tokens: 5}\n"
        f"  - {{name: harmful, kind: refusal, path: {root / 'prompts.jsonl'}, max_new_tokens: 5}}\n")
    cfg = EvalConfig(model=tiny_model, adapters=adapters[:1], suite=str(tmp_path / "s.yaml"), out=str(tmp_path / "r"),
                     cache_dir=str(tmp_path / "cache"), samples=2)
    result = evaluate(cfg)
    lines = [json.loads(x) for x in (tmp_path / "r" / "samples.jsonl").read_text().splitlines()]
    assert [(s["model"], s["task"]) for s in lines] == [(m, t) for m in ("base", "dpo")
                                                        for t, n in (("trivia", 4), ("harmful", 4)) for _ in range(n)]
    first = lines[0]
    assert first["prompt"] == "What is 0 + 0?" + metrics.QA_INSTRUCTION and set(first["scores"]) == {"acc", "unjudged"}
    assert all(isinstance(s["answer"], str) for s in lines)
    for s in lines:  # each answer's scores are the per-item values behind the means
        for metric, value in s["scores"].items():
            assert result.item_scores[s["model"]][s["task"]][metric][s["item"]] == value
    items = json.loads((tmp_path / "r" / "item_scores.json").read_text())
    assert "answers" not in items["base"]["trivia"] and "answers" not in {r.metric for r in result.records}
    md = (tmp_path / "r" / "samples.md").read_text()
    assert "## trivia" in md and "### 2. What is 1 + 1?" in md and "### 3." not in md and "| dpo |" in md

    def boom(*a, **k):
        raise AssertionError("scored again")

    for name, kind in list(tasks.KINDS.items()):  # a rerun reads the answers back from the cache
        monkeypatch.setitem(tasks.KINDS, name, replace(kind, score=boom))
    again = evaluate(replace(cfg, out=str(tmp_path / "r2")))
    assert (tmp_path / "r2" / "samples.jsonl").read_text() == (tmp_path / "r" / "samples.jsonl").read_text()
    assert as_dicts(again.records) == as_dicts(result.records)

    page = write_report(tmp_path / "r", tmp_path / "rep", samples=1).read_text()  # the report shows them too
    assert "What the models wrote" in page and "trivia 1. What is 0 + 0?" in page and "trivia 2." not in page
    assert page.count("class=answer") == 4  # base and dpo, one prompt of each of the two tasks


def test_another_generation_batch_scores_the_generative_tasks_again_and_only_them(setup, tiny_model, monkeypatch):
    """Greedy answers depend on the prompts batched with them (in 16-bit dtypes), so cached answers of one
    generation batch size are never reused for another; log-prob scores are."""
    root, adapters = setup
    (root / "gen_suite.yaml").write_text(
        "tasks:\n  - {name: mc, kind: mc, path: mc.jsonl}\n"
        "  - {name: refusals, kind: refusal, path: prompts.jsonl, max_new_tokens: 4}\n")
    cfg = EvalConfig(model=tiny_model, adapters=adapters[:1], suite=str(root / "gen_suite.yaml"),
                     out=str(root / "gen"), cache_dir=str(root / "cache"), generate_batch_size=2)
    run_eval(cfg)
    scored = []
    for name, kind in list(tasks.KINDS.items()):
        monkeypatch.setitem(tasks.KINDS, name, replace(
            kind, score=lambda model, t, s, adv, real=kind.score: scored.append(t.spec.name) or real(model, t, s, adv)))
    run_eval(replace(cfg, out=str(root / "gen2")))
    assert scored == []
    run_eval(replace(cfg, out=str(root / "gen3"), generate_batch_size=3))
    assert scored == ["refusals", "refusals"]  # the base model and the adapter; ARC-style mc from the cache


def test_a_generation_batch_below_one_is_a_config_error(tiny_model):
    with pytest.raises(bapo.errors.ConfigError, match="generate_batch_size"):
        EvalConfig(model=tiny_model, generate_batch_size=0).validate()


def test_in_bfloat16_the_base_model_is_exactly_its_own_reference(setup, tiny_model, tmp_path, monkeypatch):
    """The implicit reward and drift compare a model with the reference's log-probs. In bfloat16 a log-prob depends
    on the batch it was computed in (SmolLM2: the base model's held-out reward accuracy read 0.583, not 0.5, against
    its own cached log-probs), so an evaluation computes the reference's in the batches it scores the candidates in,
    never from the per-sequence cache: the base model's margin and drift are exactly 0, its reward accuracy one half.
    The cache is made to differ here as another batching would (the tiny model's rounding does not)."""
    from bapo.runtime.reference import Reference

    real = Reference.logps
    monkeypatch.setattr(Reference, "logps", lambda self, seqs, *a, **k: [
        (v + 0.01 * (i % 3), n) for i, (v, n) in enumerate(real(self, seqs, *a, **k))])
    root, adapters = setup
    records = run_eval(EvalConfig(model=tiny_model, adapters=adapters[:1], suite=str(root / "suite.yaml"),
                                  out=str(tmp_path / "bf16"), cache_dir=str(tmp_path / "cache"), dtype="bfloat16",
                                  batch_size=3))
    base = {(r["task"], r["metric"]): r["value"] for r in records if r["model"] == "base"}
    assert base["personal:ann", "margin"] == 0.0 and base["personal:ann", "reward_acc"] == 0.5
    assert base["drift", "logp_change_per_token"] == 0.0


def test_another_scoring_batch_is_another_cache_entry(setup, tiny_model):
    from bapo.evaluation.runner import Candidate, eval_key

    cand = Candidate("base")
    cfg = EvalConfig(model=tiny_model)
    key = eval_key("id", cand, "mc", "k", cfg)
    assert key == eval_key("id", cand, "mc", "k", replace(cfg, generate_batch_size=8))  # mc generates nothing
    assert key != eval_key("id", cand, "mc", "k", replace(cfg, batch_size=8))
    assert eval_key("id", cand, "qa", "k", cfg, True) != eval_key("id", cand, "qa", "k", replace(cfg, generate_batch_size=8),
                                                                  True)


def test_on_a_cpu_another_thread_count_is_another_cache_entry_for_generated_answers(monkeypatch):
    """In bfloat16 a greedy answer may change with torch's thread count (SmolLM2: 1 of 192 answers at 1 thread
    against 2): answers made at one count are not reused at another; one thread per CPU, a plain run's count, adds
    nothing to the key (caches from before it stay valid); log-prob scores and a GPU's answers ignore it."""
    import torch

    from bapo.evaluation.runner import Candidate, eval_key

    monkeypatch.setattr(tasks.os, "cpu_count", lambda: 4)
    cand, cfg = Candidate("base"), EvalConfig(device="cpu")
    before = torch.get_num_threads()
    try:
        keys = {}
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            keys[n] = (eval_key("id", cand, "qa", "k", cfg, True), eval_key("id", cand, "mc", "k", cfg))
            assert tasks.generation_key(True, 32, "cuda:0") == [("length-sorted generation batch", 32)]
        assert tasks.generation_key(True, 32, "cpu") == [("length-sorted generation batch", 32)]  # 4 threads, 4 CPUs
        assert len({k[0] for k in keys.values()}) == 3 and len({k[1] for k in keys.values()}) == 1
        torch.set_num_threads(1)
        assert tasks.generation_key(True, 32, "cpu")[-1] == ("cpu threads", 1)
        assert tasks.generation_key(False, 32, "cpu") == []
    finally:
        torch.set_num_threads(before)


def test_the_same_user_s_other_held_out_pairs_are_a_task_of_their_own(setup, tiny_model, tmp_path):
    """Two adapters of one user with different held-out pairs (another split) each keep their own: the second's task
    is named after its adapter, where it used to replace the first's under the user's name."""
    from bapo.evaluation.runner import candidates

    root, adapters = setup
    other = tmp_path / "dpo_other_split"
    shutil.copytree(adapters[0], other)
    lines = (other / "holdout.jsonl").read_text().splitlines()
    (other / "holdout.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    cands, personal = candidates(EvalConfig(model=tiny_model, adapters=[adapters[0], adapters[1], str(other)],
                                            suite=str(root / "suite.yaml")))
    assert set(personal) == {"personal:ann", "personal:ann@dpo_other_split"}
    assert (len(personal["personal:ann"].items), len(personal["personal:ann@dpo_other_split"].items)) == (
        len(lines), len(lines) - 1)
    assert [c.personal for c in cands[1:]] == [["personal:ann"], ["personal:ann"], ["personal:ann@dpo_other_split"]]
