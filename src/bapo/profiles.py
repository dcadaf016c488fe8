"""Users whose preference is a documented, deterministic scoring rule over a response.

A profile maps a response to a score in [0, 1]. When a user's held-out pairs carry a ``user_id`` that names a
profile, ``bapo eval`` also lets each model answer the held-out prompts and reports the profile's mean score of
those answers: what the user would see, not only how the model ranks given responses.
"""

from __future__ import annotations

import re
from typing import Callable

BULLET = re.compile(r"^\s*([-*•]|\d+[.)])\s+")


def is_bullet_list(text: str) -> bool:
    """At least two non-empty lines, and at least two thirds of them start with a bullet or number marker."""
    lines = [line for line in text.splitlines() if line.strip()]
    return len(lines) >= 2 and sum(bool(BULLET.match(line)) for line in lines) * 3 >= 2 * len(lines)


PROFILES: dict[str, Callable[[str], float]] = {
    # The demo's user: wants every answer as a bullet list.
    "bullet-lover": lambda text: float(is_bullet_list(text)),
}
