"""Errors a user can act on. The CLI prints each as one line and exits with code 2."""

from __future__ import annotations

from dataclasses import dataclass


class BapoError(Exception):
    """Base class: anything the user can fix by changing input, options or environment."""


@dataclass(frozen=True)
class Problem:
    """One problem in one input record, printed as ``FILE:LINE: field: message``."""

    source: str
    line: int | str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line != "" else self.source
        return f"{where}: {self.field}: {self.message}"


class DataError(BapoError):
    """Input data failed validation; ``problems`` lists every problem found (the message shows the first few)."""

    MAX_SHOWN = 20

    def __init__(self, problems: list[Problem] | Problem):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        shown = [str(p) for p in self.problems[: self.MAX_SHOWN]]
        more = len(self.problems) - len(shown)
        if more > 0:
            shown.append(f"... and {more} more problem(s)")
        super().__init__("\n".join(shown))


class ModelError(BapoError):
    """A model could not be found or loaded."""


class ConfigError(BapoError):
    """A configuration file or option is invalid."""
