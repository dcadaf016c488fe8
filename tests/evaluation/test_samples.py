"""What the models wrote: answers taken out of the scores, paired with prompts, written side by side."""

import json

import pytest

from bapo.errors import DataError
from bapo.evaluation.metrics import ANSWERS
from bapo.evaluation.samples import Asked, Sample, Samples, read_samples, samples_markdown, take_answers, write_samples


def test_answers_leave_the_scores_and_carry_only_the_metrics_that_judge_them():
    scores = {"base": {"q": {"acc": [1.0, 0.0], ANSWERS: ["Paris", ""]},
                       "personal:ann": {"reward_acc": [0.5, 0.5], "profile_score": [0.2, 0.9], ANSWERS: ["a", "b"]},
                       "mc": {"acc": [1.0]}},
              "old": {"q": {"acc": [0.0, 0.0]}, "mc": {"acc": [0.0]}}}  # scored before answers were kept
    got = take_answers(scores, {"q": Asked(["capital of France?", "2+2?"], ("acc",)),
                                "personal:ann": Asked(["hi", "bye"], ("profile_score",)), "mc": Asked([], ())})
    assert all(ANSWERS not in m for tasks in scores.values() for m in tasks.values())
    assert got.samples == [Sample("base", "q", 0, "capital of France?", "Paris", {"acc": 1.0}),
                           Sample("base", "q", 1, "2+2?", "", {"acc": 0.0}),
                           Sample("base", "personal:ann", 0, "hi", "a", {"profile_score": 0.2}),
                           Sample("base", "personal:ann", 1, "bye", "b", {"profile_score": 0.9})]
    assert got.unrecorded == ["old"]


def test_markdown_keeps_each_answer_in_its_cell():
    long = "word " * 200
    md = samples_markdown(Samples([Sample("base", "q", 0, "a | b?", "line one\nline | two", {"acc": 1.0}),
                                   Sample("dpo", "q", 0, "a | b?", "", {"acc": 0.0}),
                                   Sample("dpo", "q", 1, "next?", long, {"acc": 0.0})], ["old"]), first=2)
    assert "### 1. a \\| b?" in md and "| base | line one<br>line \\| two | 1 |" in md
    assert "| dpo | *(empty)* | 0 |" in md and "Not recorded (scored into the cache before bapo kept answers): old." in md
    row = next(x for x in md.splitlines() if x.startswith("| dpo | word"))
    assert row.count("|") == 4 and "…" in row and len(row) < 450


def test_samples_read_back_as_written_and_a_bad_line_is_named(tmp_path):
    samples = [Sample("base", "q", 0, "hi?", "héllo\nthere", {"acc": 1.0}), Sample("dpo", "q", 0, "hi?", "", {})]
    write_samples(tmp_path, Samples(samples, []), first=1)
    assert read_samples(tmp_path / "samples.jsonl") == samples
    (tmp_path / "samples.jsonl").write_text((tmp_path / "samples.jsonl").read_text() + '{"model": "x"}\n')
    with pytest.raises(DataError, match="samples.jsonl:3: sample: not a bapo eval sample"):
        read_samples(tmp_path / "samples.jsonl")
    bad = dict(model="m", task="q", item=0, prompt="p", answer="a", scores="high")
    (tmp_path / "samples.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match="samples.jsonl:1: scores: wrong type"):
        read_samples(tmp_path / "samples.jsonl")
    (tmp_path / "samples.jsonl").write_bytes(b'{"model": "\xff"}\n')
    with pytest.raises(DataError, match="samples.jsonl:1: sample: not a bapo eval sample"):
        read_samples(tmp_path / "samples.jsonl")
