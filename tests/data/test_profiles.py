"""Simulated users' scoring rules: exact values on constructed texts, and each axis's poles disagree."""

import pytest

from bapo.data.profiles import PROFILES, PSOUPS, SIMULATED, friendliness_score, is_bullet_list, length_score, simplicity_score


def test_length_score_counts_words_up_to_the_cap():
    assert length_score("one two three", cap=6) == 0.5
    assert length_score(" ".join(["w"] * 500)) == 1.0
    assert length_score("") == 0.0


def test_simplicity_score_by_hand():
    # 4 words of 3 letters, one sentence: word part (7-3)/4 = 1, sentence part (30-4)/25 clipped to 1
    assert simplicity_score("The cat sat now.") == 1.0
    # words of 10 letters (word part 0), 2 sentences of 2 words: sentence part (30-2)/25 -> 1
    assert simplicity_score("Aaaaaaaaaa bbbbbbbbbb. Cccccccccc dddddddddd.") == 0.5
    assert simplicity_score("") == 0.0


def test_friendliness_counts_markers_per_sentence():
    assert friendliness_score("Glad to help! Hope this works.") == 1.0  # glad, !, hope in 2 sentences -> capped
    assert friendliness_score("Use a wrench. Turn left. Done.") == 0.0
    assert friendliness_score("Sure. Turn left. Done. Stop.") == 0.25


def test_poles_of_each_axis_rank_opposite():
    short, long = "Use a wrench.", "Use a wrench. " + "Then tighten the bolt slowly and check it twice. " * 5
    assert SIMULATED["concise"](short) > SIMULATED["concise"](long)
    assert SIMULATED["detailed"](short) < SIMULATED["detailed"](long)
    simple = "Plants eat light. They make food."
    technical = "Photosynthetic organisms convert electromagnetic radiation into chemical potential energy."
    assert SIMULATED["elementary"](simple) > SIMULATED["elementary"](technical)
    assert SIMULATED["expert"](simple) < SIMULATED["expert"](technical)
    warm, cold = "Happy to help! Great question.", "Tighten the bolt."
    assert SIMULATED["friendly"](warm) > SIMULATED["friendly"](cold)
    assert SIMULATED["curt"](warm) < SIMULATED["curt"](cold)
    assert {p.axis for p in PSOUPS} == {"expertise", "informativeness", "style"}


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_scores_in_unit_interval(name):
    for text in ["", "Hi!", "A long answer. " * 100, "- a\n- b", "Ünïcode 😊 text?"]:
        assert 0.0 <= PROFILES[name](text) <= 1.0


def test_bullet_lists():
    assert is_bullet_list("- a\n- b\n- c") and not is_bullet_list("a paragraph. another.")
