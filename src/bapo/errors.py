"""Errors a user can act on. The CLI prints each as one line and exits with code 2."""

from __future__ import annotations

import errno
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


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
        return one_line(f"{where}: {self.field}: {self.message}")


def one_line(text: str) -> str:
    """``text`` with every character Python counts as a line break or a control character (a record's field may hold
    any: ``\x1e`` ends a line for ``str.splitlines``) written as its escape, so one problem stays one line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class DataError(BapoError):
    """Input data failed validation; ``problems`` lists every problem found (the message shows the first few)."""

    MAX_SHOWN = 20

    def __init__(self, problems: list[Problem] | Problem):
        # the same problem found twice (a prompt a pair's chosen and rejected answers share) is listed once
        self.problems = [problems] if isinstance(problems, Problem) else list(dict.fromkeys(problems))
        shown = [str(p) for p in self.problems[: self.MAX_SHOWN]]
        more = len(self.problems) - len(shown)
        if more > 0:
            shown.append(f"... and {more} more problem(s)")
        super().__init__("\n".join(shown))


class ModelError(BapoError):
    """A model could not be found or loaded."""


class ConfigError(BapoError):
    """A configuration file or option is invalid."""


# Failures of the machine rather than of the input: a full disk, a file size limit, a folder that cannot be written.
DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EFBIG: "file size limit reached",
               errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
               errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EACCES: "permission denied",
               errno.EPERM: "not permitted", errno.EISDIR: "is a folder"}
# Native writers (torch.save, safetensors, SQLite) report the same failures as text.
DISK_MESSAGES = ("disk i/o error", "database or disk is full", "file too large", "no space left", "file write failed",
                 "failed writing", "unable to open database file", "attempt to write a readonly database",
                 "basic_ios::clear", "unexpected pos")  # the last two: torch.save's zip writer after a failed write


def environment_problem(e: BaseException) -> str | None:
    """One line for an error that comes from where bapo writes (not from a bug), or None."""
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
        where = e.filename or "an output file"
        full = e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)
        return f"{where}: {'cannot write: ' if full else ''}{DISK_ERRNOS[e.errno]} ({e.strerror})"
    text = str(e).lower()
    if any(m in text for m in DISK_MESSAGES):
        kind = "the cache (SQLite)" if type(e).__module__ == "sqlite3" else "an output file"
        return (f"{kind}: cannot write: {str(e).splitlines()[0][:200]} (is the disk full, a file size limit set, or "
                f"the folder not writable? set --cache-dir or --out elsewhere)")
    return None


class Interrupted(Exception):
    """Ctrl-C inside a command, carried past click (which would print "Aborted!" and exit 1) to the command line's
    handler, which says "interrupted" and exits 130."""


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn Ctrl-C inside the block into :class:`Interrupted`."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted() from None


def notes_as_one_line(say: Callable[[str], None]) -> None:
    """Show bapo's own warnings (a template without a system role, a thumbs imbalance) through ``say``, one line each,
    instead of Python's file, line and source; other libraries' warnings as Python shows them. The command line
    calls it; a library user's warnings are left alone."""
    default = warnings.showwarning
    package = str(Path(__file__).parent)

    def show(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(package) and issubclass(category, UserWarning):
            say(str(message))
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
