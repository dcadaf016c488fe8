"""Usage errors of the installed ``bapo`` script: the short usage message or one line, exit code 2, never a traceback.

The console script is what a user types, and the one place where click's own exceptions meet bapo's handler: in
2026-12 a typer release that carries its own copy of click turned every typo into a 40-line traceback while the
suite, which ran ``python -m bapo.cli`` on valid input only, stayed green. So these run the script itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bapo.cli as cli
from typer.main import get_command

from tests.helpers import make_pairs, write_jsonl

SCRIPT = Path(sys.executable).parent / "bapo"


def leaves(group=None, path=()):
    """Every command of the ``bapo`` app as its argv path, e.g. ("export", "adapter"), with its click command."""
    group = group or get_command(cli.app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from leaves(cmd, (*path, name))
        else:
            yield (*path, name), cmd


COMMANDS = dict(leaves())
GROUPS = [(), ("export",), ("data",), ("keys",)]


def script(*args: str) -> subprocess.CompletedProcess:
    if not SCRIPT.exists():
        pytest.skip(f"the console script is not installed beside {sys.executable} (pip install -e . installs it)")
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)


def usage_error(r: subprocess.CompletedProcess, *expected: str) -> None:
    said = r.stdout + r.stderr
    assert "Traceback" not in said, said
    assert r.returncode == 2, (r.returncode, said)
    assert len(said.strip().splitlines()) <= 8, said  # the usage line, a hint and a one-line error in a box
    for text in expected:
        assert text in said, (text, said)


def test_every_command_is_covered():
    assert {" ".join(p) for p in COMMANDS} >= {"train", "base", "validate", "eval", "study", "balance", "serve",
                                               "demo", "report", "export model", "export adapter", "data fetch",
                                               "keys add"}


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_an_unknown_option_is_a_usage_error(path):
    usage_error(script(*path, "--no-such-flag"), "No such option", "--no-such-flag")


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: " ".join(g) or "bapo")
def test_an_unknown_command_is_a_usage_error(group):
    usage_error(script(*group, "trian"), "No such command")


NUMBERS = {("train",): "--epochs", ("base",): "--num", ("validate",): "--max-length", ("eval",): "--batch-size",
           ("study",): "--seeds", ("balance",): "--budget", ("serve",): "--port", ("demo",): "--steps",
           ("report",): "--samples", ("export", "adapter"): "--scale"}


@pytest.mark.parametrize("path", sorted(NUMBERS), ids=" ".join)
def test_a_malformed_number_is_a_usage_error(path):
    usage_error(script(*path, NUMBERS[path], "not-a-number"), "Invalid value", NUMBERS[path])


@pytest.mark.parametrize("path", sorted(p for p, c in COMMANDS.items()
                                        if any(a.param_type_name == "argument" and a.required for a in c.params)),
                         ids=" ".join)
def test_a_missing_argument_is_a_usage_error(path):
    usage_error(script(*path), "Missing argument")


def test_a_bad_choice_and_a_bad_set_are_one_line(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs())
    r = script("train", "--data", str(data), "--out", str(tmp_path / "o"), "--method", "nosuchloss")
    said = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in said and "nosuchloss" in said, said
    assert len(said.strip().splitlines()) == 1 and not (tmp_path / "o").exists(), said
    r = script("train", "--data", str(data), "--out", str(tmp_path / "o"), "--set", "loss.nosuchfield=1")
    said = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in said and "nosuchfield" in said, said


# --- random argv, in process (a subprocess per example would take minutes) ------------------------------------------

class Reached(Exception):
    """A command got past parsing and validation to its work: the stand-in for "exit 0" without doing the work."""


ENTRY_POINTS = [("bapo.budget.run", "train"), ("bapo.budget.run", "train_each_user"),
                ("bapo.training.base", "base_responses"), ("bapo.training.items", "describe_data"),
                ("bapo.evaluation.runner", "evaluate"), ("bapo.studies.run", "run_study"),
                ("bapo.balancing.run", "balance"), ("bapo.serve.server", "serve"), ("bapo.demo", "run_demo"),
                ("bapo.evaluation.report", "write_report"), ("bapo.runtime.export", "export_model"),
                ("bapo.runtime.export", "export_adapter"), ("bapo.data.fetch", "fetch"), ("bapo.serve.keys", "add_key"),
                ("bapo.runtime.models", "load_tokenizer")]


def flags():
    return sorted({o for c in COMMANDS.values() for p in c.params for o in p.opts if o.startswith("-")})


TOKENS = st.one_of(st.sampled_from(flags()), st.sampled_from(["1", "-1", "0.5", "abc", "", "x=1", "loss.beta=x",
                                                               "loss.beta=0.2", "--", "-", "--help", "nan", "1e999",
                                                               "a,b", "flip:0.5", "dpo", "bapo"]),
                   st.text(max_size=12))


@st.composite
def argvs(draw):
    path = draw(st.one_of(st.sampled_from(sorted(COMMANDS)), st.lists(st.sampled_from(
        ["train", "export", "data", "trian", "adapter", "fetch", "report"]), max_size=2).map(tuple)))
    return [*path, *draw(st.lists(TOKENS, max_size=6))]


@pytest.fixture(scope="module")
def stubbed():
    import importlib

    mp = pytest.MonkeyPatch()

    def reached(*args, **kwargs):
        raise Reached()

    for module, name in ENTRY_POINTS:
        mp.setattr(importlib.import_module(module), name, reached)
    with tempfile.TemporaryDirectory() as tmp:
        mp.chdir(tmp)
        mp.setenv("BAPO_CACHE_DIR", str(Path(tmp) / "cache"))
        yield
    mp.undo()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=argvs())
def test_random_argv_never_gives_a_traceback(stubbed, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bapo", *argv])
    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        try:
            cli.run_command()
            code = 0
        except SystemExit as e:
            code = e.code or 0
        except Reached:
            code = 0
    assert code in (0, 2), (argv, code, said.getvalue())
