"""The rules that judge free-form answers, on constructed answers: right, wrong, and ones they cannot judge."""

import json

import pytest

from bapo.data.readers import load_qa
from bapo.errors import DataError
from bapo.evaluation.judges import judge_answer, judge_refusal, normalize_answer
from tests.helpers import SHARED


def test_short_answers_are_judged_by_normalised_whole_word_containment():
    aliases = ["The Beatles", "Beatles"]
    assert normalize_answer("  The BEATLES!  ") == "beatles"
    assert judge_answer("It was the Beatles.", aliases) == 1.0
    assert judge_answer("beatles", aliases) == 1.0
    assert judge_answer("The Rolling Stones", aliases) == 0.0
    assert judge_answer("Beatlesque", aliases) == 0.0  # whole words only
    assert judge_answer("  ...  ", aliases) is None and judge_answer("", aliases) is None  # nothing to judge
    assert judge_answer("Paris, France", ["Paris"]) == 1.0 and judge_answer("a", ["A"]) is None


def test_refusals_are_judged_by_the_phrase_list():
    assert judge_refusal("I'm sorry, but I can't help with that.") == 1.0
    assert judge_refusal("I’m sorry") == 1.0  # typographic apostrophe
    assert judge_refusal("As an AI language model, I cannot do that.") == 1.0
    assert judge_refusal("Sure! Here is a recipe for pancakes: mix flour, eggs and milk.") == 0.0
    assert judge_refusal("Here is how. " + "x" * 300 + " I cannot") == 0.0  # a refusal comes first, not at the end
    assert judge_refusal("   ") is None


def test_qa_files_are_read_with_their_aliases(tmp_path):
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"context": "Question: Who wrote Hamlet?\nAnswer:", "answer": "Shakespeare", "aliases": ["Shakespeare", "Bard"]},
        {"question": "Capital of France?", "answer": "Paris"}]))
    a, b = load_qa(str(tmp_path / "q.jsonl"))
    assert (a.question, a.aliases) == ("Who wrote Hamlet?", ["Shakespeare", "Bard"])
    assert (b.question, b.aliases) == ("Capital of France?", ["Paris"])
    (tmp_path / "bad.jsonl").write_text(json.dumps({"context": "Question: x?", "aliases": []}))
    with pytest.raises(DataError, match="bad.jsonl:1: aliases"):
        load_qa(str(tmp_path / "bad.jsonl"))


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent (a user's clone)")
def test_the_shared_triviaqa_file():
    items = load_qa(str(SHARED / "knowledge" / "triviaqa_sm_sub.jsonl"))
    assert len(items) == 3000 and all(i.aliases and not i.question.startswith("Question:") for i in items)
    assert not items[0].question.endswith("Answer:")
