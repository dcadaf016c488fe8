"""Evaluation data loaders: the shipped set, the real files in ../shared/data, and the hub/CSV layouts."""

import gzip
import json

import pytest

from bapo.errors import ConfigError, DataError
from bapo.suites import (McItem, PairItem, TaskSpec, hh_messages, load_general_pairs, load_mc, load_prompts, load_suite,
                         scored_chars, scored_sequences)
from conftest import SHARED

needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent (a user's clone)")


def test_shipped_knowledge_set_and_default_suite():
    items = load_mc(TaskSpec("k", "mc", "package:knowledge_mc.jsonl"))
    assert len(items) >= 150 and all(len(i.choices) == 4 and 0 <= i.gold < 4 for i in items)
    assert items[0].context.startswith("Question: ") and items[0].context.endswith("\nAnswer:")
    assert {t.kind for t in load_suite("default").tasks} == {"mc", "drift"}
    assert len(load_prompts(TaskSpec("g", "drift", "package:general_prompts.jsonl"))) == 40


def test_scored_size_counts_each_prompt_once():
    mc = [McItem("Q: 2+2?", ["4", "five"], 0), McItem("Q", ["a", "b", "c"], 1)]
    pairs = [PairItem([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                       {"role": "user", "content": "why"}], "because", "no")]
    assert scored_sequences("mc", mc) == 5 and scored_chars("mc", mc) == (7 + 1 + 4) + (1 + 3)
    assert scored_sequences("general_pairs", pairs) == 2 and scored_chars("general_pairs", pairs) == 2 + 2 + 3 + 7 + 2
    assert scored_sequences("drift", [[{"role": "user", "content": "x"}]] * 3) == 3
    assert scored_chars("drift", [[{"role": "user", "content": "x"}]] * 3) == 0


@needs_shared
@pytest.mark.parametrize("name,n", [("arc_easy", 2376), ("piqa", 1838), ("openbook_qa", 500)])
def test_llm_foundry_files(name, n):
    items = load_mc(TaskSpec(name, "mc", str(SHARED / "knowledge" / f"{name}.jsonl")))
    assert len(items) == n and all(0 <= i.gold < len(i.choices) for i in items)
    sub = load_mc(TaskSpec(name, "mc", str(SHARED / "knowledge" / f"{name}.jsonl"), limit=50, seed=3))
    assert len(sub) == 50 and sub == load_mc(TaskSpec(name, "mc", str(SHARED / "knowledge" / f"{name}.jsonl"), limit=50, seed=3))


@needs_shared
def test_general_pairs_hh_and_dsp():
    hh = load_general_pairs(TaskSpec("hh", "general_pairs", str(SHARED / "general" / "hh_harmless_base_test.jsonl.gz")))
    dsp = load_general_pairs(TaskSpec("dsp", "general_pairs", str(SHARED / "general" / "dsp_helpful_test.json"), limit=100))
    assert len(hh) > 2000 and len(dsp) == 100
    assert hh[0].messages[0]["role"] == "user" and hh[0].chosen != hh[0].rejected
    with gzip.open(SHARED / "general" / "hh_harmless_base_test.jsonl.gz", "rt") as f:
        first = json.loads(f.readline())
    msgs, reply = hh_messages(first["chosen"])
    assert msgs[-1]["role"] == "user" and reply and "Assistant:" not in reply


@needs_shared
def test_prompt_files():
    assert len(load_prompts(TaskSpec("a", "drift", str(SHARED / "prompts" / "alpaca_eval_instructions.jsonl")))) == 805
    assert len(load_prompts(TaskSpec("m", "drift", str(SHARED / "prompts" / "mt_bench_questions.jsonl")))) == 80


def test_hub_layouts_and_mmlu_csv(tmp_path):
    arc_hub = {"question": "Which is a planet?", "choices": {"text": ["Mars", "Moon"], "label": ["A", "B"]}, "answerKey": "A"}
    arc_orig = {"question": {"stem": "Which is wet?", "choices": [{"text": "fire", "label": "1"}, {"text": "water", "label": "2"}]},
                "answerKey": "2"}
    obqa = {"question_stem": "Sun is a", "choices": {"text": ["star", "rock"], "label": ["A", "B"]}, "answerKey": "A"}
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in (arc_hub, arc_orig, obqa)))
    items = load_mc(TaskSpec("a", "mc", str(tmp_path / "a.jsonl")))
    assert [(i.choices, i.gold) for i in items] == [(["Mars", "Moon"], 0), (["fire", "water"], 1), (["star", "rock"], 0)]
    (tmp_path / "m.csv").write_text('"What is 2+2?",3,4,5,6,B\n')
    (item,) = load_mc(TaskSpec("m", "mc", str(tmp_path / "m.csv")))
    assert item.choices == ["3", "4", "5", "6"] and item.gold == 1
    (tmp_path / "bad.jsonl").write_text(json.dumps({**arc_hub, "answerKey": "Z"}))
    with pytest.raises(DataError, match=r"bad.jsonl:1: answerKey"):
        load_mc(TaskSpec("b", "mc", str(tmp_path / "bad.jsonl")))


def test_suite_yaml_errors(tmp_path):
    (tmp_path / "s.yaml").write_text("tasks:\n  - {name: k, kind: essay, path: x.jsonl}\n")
    with pytest.raises(ConfigError, match=r"tasks\[0\].kind: unknown 'essay'"):
        load_suite(str(tmp_path / "s.yaml"))
    (tmp_path / "s.yaml").write_text("tasks:\n  - {name: k, kind: mc, path: k.jsonl, limit: 5}\n")
    (spec,) = load_suite(str(tmp_path / "s.yaml")).tasks
    assert spec.path == str(tmp_path / "k.jsonl") and spec.limit == 5  # relative to the suite file


@needs_shared
def test_the_shared_suite_file_points_at_real_files():
    from pathlib import Path

    suite = load_suite(str(Path(__file__).resolve().parents[1] / "suites" / "shared.yaml"))
    assert len(suite.tasks) == 5 and all(Path(t.path).exists() for t in suite.tasks)
