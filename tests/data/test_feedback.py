"""Unpaired feedback (thumbs up / down, TRL's prompt / completion / label): read, validated line by line."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bapo.data.feedback import load_feedback
from bapo.errors import DataError
from tests.helpers import write_jsonl
from tests.test_cli import bapo


def test_feedback_in_trls_unpaired_format_reads_as_text_messages_and_csv(tmp_path):
    rows = [{"prompt": "Tea?", "completion": "- green\n- black", "label": True, "user_id": "ann"},
            {"prompt": [{"role": "user", "content": "Tea?"}],
             "completion": [{"role": "assistant", "content": "Green and black."}], "label": False, "user_id": "ann"},
            {"prompt": "Coffee?", "completion": "- espresso", "label": 1, "user_id": "bo"}]
    got = load_feedback(str(write_jsonl(tmp_path / "f.jsonl", rows)))
    assert [(f.completion, f.liked, f.user_id) for f in got] == [("- green\n- black", True, "ann"),
                                                               ("Green and black.", False, "ann"),
                                                               ("- espresso", True, "bo")]
    assert got[0].prompt == got[1].prompt == (("user", "Tea?"),) and got[2].source.endswith("f.jsonl:3")
    assert [f.liked for f in load_feedback(str(tmp_path / "f.jsonl"), user="ann")] == [True, False]
    (tmp_path / "f.csv").write_text("prompt,completion,label\nTea?,- green,true\nTea?,Green.,down\n")
    assert [f.liked for f in load_feedback(str(tmp_path / "f.csv"))] == [True, False]


def test_every_bad_record_is_one_line_naming_file_line_and_field(tmp_path):
    rows = ['{"prompt": "p", "completion": "a", "label": true}',
            '{"prompt": "p", "completion": "", "label": true}',
            '{"prompt": "p", "completion": "a", "label": "maybe"}',
            '{"prompt": "p", "completion": "a"}',
            '{"completion": "a", "label": false}',
            '{"prompt": "p", "completion": "a", "label": 2']
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    r = bapo("validate", "--data", path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {path}:2: completion: empty",
        f"error: {path}:3: label: expected true or false (thumbs up or down), got 'maybe'",
        f"error: {path}:4: label: missing",
        f"error: {path}:5: prompt: missing",
        f"error: {path}:6: json: malformed JSON (Expecting ',' delimiter at column 46)"]
    good = write_jsonl(tmp_path / "good.jsonl", [json.loads(rows[0]), {**json.loads(rows[0]), "label": False}])
    r = bapo("validate", "--data", good)
    assert r.returncode == 0 and "2 rated answers (1 liked, 1 disliked)" in r.stdout


FIELD = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=8),
                  st.lists(st.dictionaries(st.sampled_from(["role", "content"]), st.text(max_size=5)), max_size=2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(st.sampled_from(["prompt", "completion", "label", "user_id"]), FIELD), min_size=1,
                max_size=4))
def test_generated_records_are_accepted_or_reported_never_a_traceback(tmp_path, records):
    path = write_jsonl(tmp_path / "gen.jsonl", [json.dumps(r) for r in records])
    try:
        got = load_feedback(str(path))
    except DataError as e:
        lines = str(e).splitlines()
        assert lines and all(line.startswith(f"{path}:") for line in lines)
    else:
        assert all(isinstance(f.liked, bool) and f.completion.strip() for f in got)


def test_a_control_character_in_a_field_stays_on_the_problems_one_line(tmp_path):
    # found by the generated-records test above (2026-12-05): a role of "\x1e", which str.splitlines breaks at
    path = write_jsonl(tmp_path / "c.jsonl", [json.dumps({"prompt": [{"role": "\x1e\n", "content": "x"}],
                                                          "completion": "a", "label": True})])
    with pytest.raises(DataError) as e:
        load_feedback(str(path))
    assert str(e.value).splitlines() == [f"{path}:1: prompt[0].role: unknown role '\\x1e\\n'; use system, user, "
                                         "assistant"]
