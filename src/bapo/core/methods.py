"""Method entries as users write them: ``bapo``, ``bapo:0.1`` (a base-response method with its own lambda),
``bapo/kto`` (BAPO's anchor over KTO), read into their losses and weight (a study's arms; ``bapo train --method``'s
candidates under a forgetting budget)."""

from __future__ import annotations

import math

from bapo.core.losses import BASE_TERMS
from bapo.errors import ConfigError


def split_method(method: str, field: str = "methods") -> tuple[str, float | None]:
    """A method entry as (loss, lambda): ``bapo`` -> (bapo, None: the configured lambda); ``bapo:0.1`` -> (bapo, 0.1), a
    base-response method with its own weight (a study's arm on a lambda frontier; a candidate of ``bapo train
    --method dpo,bapo,bapo:0.1 --forgetting-budget``). ``field`` names the option in errors."""
    name, sep, weight = method.partition(":")
    if not sep:
        return name, None
    if method_losses(name)[0] not in BASE_TERMS:
        raise ConfigError(f"{field}: '{method}': only a base-response method ({', '.join(BASE_TERMS)}) takes :LAMBDA")
    try:
        value = float(weight)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{field}: '{method}': LAMBDA must be a number >= 0, as in {name}:0.1")
    return name, value


def method_losses(name: str) -> tuple[str, str | None]:
    """A method entry's loss and the preference loss under its base-response term: ``bapo/kto`` -> (bapo, kto), BAPO's
    anchor over KTO (trained on the user's pairs as thumbs); ``dpo`` -> (dpo, None)."""
    method, sep, pref = name.partition("/")
    return method, pref if sep else None
