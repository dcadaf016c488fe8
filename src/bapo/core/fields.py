"""How an option is declared: one typed dataclass field carrying its default, its help text and its CLI spelling.

Every configuration in bapo is a dataclass built from these two helpers, so the type, default and help of an option
are written once; :mod:`bapo.options` turns the same fields into YAML (with the help as comments), ``--set``
overrides and command-line options.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Callable


def option(default: Any, help: str, flag: str | tuple[str, ...] = "", **kw: Any) -> Any:
    """A dataclass field with its default and the help text shown by the CLI and written beside it in YAML.

    ``flag`` is the option's name on the command line without dashes (``"eval-data"``; a tuple gives aliases; for a
    boolean, ``"sample/greedy"`` names both switches); by default the field's name with ``-`` for ``_``.
    """
    meta = {"help": help, "flag": flag}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def section(factory: Callable[[], Any], prefix: str = "", cli: bool | tuple[str, ...] = True,
            panel: str = "") -> Any:
    """A nested configuration (a dataclass inside a dataclass), shown as a YAML mapping.

    On the command line its fields appear as ``--{prefix}{flag}`` (``prefix="lora-"`` gives ``--lora-r``); ``cli``
    chooses which: all (True), none (False, still reachable with ``--set``), or the dotted names in a tuple; ``panel``
    groups them under a heading in ``--help``.
    """
    return field(default_factory=factory, metadata={"prefix": prefix, "cli": cli, "panel": panel})
