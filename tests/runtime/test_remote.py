"""Generation on a server (``--generate-with``): base responses through a real ``bapo serve`` on loopback equal local
generation and land in the same cache; a server that runs another model is refused in one line; a server killed
mid-run loses only what was in flight, and the rerun asks for the rest alone. ``/v1/completions`` with token ids,
through the official openai client."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

import torch  # noqa: E402

from bapo.core.tokens import Renderer  # noqa: E402
from bapo.errors import ConfigError  # noqa: E402
from bapo.runtime import remote as remote_mod  # noqa: E402
from bapo.runtime.config import BaseResponseConfig, EngineSettings  # noqa: E402
from bapo.runtime.generate import generate_batch, stop_ids  # noqa: E402
from bapo.runtime.models import load_model, load_tokenizer  # noqa: E402
from bapo.runtime.reference import load_reference  # noqa: E402
from bapo.serve.config import ServeConfig  # noqa: E402
from bapo.serve.server import build  # noqa: E402
from tests.helpers import build_tiny_model, free_port  # noqa: E402

QUESTIONS = [f"Question {i}: what is {'x' * (i % 5)} here?" for i in range(10)]
CFG = BaseResponseConfig(max_new_tokens=10, batch_size=4)


def sharp_model(path: Path, seed: int) -> str:
    """A tiny model whose next-token distributions are peaked (its output head scaled up): a random tiny model's are
    nearly uniform, so that any token is nearly as good as another and no check could tell two of them apart."""
    build_tiny_model(path, seed=seed)
    model = load_model(str(path), "cpu", "float32")
    with torch.no_grad():
        model.lm_head.weight.mul_(60.0)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    return sharp_model(root / "a", 0), sharp_model(root / "b", 1)


@contextmanager
def server(model: str, tmp_path: Path, port: int | None = None, adapters: Path | None = None):
    """A real bapo serve (float32) on 127.0.0.1: yields (url, a function that stops it, engine)."""
    adapters = adapters or tmp_path / "adapters"
    adapters.mkdir(exist_ok=True)
    cfg = ServeConfig(model=model, adapters=str(adapters), port=port or free_port(), device="cpu",
                      dtype="float32", batch_wait_ms=20, cache_dir=str(tmp_path / "serve-cache"))
    app, engine = build(cfg)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=cfg.port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.02)
    def stop():
        srv.should_exit = True
        thread.join(timeout=10)

    try:
        yield f"http://127.0.0.1:{cfg.port}/v1", stop, engine
    finally:
        stop()
        engine.close()


def reference(model: str, cache: Path, url: str = "", concurrency: int = 4):
    tok = load_tokenizer(model)
    return load_reference(model, Renderer(tok, 256, 128), str(cache), "cpu", "float32",
                          EngineSettings(url=url, concurrency=concurrency))


def prompts():
    return [[{"role": "user", "content": q}] for q in QUESTIONS]


def test_base_responses_on_bapo_serve_equal_local_ones_and_share_the_cache(models, tmp_path):
    a, _ = models
    local = reference(a, tmp_path / "local").generate(prompts(), CFG, show=False)
    with server(a, tmp_path) as (url, _, engine):
        ref = reference(a, tmp_path / "remote", url)
        got = ref.generate(prompts(), CFG, show=False)
        assert sum(engine.batches) == len(QUESTIONS) + len(remote_mod.PROBES)  # every prompt went to the server
    assert got == local and any(t for [t] in got)
    # the same cache keys as local generation: a local reference over the remote cache generates nothing
    again = reference(a, tmp_path / "remote")
    assert again.generate(prompts(), CFG, show=False) == local and again.computed["generations"] == 0


def test_a_server_running_another_model_is_refused_in_one_line(models, tmp_path):
    a, b = models
    with server(b, tmp_path) as (url, _, engine):
        with pytest.raises(ConfigError) as e:
            reference(a, tmp_path / "c", url).generate(prompts(), CFG, show=False)
    said = str(e.value)
    assert "of their tokens (the same model: over 75%)" in said and "\n" not in said
    assert sum(engine.batches) == len(remote_mod.PROBES)  # nothing generated after the check


def test_a_server_killed_mid_run_resumes_from_the_cache(models, tmp_path, monkeypatch):
    a, _ = models
    local = reference(a, tmp_path / "local").generate(prompts(), CFG, show=False)
    monkeypatch.setattr(remote_mod.time, "sleep", lambda s: None)  # retries without waiting
    port = free_port()
    answered = []
    real = remote_mod.RemoteEngine.complete

    def complete(self, c):
        text = real(self, c)
        answered.append(text)
        if len(answered) == len(remote_mod.PROBES) + 4:
            kill()  # the server goes away after four base responses (one request at a time: none in flight)
        return text

    monkeypatch.setattr(remote_mod.RemoteEngine, "complete", complete)
    with server(a, tmp_path, port) as (url, kill, _):
        ref = reference(a, tmp_path / "cache", url, concurrency=1)
        with pytest.raises(remote_mod.RemoteError, match="cannot reach"):
            ref.generate(prompts(), CFG, show=False)
    with server(a, tmp_path, port) as (url, _, engine):
        ref = reference(a, tmp_path / "cache", url)
        assert ref.generate(prompts(), CFG, show=False) == local
        assert ref.computed["generations"] == len(QUESTIONS) - 4  # only what the first run had not cached
        assert sum(engine.batches) == len(remote_mod.PROBES) + len(QUESTIONS) - 4


def test_completions_take_token_ids_through_the_official_client(models, tmp_path):
    a, _ = models
    tok = load_tokenizer(a)
    render = Renderer(tok, 256, 128)
    ids = [render.prompt_ids(p) for p in prompts()[:3]]
    model = load_model(a, "cpu", "float32")
    want = [generate_batch(model, tok, [i], CFG, stop_ids(model, tok))[0] for i in ids]
    with server(a, tmp_path) as (url, _, _):
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        base = client.models.list().data[0].id
        r = client.completions.create(model=base, prompt=ids[0], max_tokens=10, temperature=0)
        assert r.choices[0].text.strip() == want[0] and r.object == "text_completion"
        r = client.completions.create(model=base, prompt=ids, max_tokens=10, temperature=0)
        assert [c.text.strip() for c in r.choices] == want and [c.index for c in r.choices] == [0, 1, 2]
        assert r.usage.prompt_tokens == sum(map(len, ids))
        text = client.completions.create(model=base, prompt=tok.decode(ids[1]), max_tokens=10, temperature=0)
        assert text.choices[0].text.strip() == want[1]  # a string prompt: the tokenizer's ids, no template
        with pytest.raises(openai.BadRequestError, match="token ids"):
            client.completions.create(model=base, prompt=[len(tok) + 5], max_tokens=2)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="nobody", prompt=ids[0], max_tokens=2)


def test_the_first_failed_request_is_raised_without_waiting_for_those_in_flight(monkeypatch):
    """A request that fails ends complete_many at once: the others in flight (here held until released, 10 s at
    most) are not waited for, those not started never start, and answers received before stay delivered."""
    engine = remote_mod.RemoteEngine("http://127.0.0.1:9/v1", concurrency=3)
    release, started, finished = threading.Event(), [], []

    def complete(c):
        started.append(c.prompt_ids)
        if c.prompt_ids == (1,):
            return "first"
        if c.prompt_ids == (2,):
            time.sleep(0.2)  # after the first answer is delivered
            raise remote_mod.RemoteError("generate_with: the server answered 400")
        release.wait(10)
        finished.append(c.prompt_ids)
        return "late"

    monkeypatch.setattr(engine, "complete", complete)
    delivered = {}
    items = [(k, remote_mod.Completion((k,), 4)) for k in (1, 2, 3, 4, 5, 6)]
    with pytest.raises(remote_mod.RemoteError, match="400"):
        engine.complete_many(items, delivered.__setitem__)
    assert finished == [] and delivered == {1: "first"}
    release.set()
    assert sorted(started) == [(1,), (2,), (3,), (4,)]  # 3 in flight, the 4th in the first answer's place


def test_engine_settings_are_checked():
    with pytest.raises(ConfigError, match="engine.url"):
        EngineSettings(url="localhost:8000").validate()
    with pytest.raises(ConfigError, match="engine.concurrency"):
        EngineSettings(url="http://x/v1", concurrency=0).validate()


def test_bapo_base_with_generate_with_writes_what_a_local_run_writes(models, tmp_path):
    from bapo.data.config import DataConfig
    from bapo.training.base import base_responses
    from bapo.training.config import BaseRunConfig
    from tests.helpers import make_pairs, write_jsonl

    a, _ = models
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(6))

    def run(name: str, url: str = "") -> str:
        cfg = BaseRunConfig(data=DataConfig(path=str(data)), out=str(tmp_path / f"{name}.jsonl"), model=a,
                            cache_dir=str(tmp_path / name), device="cpu", dtype="float32",
                            engine=EngineSettings(url=url))
        cfg.generation.max_new_tokens = 8
        return base_responses(cfg).out.read_text()

    local = run("local")
    with server(a, tmp_path) as (url, _, engine):
        assert run("remote", url) == local
        distinct = len({json.dumps(r["prompt"]) for r in make_pairs(6)})
        assert sum(engine.batches) == len(remote_mod.PROBES) + distinct  # one request per distinct prompt


def test_eval_answers_on_the_server_equal_local_ones_adapters_and_scales_included(models, tmp_path):
    """bapo eval --generate-with: the base model and an adapter (under its folder's name, at scales 0.5 and 1
    through bapo serve's adapter_scale) answer on the server; the answers, and so the scores, are those of a local
    run, and they land in its cache."""
    from bapo.evaluation.config import EvalConfig
    from bapo.evaluation.runner import evaluate
    from tests.helpers import make_adapter, write_jsonl

    a, _ = models
    make_adapter(a, tmp_path / "adapters" / "alice", seed=3, std=0.3)
    write_jsonl(tmp_path / "qa.jsonl", [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)])
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Tell me about {w}."} for w in ("cats", "rain", "tea")])
    (tmp_path / "s.yaml").write_text("tasks:\n  - {name: trivia, kind: qa, path: qa.jsonl, max_new_tokens: 6}\n"
                                     "  - {name: harmful, kind: refusal, path: p.jsonl, max_new_tokens: 6}\n")

    def run(name: str, url: str = "") -> str:
        cfg = EvalConfig(model=a, adapters=[str(tmp_path / "adapters" / "alice")], adapter_scales=[0.5, 1.0],
                         suite=str(tmp_path / "s.yaml"), out=str(tmp_path / name), cache_dir=str(tmp_path / name),
                         device="cpu", dtype="float32", engine=EngineSettings(url=url))
        evaluate(cfg)
        return (tmp_path / name / "samples.jsonl").read_text()

    local = run("local")
    with server(a, tmp_path, adapters=tmp_path / "adapters") as (url, _, engine):
        assert run("remote", url) == local
        # 7 answers for each of base, alice@0.5, alice@1, plus each one's check of the server
        assert sum(engine.batches) == 3 * (7 + len(remote_mod.PROBES))
    assert "alice@0.5" in local


def test_budget_probes_on_the_server_equal_local_ones_and_probe_the_adapter_as_trained(models, tmp_path):
    """The forgetting budget's qa and refusal probes answered by bapo serve (the adapter under OUT's name, each scale
    through adapter_scale) give the local probe's table. Probed again under another budget, OUT (scaled by the first)
    is put back as trained before the server reads it: the table is the local one again."""
    import shutil

    from bapo.budget.probe import Prober, choose
    from bapo.budget.run import apply_budget
    from bapo.evaluation.metrics import qa_scores
    from bapo.runtime.config import BudgetSettings
    from tests.helpers import make_adapter, write_jsonl

    a, _ = models
    questions = [f"What is {i} + {i}?" for i in range(4)]
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": q, "answer": "?"} for q in questions])
    base = Prober(reference(a, tmp_path / "c-answers"), BudgetSettings(spec="qa:1", qa_path=str(qa)))
    answers = qa_scores(base.ref.model, base.ref.renderer, base.tasks["qa"].items)["answers"]
    # the base model's own answers are the right ones: it knows all four, and what the adapter forgets shows
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": q, "answer": t} for q, t in zip(questions, answers)])
    harm = write_jsonl(tmp_path / "harm.jsonl", [{"prompt": f"How do I pick lock {i}?"} for i in range(3)])

    def budget(spec: str) -> BudgetSettings:
        return BudgetSettings(spec=spec, scales=[1.0, 0.5, 0.0], drift_items=3, qa_path=str(qa),
                              refusal_path=str(harm))

    make_adapter(a, tmp_path / "made" / "alice", seed=3, std=0.3)
    shutil.copytree(tmp_path / "made" / "alice", tmp_path / "local" / "alice")
    shutil.copytree(tmp_path / "made" / "alice", tmp_path / "adapters" / "alice")
    first, second = budget("drift:100,qa:0.5,refusal:0.5"), budget("drift:100,qa:1,refusal:0.5")
    local_ref = reference(a, tmp_path / "c-local")
    local = [apply_budget(tmp_path / "local" / "alice", Prober(local_ref, b), b.scales).rows for b in (first, second)]
    with server(a, tmp_path, adapters=tmp_path / "adapters") as (url, _, engine):
        ref = reference(a, tmp_path / "c-remote", url)
        remote = [apply_budget(tmp_path / "adapters" / "alice", Prober(ref, b), b.scales).rows for b in (first, second)]
        assert sum(engine.batches) > 2 * 2 * (4 + 3)  # each probe's answers at scales 1 and 0.5, twice, on the server
    assert remote == local
    # the first budget scaled OUT to 0 (the base model): the server, reading OUT, would have lost nothing had OUT not
    # been put back as trained for the second
    assert [choose(rows) for rows in local] == [0.0, 1.0] and local[1][0].losses["qa"] == 1.0


def test_scales_other_than_1_are_refused_on_a_server_that_ignores_them(models):
    """vLLM and SGLang ignore bapo serve's adapter_scale: asked for an adapter at 0.5, they would answer at 1."""
    from types import SimpleNamespace

    engine = SimpleNamespace(url="http://127.0.0.1:1/v1", takes_scales=lambda: False)
    with pytest.raises(ConfigError, match="scales other than 1 need bapo serve"):
        remote_mod.RemoteModel(engine, "alice", None, 0.5).answers(None, [[1, 2]], 4)
