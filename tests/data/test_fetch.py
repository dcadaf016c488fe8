"""``bapo data fetch`` without internet: a local HTTP server on 127.0.0.1 serves copies of ../shared/data (the layout
a mirror holds), with Range requests, a cut connection and a corrupted file on demand."""

import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bapo.data.fetch import DATASETS, fetch
from tests.helpers import SHARED
from tests.test_cli import bapo

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data beside the checkout (CI has it)")
SMALL = ("knowledge/openbook_qa.jsonl", "prompts/mt_bench_questions.jsonl")


class Handler(SimpleHTTPRequestHandler):
    """Files of a folder, with ``Range: bytes=N-``; ``cut`` sends half of the next file and closes the connection."""

    cut: set[str] = set()
    ranges: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range"):
            Handler.ranges.append(self.headers["Range"])
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        rel = self.path.lstrip("/")
        if rel in Handler.cut:
            Handler.cut.discard(rel)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "served"
    for d in DATASETS:
        if d.path in SMALL:
            (root / d.path).parent.mkdir(parents=True, exist_ok=True)
            (root / d.path).write_bytes((SHARED / d.path).read_bytes())
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Handler.cut, Handler.ranges = set(), []
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


@needs_shared
def test_fetch_writes_the_layout_checked_and_a_rerun_has_nothing_to_do(tmp_path, mirror):
    url, _ = mirror
    r = bapo("data", "fetch", "--to", tmp_path / "data", "--mirror", url, "--only", ",".join(SMALL))
    assert r.returncode == 0, r.stderr
    for path in SMALL:
        assert (tmp_path / "data" / path).read_bytes() == (SHARED / path).read_bytes()
        assert path in r.stdout
    assert "Apache-2.0" in r.stdout  # each data set's license is printed
    again = fetch(tmp_path / "data", url, SMALL)
    assert [f.status for f in again] == ["cached", "cached"]


@needs_shared
def test_a_cut_connection_resumes_where_it_stopped(tmp_path, mirror):
    url, _ = mirror
    Handler.cut = {SMALL[0]}
    first = fetch(tmp_path / "data", url, SMALL[:1])
    assert not first[0].ok and "rerun to resume" in first[0].status
    part = tmp_path / "data" / (SMALL[0] + ".part")
    assert 0 < part.stat().st_size < (SHARED / SMALL[0]).stat().st_size
    assert not (tmp_path / "data" / SMALL[0]).exists()
    have = part.stat().st_size
    second = fetch(tmp_path / "data", url, SMALL[:1])
    assert second[0].status == "ok" and Handler.ranges == [f"bytes={have}-"]  # only the rest was asked for
    assert (tmp_path / "data" / SMALL[0]).read_bytes() == (SHARED / SMALL[0]).read_bytes() and not part.exists()


@needs_shared
def test_a_wrong_checksum_keeps_nothing_and_is_one_line_exit_2(tmp_path, mirror):
    url, root = mirror
    (root / SMALL[1]).write_bytes(b'{"question_id": 1}\n')
    r = bapo("data", "fetch", "--to", tmp_path / "data", "--mirror", url, "--only", ",".join(SMALL))
    assert r.returncode == 2
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 1 and "sha256 mismatch" in errors[0] and SMALL[1] in errors[0]
    assert (tmp_path / "data" / SMALL[0]).exists() and not (tmp_path / "data" / SMALL[1]).exists()
    assert not list((tmp_path / "data").rglob("*.part"))
    assert hashlib.sha256((tmp_path / "data" / SMALL[0]).read_bytes()).hexdigest() == DATASETS[2].sha256


def test_offline_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = bapo("data", "fetch", "--to", tmp_path / "data", "--mirror", f"http://127.0.0.1:{port}")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{len(DATASETS)} of {len(DATASETS)} data sets could not be downloaded" in lines[0]


def test_studies_look_where_fetch_writes_when_there_is_no_shared_folder(tmp_path, monkeypatch):
    from bapo.data.users import Sources, default_data_dir
    from bapo.errors import ConfigError

    monkeypatch.chdir(tmp_path)  # no ../shared/data from here
    assert default_data_dir() == default_data_dir(fetched=True) == tmp_path / "cache" / "data"  # conftest's cache
    with pytest.raises(ConfigError, match="run `bapo data fetch`"):
        Sources().path("prompts")
    target = tmp_path / "cache" / "data" / "prompts" / "alpaca_eval_instructions.jsonl"
    target.parent.mkdir(parents=True)
    target.write_text('{"instruction": "Hi?"}\n')
    assert Sources().path("prompts") == str(target.resolve())
