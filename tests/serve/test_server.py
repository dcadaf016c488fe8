"""``bapo serve`` driven by the official openai client against a real server on 127.0.0.1."""

import asyncio
import json
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from bapo.runtime.adapters import applied  # noqa: E402
from bapo.runtime.generate import generate_answers  # noqa: E402
from bapo.runtime.models import load_model, load_tokenizer  # noqa: E402
from bapo.core.tokens import Renderer  # noqa: E402
from bapo.serve.config import ServeConfig  # noqa: E402
from bapo.serve.server import build  # noqa: E402
from tests.helpers import free_port, make_adapter, serving  # noqa: E402

USERS = ["alice", "bob", "carol"]
Q = [{"role": "user", "content": "Tell me about tea."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("serve")
    for i, u in enumerate(USERS):
        make_adapter(tiny_model, root / "adapters" / u, seed=i)
    (root / "outside").mkdir()
    make_adapter(tiny_model, root / "outside" / "eve", seed=9)
    (root / "adapters" / "sneaky").symlink_to(root / "outside" / "eve")
    cfg = ServeConfig(model=tiny_model, adapters=str(root / "adapters"), port=free_port(), api_key="sekret",
                      max_adapters=2, max_tokens=64, max_body_kb=8, device="cpu", dtype="float32", batch_wait_ms=50)
    with serving(cfg) as (_, engine):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{cfg.port}/v1", api_key="sekret", max_retries=0)
        yield client, engine, root, cfg, Path(tiny_model).name


def offline(tiny_model: str, adapter: Path | None, messages, max_new_tokens: int, scale: float = 1.0) -> str:
    """The answer the same adapter gives alone, through bapo's own batch-of-one generation."""
    model, tok = load_model(tiny_model, "cpu", "float32"), load_tokenizer(tiny_model)
    with applied(model, adapter, scale, merge=False) as m:
        return generate_answers(m, Renderer(tok, 512, 256), [messages], max_new_tokens, batch_size=1)[0]


def test_models_lists_the_base_and_every_adapter_even_new_ones(server, tiny_model):
    client, _, root, _, base = server
    ids = {m.id: m for m in client.models.list().data}
    assert set(ids) == {base, *USERS}  # the symlink out of the folder is not served
    assert ids["alice"].model_extra["parent"] == base
    make_adapter(tiny_model, root / "adapters" / "dave", seed=4)
    assert "dave" in {m.id for m in client.models.list().data}
    # each adapter's built-in scale and the forgetting budget it was scaled to meet (bapo export, --forgetting-budget)
    from bapo.runtime.export import export_adapter

    export_adapter(root / "adapters" / "alice", root / "adapters" / "alice-half", 0.5, extra={"budget": {"drift": 0.1}})
    ids = {m.id: m for m in client.models.list().data}
    assert ids["alice"].model_extra["bapo"] == {"scale": 1.0, "budget": None}
    assert ids["alice-half"].model_extra["bapo"] == {"scale": 0.5, "budget": {"drift": 0.1}}


def test_greedy_chat_equals_the_adapter_alone_and_streaming_says_the_same(server, tiny_model):
    client, _, root, _, base = server
    r = client.chat.completions.create(model="alice", messages=Q, temperature=0, max_tokens=12)
    want = offline(tiny_model, root / "adapters" / "alice", Q, 12)
    assert r.choices[0].message.content == want and r.model == "alice"
    assert r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason in ("stop", "length")
    parts = list(client.chat.completions.create(model="alice", messages=Q, temperature=0, max_tokens=12, stream=True,
                                                stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert text == want and parts[-1].usage.completion_tokens == r.usage.completion_tokens
    base_answer = client.chat.completions.create(model=base, messages=Q, temperature=0, max_tokens=12)
    assert base_answer.choices[0].message.content == offline(tiny_model, None, Q, 12) != want


def test_adapter_scale_dials_the_user_down_to_the_base_model(server, tiny_model):
    client, _, root, _, base = server
    zero = client.chat.completions.create(model="bob", messages=Q, temperature=0, max_tokens=10,
                                          extra_body={"adapter_scale": 0.0})
    assert zero.choices[0].message.content == offline(tiny_model, None, Q, 10)
    half = client.chat.completions.create(model="bob", messages=Q, temperature=0, max_tokens=10,
                                          extra_body={"adapter_scale": 0.5})
    assert half.choices[0].message.content == offline(tiny_model, root / "adapters" / "bob", Q, 10, scale=0.5)


def test_text_parts_and_the_developer_role_read_as_todays_clients_send_them(server):
    """Current clients send content as a list of parts and the system prompt as ``developer``: text parts are joined,
    developer is system; any other part type is a 400 naming its field."""
    client, _, _, _, _ = server
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about tea."}]
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "about tea."}]}]

    def answer(messages):
        r = client.chat.completions.create(model="alice", messages=messages, temperature=0, max_tokens=8)
        return r.choices[0].message.content

    assert answer(parts) == answer(plain)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as e:
        answer([{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}])
    assert e.value.body["param"] == "messages.0.content.1" and "text" in e.value.body["message"]


def test_errors_are_openai_envelopes(server):
    client, _, _, cfg, _ = server
    for name in ("nobody", "../outside/eve", "/etc", "sneaky", ".hidden"):
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model=name, messages=Q, max_tokens=4)
        assert e.value.body["param"] == "model" and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="alice", messages=Q, max_tokens=cfg.max_tokens + 1)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="alice", messages=Q, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0).models.list()
    url = f"{client.base_url}chat/completions"
    status, body = raw(url, b'{"model": "alice", "messages": [')
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = raw(url, json.dumps({"model": "alice", "messages": Q, "pad": "x" * 20000}).encode())
    assert status == 413 and "error" in body
    status, body = raw(f"{client.base_url}nowhere")
    assert status == 404 and body["error"]["type"] == "invalid_request_error"


def raw(url: str, data: bytes | None = None) -> tuple[int, dict]:
    """A request without the openai client (malformed bodies), answered with (status, JSON body)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, headers={"Authorization": "Bearer sekret",
                                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_fallback_to_base_is_explicit(tiny_model, tmp_path):
    cfg = ServeConfig(model=tiny_model, adapters=str(tmp_path), fallback_to_base=True, device="cpu")
    app, engine = build(cfg)
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={"model": "nobody", "messages": Q, "max_tokens": 3, "temperature": 0})
    engine.close()
    assert r.status_code == 200 and r.json()["model"] == Path(tiny_model).name


def test_many_users_at_once_are_batched_and_each_gets_its_own_answer(server, tiny_model):
    client, engine, root, _, base = server
    users = USERS + [base]
    prompts = [[{"role": "user", "content": f"Name a {w}."}] for w in ("fruit", "river", "tool", "bird")]
    jobs = [(users[i % len(users)], prompts[i % len(prompts)]) for i in range(32)]
    aclient = openai.AsyncOpenAI(base_url=str(client.base_url), api_key="sekret", max_retries=0)

    async def ask(user, msgs):
        r = await aclient.chat.completions.create(model=user, messages=msgs, temperature=0, max_tokens=8)
        return r.choices[0].message.content

    before = len(engine.batches)
    t0 = time.time()
    async def all_at_once():
        return await asyncio.wait_for(asyncio.gather(*(ask(u, m) for u, m in jobs)), timeout=120)

    answers = asyncio.run(all_at_once())
    assert time.time() - t0 < 120
    assert max(engine.batches[before:]) > 1  # rows of different users shared batches
    want = {(u, i): offline(tiny_model, None if u == base else root / "adapters" / u, prompts[i], 8)
            for u in users for i in range(len(prompts))}
    assert answers == [want[u, prompts.index(m)] for u, m in jobs]


def test_faults_leave_the_server_answering_correctly(server, tiny_model):
    """A client gone mid-stream, a burst over the pool's size, an adapter folder deleted while loaded."""
    import shutil
    import urllib.request

    client, engine, root, cfg, base = server
    make_adapter(tiny_model, root / "adapters" / "doomed", seed=7)
    # a client that reads one event of a long stream and hangs up
    body = json.dumps({"model": "doomed", "messages": Q, "max_tokens": 60, "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(f"{client.base_url}chat/completions", data=body, headers={
        "Authorization": "Bearer sekret", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.readline()
    # the folder disappears while its adapter is loaded: later requests get a 404, the others go on
    shutil.rmtree(root / "adapters" / "doomed")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="doomed", messages=Q, max_tokens=4)
    # a burst of 200 over 4 models, with room for 2 adapters at a time
    users = USERS + [base]
    aclient = openai.AsyncOpenAI(base_url=str(client.base_url), api_key="sekret", max_retries=0)

    async def burst():
        async with aclient:
            rs = await asyncio.gather(*(aclient.chat.completions.create(
                model=users[i % 4], messages=Q, temperature=0, max_tokens=6) for i in range(200)))
        return [r.choices[0].message.content for r in rs]

    answers = asyncio.run(asyncio.wait_for(burst(), timeout=180))
    want = {u: offline(tiny_model, None if u == base else root / "adapters" / u, Q, 6) for u in users}
    assert answers == [want[users[i % 4]] for i in range(200)]
    assert "doomed" not in {m.id for m in client.models.list().data}


def test_a_broken_adapter_is_a_clear_error_and_others_go_on(server, tiny_model):
    client, _, root, _, _ = server
    broken = root / "adapters" / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="broken", messages=Q, max_tokens=4)
    assert e.value.body["code"] == "adapter_load_failed" and "broken" in e.value.body["message"]
    ok = client.chat.completions.create(model="carol", messages=Q, temperature=0, max_tokens=6)
    assert ok.choices[0].message.content == offline(tiny_model, root / "adapters" / "carol", Q, 6)


def test_incremental_decoding_equals_decoding_the_whole_answer():
    """The streamer decodes a few tokens at a time; with a byte-level tokenizer that splits characters across tokens
    (emoji, accents), the text built so must equal decoding all ids at once, and never show half a character."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from bapo.serve.engine import Request, StreamRow

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tk.train_from_iterator(["plain words and more words"] * 20, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    text = "Café 😊 naïve — words and 日本語 more words!"
    ids = tok(text)["input_ids"]
    row = StreamRow(Request(messages=[], adapter=None, max_tokens=100), 0)
    seen = [row.extend(tok, i) for i in ids]
    assert row.text == tok.decode(ids) == text
    assert all(not t.endswith("\ufffd") and text.startswith(t) for t in seen)
