"""One progress bar style for every long step (rich)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def bar(description: str, total: int, show: bool = True) -> Iterator[Callable[[int], None]]:
    """``with bar("scoring", n) as advance: ... advance(k)``; with ``show=False`` nothing is drawn."""
    if not show:
        yield lambda k=1: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), transient=False) as p:
        task = p.add_task(description, total=total)
        yield lambda k=1: p.advance(task, k)
