"""Task kinds (what each counts and costs) and suites (lists of tasks in YAML)."""

from pathlib import Path

import pytest

from bapo.data.readers import McItem, PairItem, load_mc, load_prompts
from bapo.errors import ConfigError
from bapo.evaluation.tasks import KINDS, load_suite
from tests.helpers import SHARED

needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent (a user's clone)")


def test_shipped_knowledge_set_and_default_suite():
    items = load_mc("package:knowledge_mc.jsonl")
    assert len(items) >= 150 and all(len(i.choices) == 4 and 0 <= i.gold < 4 for i in items)
    assert items[0].context.startswith("Question: ") and items[0].context.endswith("\nAnswer:")
    assert {t.kind for t in load_suite("default").tasks} == {"mc", "drift"}
    assert len(load_prompts("package:general_prompts.jsonl")) == 40


def test_scored_size_counts_each_prompt_once():
    mc = [McItem("Q: 2+2?", ["4", "five"], 0), McItem("Q", ["a", "b", "c"], 1)]
    pairs = [PairItem([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                       {"role": "user", "content": "why"}], "because", "no")]
    assert KINDS["mc"].sequences(mc) == 5 and KINDS["mc"].chars(mc) == (7 + 1 + 4) + (1 + 3)
    assert KINDS["general_pairs"].sequences(pairs) == 2 and KINDS["general_pairs"].chars(pairs) == 2 + 2 + 3 + 7 + 2
    assert KINDS["drift"].sequences([[{"role": "user", "content": "x"}]] * 3) == 3
    assert KINDS["drift"].chars([[{"role": "user", "content": "x"}]] * 3) == 0


def test_suite_yaml_errors(tmp_path):
    (tmp_path / "s.yaml").write_text("tasks:\n  - {name: k, kind: essay, path: x.jsonl}\n")
    with pytest.raises(ConfigError, match=r"tasks\[0\].kind: unknown 'essay'"):
        load_suite(str(tmp_path / "s.yaml"))
    (tmp_path / "s.yaml").write_text("tasks:\n  - {name: k, kind: mc, path: k.jsonl, limit: 5}\n")
    (spec,) = load_suite(str(tmp_path / "s.yaml")).tasks
    assert spec.path == str(tmp_path / "k.jsonl") and spec.limit == 5  # relative to the suite file


@needs_shared
def test_the_shared_suite_file_points_at_real_files():
    suite = load_suite(str(Path(__file__).resolve().parents[2] / "suites" / "shared.yaml"))
    assert len(suite.tasks) == 5 and all(Path(t.path).exists() for t in suite.tasks)
