"""Users whose preference is a documented, deterministic scoring rule over a response.

A profile maps a response to a score in [0, 1]; a higher score is what the user prefers. Two uses:

- ``bapo eval``: when a user's held-out pairs carry a ``user_id`` naming a profile, each model answers the held-out
  prompts and the profile's mean score of those answers is reported (what the user would see).
- ``bapo study``: simulated users. The base model writes candidate answers and the profile labels pairs of them.

The P-SOUPS axes (Jang et al., 2023, "Personalized Soups", arXiv 2310.11564) each have two opposite poles:
expertise (``elementary`` / ``expert``), informativeness (``concise`` / ``detailed``) and style (``friendly`` /
``curt``). The original work labels with GPT-4; these rules are cheap, transparent stand-ins that read the same
surface features a person would notice first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

BULLET = re.compile(r"^\s*([-*•]|\d+[.)])\s+")
WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
# Markers of a warm, personal tone: exclamations, greetings and thanks, encouragement, smileys.
FRIENDLY = re.compile(r"!|\b(?:glad|happy|hope|great|wonderful|love|enjoy|thanks?|thank you|welcome|hi|hello|"
                      r"hey|sure|absolutely|awesome|fantastic|feel free|good luck|cheers|delighted)\b|:\)|😊|🙂",
                      re.IGNORECASE)


def is_bullet_list(text: str) -> bool:
    """At least two non-empty lines, and at least two thirds of them start with a bullet or number marker."""
    lines = [line for line in text.splitlines() if line.strip()]
    return len(lines) >= 2 and sum(bool(BULLET.match(line)) for line in lines) * 3 >= 2 * len(lines)


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def words(text: str) -> list[str]:
    return WORD.findall(text)


def length_score(text: str, cap: int = 200) -> float:
    """Words in the response, as a fraction of ``cap`` (more than ``cap`` words scores 1)."""
    return _clip(len(words(text)) / cap)


def simplicity_score(text: str) -> float:
    """1 for short words in short sentences, 0 for long words in long sentences.

    Half from the mean word length (3 letters -> 1, 7 or more -> 0), half from the mean sentence length
    (5 words -> 1, 30 or more -> 0): the two ingredients of readability formulas such as Flesch's.
    """
    ws = words(text)
    if not ws:
        return 0.0
    sentences = max(1, len(SENTENCE_END.findall(text)))
    word_len = sum(map(len, ws)) / len(ws)
    sent_len = len(ws) / sentences
    return 0.5 * _clip((7 - word_len) / 4) + 0.5 * _clip((30 - sent_len) / 25)


def friendliness_score(text: str) -> float:
    """Friendly markers per sentence, capped at 1 (one marker in every sentence)."""
    sentences = max(1, len(SENTENCE_END.findall(text)))
    return _clip(len(FRIENDLY.findall(text)) / sentences) if text.strip() else 0.0


@dataclass(frozen=True)
class Profile:
    """A simulated user: a scoring rule, and system prompts that steer the base model towards each pole of its axis
    (so candidate answers differ along it)."""

    name: str
    axis: str
    rule: Callable[[str], float]
    steer_towards: str
    steer_away: str

    def __call__(self, text: str) -> float:
        return self.rule(text)


_STEER = {
    "concise": "Answer in one or two short sentences.",
    "detailed": "Answer thoroughly, with details, examples and explanations.",
    "elementary": "Explain it simply, as you would to a ten-year-old.",
    "expert": "Answer as a domain expert writing for other experts, with precise technical terms.",
    "friendly": "Be warm, cheerful and encouraging.",
    "curt": "Be blunt and terse. No greetings, no pleasantries.",
}
PSOUPS = [
    Profile("concise", "informativeness", lambda t: 1 - length_score(t), _STEER["concise"], _STEER["detailed"]),
    Profile("detailed", "informativeness", length_score, _STEER["detailed"], _STEER["concise"]),
    Profile("elementary", "expertise", simplicity_score, _STEER["elementary"], _STEER["expert"]),
    Profile("expert", "expertise", lambda t: 1 - simplicity_score(t), _STEER["expert"], _STEER["elementary"]),
    Profile("friendly", "style", friendliness_score, _STEER["friendly"], _STEER["curt"]),
    Profile("curt", "style", lambda t: 1 - friendliness_score(t), _STEER["curt"], _STEER["friendly"]),
]

PROFILES: dict[str, Callable[[str], float]] = {
    # The demo's user: wants every answer as a bullet list.
    "bullet-lover": lambda text: float(is_bullet_list(text)),
    **{p.name: p.rule for p in PSOUPS},
}
SIMULATED: dict[str, Profile] = {p.name: p for p in PSOUPS}


def profile_key(user_id: str | None) -> str:
    """The :data:`PROFILES` key a user id names, or "": a profile's own name (``concise``), or a simulated user's
    spec or file-safe name (``psoups:concise``, ``psoups-concise``)."""
    name = (user_id or "").removeprefix("psoups:").removeprefix("psoups-")
    return name if name in PROFILES else ""
