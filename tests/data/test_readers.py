"""Data set readers: the real files in ../shared/data, and the hub/CSV layouts."""

import gzip
import json

import pytest

from bapo.data.readers import hh_messages, load_general_pairs, load_mc, load_prompts
from bapo.errors import DataError
from tests.helpers import SHARED

needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent (a user's clone)")


@needs_shared
@pytest.mark.parametrize("name,n", [("arc_easy", 2376), ("piqa", 1838), ("openbook_qa", 500)])
def test_llm_foundry_files(name, n):
    items = load_mc(str(SHARED / "knowledge" / f"{name}.jsonl"))
    assert len(items) == n and all(0 <= i.gold < len(i.choices) for i in items)
    sub = load_mc(str(SHARED / "knowledge" / f"{name}.jsonl"), limit=50, seed=3)
    assert len(sub) == 50 and sub == load_mc(str(SHARED / "knowledge" / f"{name}.jsonl"), limit=50, seed=3)


@needs_shared
def test_general_pairs_hh_and_dsp():
    hh = load_general_pairs(str(SHARED / "general" / "hh_harmless_base_test.jsonl.gz"))
    dsp = load_general_pairs(str(SHARED / "general" / "dsp_helpful_test.json"), limit=100)
    assert len(hh) > 2000 and len(dsp) == 100
    assert hh[0].messages[0]["role"] == "user" and hh[0].chosen != hh[0].rejected
    with gzip.open(SHARED / "general" / "hh_harmless_base_test.jsonl.gz", "rt") as f:
        first = json.loads(f.readline())
    msgs, reply = hh_messages(first["chosen"])
    assert msgs[-1]["role"] == "user" and reply and "Assistant:" not in reply


@needs_shared
def test_prompt_files():
    assert len(load_prompts(str(SHARED / "prompts" / "alpaca_eval_instructions.jsonl"))) == 805
    assert len(load_prompts(str(SHARED / "prompts" / "mt_bench_questions.jsonl"))) == 80


def test_hub_layouts_and_mmlu_csv(tmp_path):
    arc_hub = {"question": "Which is a planet?", "choices": {"text": ["Mars", "Moon"], "label": ["A", "B"]}, "answerKey": "A"}
    arc_orig = {"question": {"stem": "Which is wet?", "choices": [{"text": "fire", "label": "1"}, {"text": "water", "label": "2"}]},
                "answerKey": "2"}
    obqa = {"question_stem": "Sun is a", "choices": {"text": ["star", "rock"], "label": ["A", "B"]}, "answerKey": "A"}
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in (arc_hub, arc_orig, obqa)))
    items = load_mc(str(tmp_path / "a.jsonl"))
    assert [(i.choices, i.gold) for i in items] == [(["Mars", "Moon"], 0), (["fire", "water"], 1), (["star", "rock"], 0)]
    (tmp_path / "m.csv").write_text('"What is 2+2?",3,4,5,6,B\n')
    (item,) = load_mc(str(tmp_path / "m.csv"))
    assert item.choices == ["3", "4", "5", "6"] and item.gold == 1
    (tmp_path / "bad.jsonl").write_text(json.dumps({**arc_hub, "answerKey": "Z"}))
    with pytest.raises(DataError, match=r"bad.jsonl:1: answerKey"):
        load_mc(str(tmp_path / "bad.jsonl"))