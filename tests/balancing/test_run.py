"""``bapo balance`` end to end on a tiny model: every strategy respects the budget, runs are deterministic, the
gradient projection separates pairs that teach opposite things, and bad options are one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from transformers import set_seed

import bapo.runtime.reference as reference

from bapo.balancing.config import BalanceConfig
from bapo.balancing import features
from bapo.balancing.features import mean_hidden_states, pair_gradients, prompt_embeddings
from bapo.balancing.run import balance
from bapo.balancing.select import choose_by_gradient
from bapo.core.losses import LossConfig
from bapo.data.config import DataConfig
from bapo.runtime.config import LoraSettings
from bapo.runtime.models import add_lora
from bapo.runtime.reference import encode_base, open_reference
from tests.helpers import write_jsonl


def depth_pairs(n_prompts: int = 10, depth: int = 4) -> list[dict]:
    """A user with several pairs per prompt (as DSP's domain users have)."""
    return [{"prompt": f"Topic {i}?", "chosen": f"- fact {i}\n- fact {j}", "rejected": f"Dull answer {j} to {i}.",
             "user_id": "u1"} for i in range(n_prompts) for j in range(depth)]


def config(tmp_path, model, data, **kw) -> BalanceConfig:
    return BalanceConfig(data=DataConfig(path=str(data), max_length=96, max_prompt_length=48), model=model,
                         out=str(tmp_path / kw.pop("name", "out")), device="cpu", **kw)


@pytest.mark.parametrize("strategy", ["none", "uniform", "bpo"])
def test_labels_strategies_keep_at_most_the_budget(tmp_path, tiny_model, strategy):
    data = write_jsonl(tmp_path / "pairs.jsonl", depth_pairs())
    result = balance(config(tmp_path, tiny_model, data, budget=9, strategy=strategy))
    rows = [json.loads(x) for x in (result.out / "pairs.jsonl").read_text().splitlines()]
    report = json.loads((result.out / "report.json").read_text())
    prompts = {r["prompt"] for r in rows}
    assert len(rows) == report["kept_pairs"] <= 9
    assert set(rows[0]) == {"prompt", "chosen", "rejected", "user_id"} and rows[0]["user_id"] == "u1"
    if strategy == "none":
        assert len(rows) == 9 and len(prompts) == 9
    if strategy == "uniform":  # sqrt split: 3 prompts x 3 pairs
        assert len(rows) == 9 and len(prompts) == 3 and report["depth_histogram"] == {"3": 3}
    if strategy == "bpo":
        assert len(rows) == 9 and len(prompts) <= 3
        assert all("gradient_cluster" in p for p in report["pairs"])
        assert sum(p["depth"] for p in report["prompts"]) == 9


def test_bpo_grows_breadth_until_its_prompts_hold_the_budget(tmp_path, tiny_model):
    """Two pairs per prompt, two breadth clusters: their two representatives hold 4 pairs, so more prompts nearest
    the same centres join until 9 pairs can be chosen (as DSP's users, whose queries hold up to 4 pairs, need)."""
    data = write_jsonl(tmp_path / "pairs.jsonl", depth_pairs(10, 2))
    result = balance(config(tmp_path, tiny_model, data, budget=9, strategy="bpo", breadth=2, depth=3))
    rows = (result.out / "pairs.jsonl").read_text().splitlines()
    report = json.loads((result.out / "report.json").read_text())
    assert len(rows) == 9 and result.prompts >= 5
    assert {p["breadth_cluster"] for p in report["prompts"] if "breadth_cluster" in p} == {0, 1}


def test_generated_candidates_with_a_profile_judge_are_deterministic(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Tell me about {w}."} for w in
                                                    ["cats", "dogs", "rain", "sun", "tea", "code"]])
    kw = dict(judge="psoups:concise", responses=4, max_new_tokens=12, budget=6, strategy="bpo")
    first = balance(config(tmp_path, tiny_model, data, name="a", **kw))
    again = balance(config(tmp_path, tiny_model, data, name="b", **kw))  # the candidates now come from the cache
    a, b = ((r.out / "pairs.jsonl").read_text() for r in (first, again))
    assert a == b and 0 < len(a.splitlines()) <= 6
    report = json.loads((first.out / "report.json").read_text())
    assert report["judge"] == "psoups:concise" and all(p["chosen_score"] > p["rejected_score"] for p in report["pairs"])
    assert all(json.loads(x)["user_id"] == "psoups-concise" for x in a.splitlines())


def test_pair_gradients_are_seeded_and_separate_opposite_pairs(tiny_model):
    ref = open_reference(tiny_model, 96, 48, device="cpu")
    msgs = [[{"role": "user", "content": f"Question {i}?"}] for i in range(6)]
    good, bad = "- yes\n- indeed", "no."
    enc = [(encode_base(ref.renderer, m, good), encode_base(ref.renderer, m, bad)) for m in msgs]
    enc += [(r, c) for c, r in enc]  # the same pairs with the labels reversed: opposite gradients
    runs = []
    for _ in range(2):
        set_seed(0)
        model = add_lora(ref.model, LoraSettings(r=4, alpha=8))
        runs.append(pair_gradients(model, enc, ref.pad_id, LossConfig(method="dpo"), 16, seed=7))
        ref.model = model.unload()
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_allclose(runs[0][:6], -runs[0][6:], rtol=1e-4, atol=1e-7)
    assert np.abs(runs[0]).sum() > 0
    clusters = {}
    for row, cluster, _ in choose_by_gradient(runs[0], 12, 2, seed=0):
        clusters.setdefault(cluster, set()).add(row // 6)
    assert sorted(map(sorted, clusters.values())) == [[0], [1]]


def test_prompt_embeddings_are_cached_and_match_one_prompt_at_a_time(tmp_path, tiny_model, monkeypatch):
    # float32: the check is that padding changes nothing, which holds exactly there (bfloat16 rounds per shape)
    ref = open_reference(tiny_model, 96, 48, cache_dir=str(tmp_path / "cache"), device="cpu", dtype="float32")
    msgs = [[{"role": "user", "content": "word " * n}] for n in (9, 1, 5, 1, 30, 2)]  # lengths out of order, a repeat
    seen = []
    first = prompt_embeddings(ref, msgs, batch_size=2, progress=seen.append)
    assert first.shape[0] == 6 and sum(seen) == 6
    np.testing.assert_array_equal(first[1], first[3])
    alone = [mean_hidden_states(ref.model, [ref.renderer.prompt_ids(m)[-48:]], ref.pad_id)[0] for m in msgs]
    np.testing.assert_allclose(first, np.stack(alone), rtol=1e-4, atol=1e-5)  # padding changes nothing

    def boom(*a, **k):
        raise AssertionError("embedded again")

    monkeypatch.setattr(features, "mean_hidden_states", boom)
    np.testing.assert_array_equal(prompt_embeddings(ref, msgs[::-1]), first[::-1])  # exact, from the cache


@pytest.mark.parametrize("args, message", [
    (["--judge", "oracle"], "judge: unknown 'oracle'"),
    (["--judge", "psoups:grumpy"], "unknown profile 'psoups:grumpy'"),
    (["--budget", "0"], "budget: must be at least 1"),
    (["--strategy", "greedy"], "strategy: unknown 'greedy'"),
])
def test_bad_options_are_one_line_errors(tmp_path, tiny_model, args, message):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hi?"}])
    proc = subprocess.run([sys.executable, "-m", "bapo.cli", "balance", "--data", str(data), "--model", tiny_model,
                           "--out", str(tmp_path / "out"), *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_candidate_generation_resumes_after_a_kill(tmp_path, tiny_model, monkeypatch):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Tell me about {w}."} for w in
                                                    ["cats", "dogs", "rain", "sun", "tea", "code"]])
    kw = dict(judge="psoups:concise", responses=3, max_new_tokens=8, budget=6, strategy="none", batch_size=2)
    real, calls = reference.generate_batch, []

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4 and kill:
            raise KeyboardInterrupt  # the process dies during its 4th batch
        return real(*args, **kwargs)

    monkeypatch.setattr(reference, "generate_batch", counting)
    kill = True
    with pytest.raises(KeyboardInterrupt):
        balance(config(tmp_path, tiny_model, data, name="a", **kw))
    assert not (tmp_path / "a" / "pairs.jsonl").exists()
    kill, calls[:] = False, []
    resumed = balance(config(tmp_path, tiny_model, data, name="a", **kw))
    assert len(calls) == 9 - 3  # 18 greedy answers in batches of 2; the 3 batches done before the kill are reused
    monkeypatch.setenv("BAPO_CACHE_DIR", str(tmp_path / "fresh"))
    fresh = balance(config(tmp_path, tiny_model, data, name="b", **kw))
    assert (resumed.out / "pairs.jsonl").read_text() == (fresh.out / "pairs.jsonl").read_text()
