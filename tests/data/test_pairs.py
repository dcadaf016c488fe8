"""Reading and validating preference records: formats, every kind of bad input, and the held-out split."""

import csv
import json

import pytest

from bapo.data.pairs import load_pairs, split_holdout
from bapo.errors import DataError
from tests.helpers import SHARED, make_pairs, write_jsonl


def problems(path, **kw):
    with pytest.raises(DataError) as e:
        load_pairs(str(path), **kw)
    return [str(p) for p in e.value.problems]


def test_jsonl_plain_and_chat_formats(tmp_path):
    rows = [
        {"prompt": "Hi?", "chosen": "- yes", "rejected": "Yes.", "user_id": 7},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
         "chosen": [{"role": "assistant", "content": "- yes"}], "rejected": [{"role": "assistant", "content": "No."}]},
    ]
    pairs = load_pairs(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert pairs[0].messages == [{"role": "user", "content": "Hi?"}] and pairs[0].user_id == "7"
    assert pairs[1].prompt == (("system", "Be brief."), ("user", "Hi?")) and pairs[1].chosen == "- yes"
    assert pairs[0].to_record()["prompt"] == "Hi?"
    assert pairs[1].to_record()["prompt"][0]["role"] == "system"
    assert pairs[0].source.endswith("d.jsonl:1")


def test_json_csv_parquet_read_the_same_pairs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_pairs(3, 1)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    with (tmp_path / "d.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"])
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    expected = [(p["prompt"], p["chosen"], p["rejected"]) for p in rows]
    for name in ("d.json", "d.csv", "d.parquet"):
        got = [(p.messages[0]["content"], p.chosen, p.rejected) for p in load_pairs(str(tmp_path / name))]
        assert got == expected, name


def test_every_problem_is_reported_with_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "ok", "chosen": "a", "rejected": "b"},
        '{"prompt": "broken", ',
        {"chosen": "a", "rejected": "b"},
        {"prompt": "  ", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": 3, "rejected": "b"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"},
        ["not", "an", "object"],
        {"prompt": "p", "chosen": "a", "rejected": "b", "user_id": [1]},
    ])
    got = problems(path)
    f = str(path)
    assert got == [
        f"{f}:2: json: malformed JSON (Expecting property name enclosed in double quotes at column 22)",
        f"{f}:3: prompt: missing",
        f"{f}:4: prompt: empty",
        f"{f}:5: chosen: expected text or a list of messages, got int",
        f"{f}:6: rejected: identical to chosen",
        f"{f}:7: prompt[0].role: unknown role 'robot'; use system, user, assistant",
        f"{f}:8: chosen[0].role: expected 'assistant', got 'user'",
        f"{f}:9: record: expected an object with prompt/chosen/rejected, got list",
        f"{f}:10: user_id: expected text or an integer, got list",
    ]


def test_file_level_problems(tmp_path):
    assert problems(tmp_path / "missing.jsonl") == [f"{tmp_path / 'missing.jsonl'}:0: file: not found"]
    (tmp_path / "empty.jsonl").write_text("\n")
    assert problems(tmp_path / "empty.jsonl")[0].endswith("file: no records")
    (tmp_path / "x.txt").write_text("hi")
    assert "unknown format" in problems(tmp_path / "x.txt")[0]
    (tmp_path / "d.json").write_text('{"a": 1}')
    assert problems(tmp_path / "d.json")[0].endswith("json: expected a list of records")


def test_unknown_user_names_the_known_ones(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", make_pairs(2, 1, user="alice") + make_pairs(2, 1, user="bob"))
    assert len(load_pairs(str(path), user="bob")) == 2
    (msg,) = problems(path, user="carol")
    assert msg.endswith("user_id: no records for user 'carol'; known user ids: alice, bob")


def test_holdout_split_is_seeded_and_by_prompt():
    from bapo.data.pairs import PreferencePair

    pairs = [PreferencePair((("user", f"q{i // 2}"),), f"a{i}", f"b{i}") for i in range(40)]
    train, held = split_holdout(pairs, 0.25, seed=1)
    assert len(train) + len(held) == 40 and len(held) == 10  # 5 of 20 prompts, 2 pairs each
    assert not {p.prompt_key for p in train} & {p.prompt_key for p in held}
    assert split_holdout(pairs, 0.25, seed=1) == (train, held)
    assert split_holdout(pairs, 0.25, seed=2)[1] != held


@pytest.mark.skipif(not (SHARED / "general" / "hh_harmless_base_test.jsonl.gz").exists(), reason="../shared/data absent")
def test_a_real_file_converted_to_trl_format_loads(tmp_path):
    import gzip

    rows = []
    with gzip.open(SHARED / "general" / "hh_harmless_base_test.jsonl.gz", "rt") as f:
        for line, _ in zip(f, range(50)):
            r = json.loads(line)
            # HH transcripts share the conversation up to the last "Assistant:" turn
            cut = r["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
            if r["chosen"][cut:].strip() != r["rejected"][cut:].strip():
                rows.append({"prompt": r["chosen"][:cut], "chosen": r["chosen"][cut:], "rejected": r["rejected"][cut:]})
    pairs = load_pairs(str(write_jsonl(tmp_path / "hh.jsonl", rows)))
    assert len(pairs) == len(rows) > 40
