"""Bad input, generated (hypothesis): malformed records, wrong encodings, huge fields, deep JSON, adversarial chat
messages and odd CSV through every loader, and generated YAML through every config. Each input is accepted (and what
is accepted encodes for training), or refused with :class:`bapo.errors.BapoError` whose every line names the file:
never another exception. ``BAPO_HYPOTHESIS_EXAMPLES=1000 pytest tests/test_generated_input.py`` runs more examples
(40 per test by default, to stay within ``make test``'s time)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bapo.balancing.config import BalanceConfig
from bapo.core.tokens import encode_pairs
from bapo.data.config import DataConfig, renderer
from bapo.data.pairs import load_pairs, load_pairs_by_user
from bapo.data.readers import load_general_pairs, load_mc, load_prompts, load_qa
from bapo.data.users import Sources, build_user
from bapo.errors import BapoError, DataError
from bapo.evaluation.config import EvalConfig
from bapo.evaluation.tasks import load_suite
from bapo.options import load_yaml
from bapo.runtime.models import load_tokenizer
from bapo.serve.config import ServeConfig
from bapo.studies.config import StudyConfig
from bapo.training.config import TrainConfig

EXAMPLES = int(os.environ.get("BAPO_HYPOTHESIS_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

text = st.one_of(st.text(max_size=30), st.sampled_from(["", " ", "\x00", "\u2028", "Human: hi\n\nAssistant: yo",
                                                         "x" * 20000, "é" * 50, "\ud7ff", "null", "[]"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), text)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(text, inner, max_size=4)), max_leaves=12)
roles = st.sampled_from(["user", "assistant", "system", "tool", "", "USER", "human"])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": st.one_of(text, json_values)},
                                          optional={"name": text}), max_size=4)
fields = st.one_of(text, messages, json_values)
records = st.one_of(
    st.fixed_dictionaries({}, optional={"prompt": fields, "chosen": fields, "rejected": fields,
                                        "user_id": st.one_of(text, json_values), "extra": json_values}),
    json_values,
)
DEEP = "[" * 100_000 + "]" * 100_000


def write_records(path: Path, rows: list, fmt: str, garbage: list[bytes]) -> Path:
    """``rows`` in ``fmt``, with raw ``garbage`` lines (wrong encodings, deep JSON) mixed into JSONL."""
    if fmt == "jsonl":
        lines = [json.dumps(r).encode() for r in rows] + garbage
        path.write_bytes(b"\n".join(lines) + b"\n")
    elif fmt == "json":
        path.write_bytes(json.dumps(rows).encode() + (garbage[0] if garbage else b""))
    elif fmt == "parquet":
        try:
            pq.write_table(pa.Table.from_pylist([r if isinstance(r, dict) and r else {"value": json.dumps(r)}
                                                 for r in rows]), path)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            path.write_bytes(b"PAR1" + b"".join(garbage) + b"not a parquet file")  # what pyarrow cannot hold: a damaged file
    else:
        buf = io.StringIO()
        keys = sorted({k for r in rows if isinstance(r, dict) for k in r}) or ["prompt"]
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in r.items()} if isinstance(r, dict)
                       else {keys[0]: json.dumps(r)})
        path.write_bytes(buf.getvalue().encode("utf-8", "surrogatepass") + b"".join(garbage))
    return path


def refused_well(e: BapoError, path: Path) -> None:
    """The error names the file on every line and carries no traceback-like text."""
    lines = str(e).splitlines()
    assert lines and all(str(path) in line or line.startswith("...") for line in lines), str(e)[:500]
    if isinstance(e, DataError):
        assert all(p.field for p in e.problems)


garbage = st.lists(st.one_of(st.binary(max_size=40), st.just(b"\xff\xfe\x00bad"), st.just(DEEP.encode()),
                             st.just("é".encode("latin-1"))), max_size=2)


@pytest.fixture(scope="module")
def render(tiny_model):
    return renderer(load_tokenizer(tiny_model), DataConfig(max_length=64, max_prompt_length=32))


@SETTINGS
@given(rows=st.lists(records, max_size=6), fmt=st.sampled_from(["jsonl", "json", "csv", "parquet"]), junk=garbage)
def test_pair_loaders_accept_or_refuse_in_one_line(tmp_path_factory, render, rows, fmt, junk):
    path = write_records(tmp_path_factory.mktemp("pairs") / f"pairs.{fmt}", rows, fmt, junk)
    for load in (load_pairs, lambda p: [x for ps in load_pairs_by_user(p)[0].values() for x in ps]):
        try:
            pairs = load(str(path))
        except BapoError as e:
            refused_well(e, path)
            continue
        try:
            encode_pairs(pairs, render)  # what is accepted can be trained on (truncated to the limits)
        except BapoError as e:
            refused_well(e, path)


@SETTINGS
@given(rows=st.lists(records, max_size=6), fmt=st.sampled_from(["jsonl", "json", "csv"]), junk=garbage)
def test_prompt_and_task_loaders_accept_or_refuse_in_one_line(tmp_path_factory, rows, fmt, junk):
    folder = tmp_path_factory.mktemp("tasks")
    path = write_records(folder / f"items.{fmt}", rows, fmt, junk)
    for load in (load_prompts, load_mc, load_qa, load_general_pairs):
        try:
            load(str(path))
        except BapoError as e:
            refused_well(e, path)


@SETTINGS
@given(data=json_values, junk=garbage)
def test_user_data_files_accept_or_refuse_in_one_line(tmp_path_factory, data, junk):
    folder = tmp_path_factory.mktemp("users")
    dsp = folder / "dsp.json"
    dsp.write_bytes(json.dumps(data).encode() + (junk[0] if junk else b""))
    vpl = write_records(folder / "vpl.jsonl", data if isinstance(data, list) else [data], "jsonl", junk)
    for spec, src in (("dsp:academy", Sources(dsp=str(dsp))), ("vpl:helpful", Sources(vpl=str(vpl))),
                      ("flip:0.5", Sources(general=str(dsp)))):
        try:
            build_user(spec, src, 0)
        except BapoError as e:
            refused_well(e, Path(src.path(spec.split(":")[0] if spec[0] != "f" else "general")))


yaml_docs = st.one_of(
    st.dictionaries(st.sampled_from(["model", "out", "epochs", "lr", "data", "loss", "lora", "users", "methods",
                                     "seeds", "budget", "strategy", "tasks", "port", "max_tokens", "train", "eval",
                                     "adapters", "unknown_field"]),
                    json_values, max_size=5),
    json_values,
)


@SETTINGS
@given(doc=yaml_docs, raw=st.one_of(st.none(), st.binary(max_size=30), st.just(b"a: [1, 2\n  b: }")))
def test_configs_and_suites_accept_or_refuse_in_one_line(tmp_path_factory, doc, raw):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(raw if raw is not None else yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass"))
    for cls in (TrainConfig, StudyConfig, EvalConfig, ServeConfig, BalanceConfig):
        try:
            load_yaml(path, cls).validate()
        except BapoError as e:
            assert str(path) in str(e) or "." in str(e).split(":")[0] or str(e).split(":")[0].isidentifier(), str(e)
    try:
        load_suite(str(path))
    except BapoError as e:
        refused_well(e, path)


valid = st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=40), "chosen": st.text(min_size=1, max_size=40),
                               "rejected": st.text(min_size=1, max_size=40)})


@settings(max_examples=int(os.environ.get("BAPO_HYPOTHESIS_CLI_EXAMPLES", "3")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(rows=st.lists(st.one_of(valid, records), min_size=1, max_size=12),
       fmt=st.sampled_from(["jsonl", "json", "csv", "parquet"]), junk=garbage)
def test_bapo_train_on_generated_data_trains_or_stops_in_one_line_writing_nothing(tmp_path_factory, tiny_model, rows,
                                                                                 fmt, junk):
    folder = tmp_path_factory.mktemp("cli")
    path = write_records(folder / f"pairs.{fmt}", rows, fmt, junk)
    out = folder / "out"
    proc = subprocess.run([sys.executable, "-m", "bapo.cli", "train", "--model", tiny_model, "--data", str(path),
                           "--out", str(out), "--max-steps", "1", "--method", "dpo", "--max-length", "64",
                           "--max-prompt-length", "32", "--device", "cpu"], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                            "BAPO_CACHE_DIR": str(folder / "cache")})
    assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if proc.returncode == 2:
        assert all(line.startswith("error:") for line in proc.stderr.strip().splitlines()), proc.stderr
        assert not out.exists()  # nothing written
    else:
        assert (out / "adapter_model.safetensors").exists()
