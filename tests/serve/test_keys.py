"""Per-user keys (``bapo serve --keys``): each key sees and uses only its own adapters, against a real server with the
official openai client; the keys file's mistakes are one line at start-up."""

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

from bapo.errors import ConfigError  # noqa: E402
from bapo.serve.config import ServeConfig  # noqa: E402
from bapo.serve.keys import add_key, key_hash, load_keys  # noqa: E402
from tests.helpers import free_port, make_adapter, serving  # noqa: E402

Q = [{"role": "user", "content": "Tell me about tea."}]


def http(url: str, key: str, body: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET (or, with a body, a POST) without the openai client."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("keys")
    for i, name in enumerate(["alice", "alice-v2", "bob"]):
        make_adapter(tiny_model, root / "adapters" / name, seed=i)
    keys = root / "keys.yaml"
    alice = add_key(keys, "alice", ["alice*"])
    bob = add_key(keys, "bob", ["bob"], base=False)
    cfg = ServeConfig(model=tiny_model, adapters=str(root / "adapters"), port=free_port(), keys=str(keys),
                      max_tokens=16, device="cpu", dtype="float32")
    with serving(cfg):
        url = f"http://127.0.0.1:{cfg.port}/v1"
        yield url, alice, bob, Path(tiny_model).name


def client(url, key):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0)


def test_a_key_lists_only_its_own_adapters(server):
    url, alice, bob, base = server
    assert {m.id for m in client(url, alice).models.list().data} == {base, "alice", "alice-v2"}
    assert {m.id for m in client(url, bob).models.list().data} == {"bob"}  # base: false hides the base model too


def test_a_key_chats_with_its_own_adapter(server):
    url, alice, bob, base = server
    r = client(url, alice).chat.completions.create(model="alice-v2", messages=Q, temperature=0, max_tokens=4)
    assert r.model == "alice-v2" and r.choices[0].message.content is not None
    r = client(url, bob).chat.completions.create(model="bob", messages=Q, temperature=0, max_tokens=4)
    assert r.model == "bob"


def test_another_users_adapter_is_exactly_as_unknown_as_a_missing_one(server):
    url, alice, bob, base = server

    def raw(key, model):
        return http(f"{url}/chat/completions", key, {"model": model, "messages": Q, "max_tokens": 2})

    for key, theirs, missing in [(alice, "bob", "zed"), (bob, "alice", "zed2"), (bob, base, "zed3")]:
        status, body = raw(key, theirs)
        status2, body2 = raw(key, missing)
        assert status == status2 == 404
        assert body == {**body2, "error": {**body2["error"], "message": body2["error"]["message"].replace(missing,
                                                                                                          theirs)}}
        with pytest.raises(openai.NotFoundError):
            client(url, key).chat.completions.create(model=theirs, messages=Q, max_tokens=2)


@pytest.mark.parametrize("key", ["", "wrong", "bapo-" + "x" * 43])
def test_a_bad_or_missing_key_is_401_everywhere(server, key):
    url, *_ = server
    for path, body in [("/models", None), ("/chat/completions", {"model": "alice", "messages": Q})]:
        status, answer = http(url + path, key, body)
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(url, key or "none").models.list()


def test_the_file_stores_hashes_only_and_add_keeps_what_was_there(tmp_path):
    path = tmp_path / "keys.yaml"
    a = add_key(path, "alice", ["alice"])
    b = add_key(path, "bob", ["bob", "bob-*"], base=False)
    text = path.read_text()
    assert a not in text and b not in text and key_hash(a) in text and key_hash(b) in text
    keys = load_keys(path)
    assert [g.name for g in keys.grants] == ["alice", "bob"]
    assert keys.find(a).name == "alice" and keys.find(b).name == "bob" and keys.find("nope") is None
    assert keys.find(b).allows("bob-2") and not keys.find(b).allows("bobby") and not keys.find(b).base


HASH = "a" * 64


@pytest.mark.parametrize("text, said", [
    ("- name: a\n  sha256: abc\n  adapters: [a]\n", "keys.yaml:1: sha256: must be the key's sha256"),
    (f"- name: a\n  sha256: {HASH}\n  adapters: [a]\n- name: b\n  sha256: {HASH}\n", "keys.yaml:4: sha256: the same key"),
    (f"- name: a\n  sha256: {HASH}\n  adapters: [../x]\n", "keys.yaml:1: adapters:"),
    (f"- name: a\n  sha256: {HASH}\n  adaptors: [a]\n", "keys.yaml:1: adaptors: unknown field"),
    (f"- name: a\n  sha256: {HASH}\n  base: false\n", "keys.yaml:1: this key may use nothing"),
    ("name: a\n", "keys.yaml: must be a list"),
    ("- [a\n", "keys.yaml:2: not valid YAML"),
])
def test_a_bad_keys_file_is_one_line_naming_the_line(tmp_path, text, said):
    (tmp_path / "keys.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_keys(tmp_path / "keys.yaml")
    assert said in str(e.value) and "\n" not in str(e.value)


def test_serve_refuses_a_bad_keys_file_before_loading_anything(tmp_path):
    (tmp_path / "adapters").mkdir()
    (tmp_path / "keys.yaml").write_text("- name: a\n  sha256: nothex\n  adapters: [a]\n")
    bapo = Path(sys.executable).parent / "bapo"
    if not bapo.exists():
        pytest.skip(f"the console script is not installed beside {sys.executable}")
    r = subprocess.run([str(bapo), "serve", "--adapters", str(tmp_path / "adapters"), "--keys",
                        str(tmp_path / "keys.yaml"), "--model", str(tmp_path / "no-such-model")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "keys.yaml:1: sha256" in r.stderr, r.stderr
    r = subprocess.run([str(bapo), "serve", "--adapters", str(tmp_path / "adapters"), "--keys",
                        str(tmp_path / "keys.yaml"), "--api-key", "x"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not both" in r.stderr, r.stderr
