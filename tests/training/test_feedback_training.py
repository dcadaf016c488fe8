"""Training on thumbs up and down (KTO), alone and with BAPO's anchor; per user; served unchanged."""

import json
from pathlib import Path

import pytest

import bapo
from bapo.core.tokens import Renderer
from bapo.data.config import DataConfig
from bapo.data.feedback import load_feedback
from bapo.errors import ConfigError
from bapo.runtime.models import load_tokenizer
from bapo.training.config import TrainConfig
from bapo.training.items import encode_items
from bapo.training.per_user import train_per_user
from tests.helpers import make_pairs, write_jsonl


def thumbs(n_prompts: int = 12, user: str | None = None) -> list[dict]:
    """A user who likes bullet lists, as thumbs: one rated answer per prompt, liked and disliked alternating."""
    rows = []
    for i in range(n_prompts):
        liked = i % 2 == 0
        rows.append({"prompt": f"Question {i}?", "completion": f"- point {i}\n- point {i + 1}" if liked else
                     f"Point {i} and point {i + 1}.", "label": liked, **({"user_id": user} if user else {})})
    return rows


def config(tmp_path, model, data: Path, out="out", **kw) -> TrainConfig:
    cfg = TrainConfig(model=model, out=str(tmp_path / out), data=DataConfig(path=str(data), holdout=0.25),
                      max_steps=3, batch_size=2, save_steps=100, lr=5e-3, **kw)
    cfg.base.max_new_tokens = 6
    return cfg


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_kto_trains_on_thumbs_and_logs_its_reference_point(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "thumbs.jsonl", thumbs(16))
    cfg = config(tmp_path, tiny_model, data)
    cfg.loss.method, cfg.data.holdout = "kto", 0.5
    # the seeded split leaves 6 liked and 2 disliked answers to train on: the run says how to weigh them
    with pytest.warns(UserWarning, match=r"KTO: 6 liked and 2 disliked .* try --desirable-weight 0\.33"):
        res = bapo.train(cfg)
    logged = [r for r in rows(res.out / "metrics.jsonl") if "loss" in r]
    assert len(logged) == 3 and all("kl" in r and r["kl"] >= 0 for r in logged)
    assert "rewards/accuracies" not in logged[0]  # no pairs to rank
    train, held = rows(res.out / "train.jsonl"), rows(res.out / "holdout.jsonl")
    assert len(train) + len(held) == 16 and {"prompt", "completion", "label"} <= set(train[0])
    assert 2 <= sum(r["label"] for r in held) <= 6  # both kinds of thumbs held out: an AUC exists
    run = json.loads((res.out / "run.json").read_text())
    assert run["method"] == "kto" and run["train_data"] == "rated answers"
    assert not (res.out / "base_responses.jsonl").exists()  # kto alone has no base-response term

    # bapo eval scores the held-out thumbs: the implicit reward's AUC (0.5 for the base model), per item for intervals
    from bapo.evaluation.config import EvalConfig
    from bapo.evaluation.runner import evaluate

    suite = tmp_path / "s.yaml"
    write_jsonl(tmp_path / "mc.jsonl", [{"query": f"Question: {i}?", "choices": ["a", "b"], "gold": 0} for i in range(4)])
    suite.write_text("tasks:\n  - {name: mc, kind: mc, path: mc.jsonl}\n")
    result = evaluate(EvalConfig(model=tiny_model, adapters=[str(res.out)], suite=str(suite), out=str(tmp_path / "ev")))
    by = {(r.model, r.metric): r for r in result.records if r.kind == "feedback"}
    assert by[("base", "auc")].value == 0.5 and by[("base", "signed_logratio")].value == pytest.approx(0, abs=1e-3)
    auc = by[("out", "auc")]
    assert auc.n == 8 and 0 <= auc.value <= 1 and auc.delta is not None
    scores = result.item_scores["out"][auc.task]
    assert len(scores["auc"]) == len(scores["signed_logratio"]) == 8

    # held-out thumbs all up: no AUC to report (no record, not a nan), the signed log-ratio still there
    held_up = [r for r in rows(res.out / "holdout.jsonl") if r["label"]]
    write_jsonl(res.out / "holdout.jsonl", held_up)
    result = evaluate(EvalConfig(model=tiny_model, adapters=[str(res.out)], suite=str(suite), out=str(tmp_path / "e2")))
    kept = {(r.model, r.metric) for r in result.records if r.kind == "feedback"}
    assert ("out", "signed_logratio") in kept and not any(m == "auc" for _, m in kept)


def test_bapo_over_kto_unpairs_pairs_and_keeps_held_out_pairs(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8, 1))
    cfg = config(tmp_path, tiny_model, data)
    cfg.loss.method, cfg.loss.pref_loss = "bapo", "kto"
    res = bapo.train(cfg)
    train, held = rows(res.out / "train.jsonl"), rows(res.out / "holdout.jsonl")
    assert len(held) == 2 and all("chosen" in r for r in held)  # held-out pairs stay pairs: scored as DPO's are
    assert len(train) == 12 and sum(r["label"] for r in train) == 6  # 6 pairs -> 6 thumbs up, 6 down
    logged = [r for r in rows(res.out / "metrics.jsonl") if "loss" in r]
    assert all("loss/anchor" in r and "kl" in r for r in logged)
    assert len(rows(res.out / "base_responses.jsonl")) == 12


def test_a_rated_answer_is_paired_with_another_prompts_answer(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "thumbs.jsonl", thumbs(6))
    items = load_feedback(str(data))
    render = Renderer(load_tokenizer(tiny_model), 512, 256)
    enc = encode_items(items, render, seed=3)
    answers = {render.encode(f.messages, f.completion, "", "", []).response: f.prompt_key for f in items}
    for f, (rated, other) in zip(items, enc):
        assert rated.prompt == other.prompt  # the mismatched answer under this item's prompt
        assert rated.response != other.response
        # another prompt's answer (the template closes it the same way under any prompt)
        assert answers[other.response] != f.prompt_key
    assert encode_items(items, render, seed=3) == enc  # seeded


def test_thumbs_with_a_pairwise_loss_is_a_clear_error_before_model_work(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "thumbs.jsonl", thumbs(6))
    cfg = config(tmp_path, tiny_model, data)
    cfg.loss.method = "dpo"
    with pytest.raises(ConfigError, match="unpaired feedback.*--method kto"):
        bapo.train(cfg)
    assert not (tmp_path / "out").exists()


def test_per_user_thumbs_and_the_adapters_serve_unchanged(tmp_path, tiny_model):
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from bapo.serve.config import ServeConfig
    from tests.helpers import free_port, serving

    ann = [{**r, "label": i < 6} for i, r in enumerate(thumbs(8, "ann"))]  # 6 up, 2 down: unbalanced
    data = write_jsonl(tmp_path / "all.jsonl", ann + [{**r, "prompt": r["prompt"] + " (b)"} for r in thumbs(8, "bo")])
    cfg = config(tmp_path, tiny_model, data, out="users", per_user=True)
    cfg.loss.method, cfg.loss.pref_loss = "bapo", "kto"
    with pytest.warns(UserWarning, match=r"user ann: KTO: "):
        done = train_per_user(cfg)
    assert [u.user for u in done.users] == ["ann", "bo"] and [u.pairs for u in done.users] == [6, 6]
    assert all(u.steps == 3 and u.anchor_gap is not None for u in done.users)
    scfg = ServeConfig(model=tiny_model, adapters=str(tmp_path / "users"), port=free_port(), device="cpu",
                       dtype="float32", max_tokens=16)
    with serving(scfg):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{scfg.port}/v1", api_key="none", max_retries=0)
        assert {"ann", "bo"} <= {m.id for m in client.models.list().data}
        r = client.chat.completions.create(model="bo", messages=[{"role": "user", "content": "Hi?"}],
                                           temperature=0, max_tokens=8)
        assert r.model == "bo" and r.usage.completion_tokens > 0


def test_unbalanced_thumbs_get_the_kto_papers_advice():
    from bapo.data.feedback import Feedback
    from bapo.training.items import thumbs_balance

    def fb(liked: bool) -> Feedback:
        return Feedback((("user", "q"),), "a", liked)

    assert thumbs_balance([fb(True), fb(False)], 1.0, 1.0) is None  # 1 : 1
    assert thumbs_balance([fb(True)] * 4 + [fb(False)] * 3, 1.0, 1.0) is None  # 4 : 3
    # 1 liked to 3 disliked: weigh liked answers 3 (to 4) times as much
    assert "--desirable-weight 3.00 (to 4.00)" in thumbs_balance([fb(True)] + [fb(False)] * 3, 1.0, 1.0)
    assert thumbs_balance([fb(True)] + [fb(False)] * 3, 3.0, 1.0) is None
    assert "all up" in thumbs_balance([fb(True)] * 2, 1.0, 1.0)
