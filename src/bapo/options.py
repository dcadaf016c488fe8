"""Options declared once, used everywhere: dataclass configs from YAML, ``--set`` overrides, and CLI options.

A configuration is a dataclass whose fields come from :func:`bapo.core.fields.option` (and nested
:func:`~bapo.core.fields.section` s). From those fields alone this module reads and writes YAML (each option's help as
a comment), applies dotted overrides (``--set loss.beta=0.2``) and lists the command-line options of a command
(:func:`cli_fields`), so no type, default or help text is ever written twice.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bapo.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------------
# YAML and overrides


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"{path}: unknown option; known: {', '.join(sorted(names))}")
        tp = hints[key]
        kwargs[key] = from_dict(tp, value, path) if _is_dataclass_type(tp) else _coerce(value, tp, path)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of ``cfg`` with dotted-key overrides (``{"loss.beta": 0.2}``) applied; None values are skipped."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {'.'.join(parents[: i + 1])} is an option, not a section")
        node[leaf] = value
    return from_dict(type(cfg), data)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` laid over ``base``, section by section (a section given in part keeps its other defaults)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a missing file, text that is not UTF-8 or not YAML is one :class:`ConfigError` line."""
    p = Path(path)
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except (IsADirectoryError, NotADirectoryError):
        raise ConfigError(f"{p}: not a file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise ConfigError(f"{p}: YAML nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"{mark.line + 1}" if mark else "?"
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{p}:{line}: invalid YAML: {problem}") from None


def load_yaml(path: str | Path, cls: type) -> Any:
    """A config of class ``cls``: its defaults, with what the YAML file sets laid over them."""
    p = Path(path)
    raw = read_yaml(p) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of options, got {type(raw).__name__}")
    try:
        return from_dict(cls, _merge(to_dict(cls()), raw))
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def dump_yaml(cfg: Any, indent: int = 0) -> str:
    """YAML of a config with each field's help text as a comment beside it; ``load_yaml`` reads it back."""
    lines = []
    pad = "  " * indent
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            doc = (type(value).__doc__ or "").strip().splitlines()[0]
            lines.append(f"{pad}{f.name}:  # {doc}")
            lines.append(dump_yaml(value, indent + 1).rstrip("\n"))
            continue
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        text = text.removesuffix("\n...").strip()
        help_text = f.metadata.get("help", "")
        lines.append(f"{pad}{f.name}: {text}" + (f"  # {help_text}" if help_text else ""))
    return "\n".join(lines) + "\n"


def parse_sets(sets: list[str] | None) -> dict[str, str]:
    """``["loss.beta=0.2", ...]`` (repeated ``--set``) as ``{"loss.beta": "0.2"}``."""
    result = {}
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, for example --set loss.beta=0.2")
        k, v = item.split("=", 1)
        result[k.strip()] = v.strip()
    return result


def load_config(cls: type, path: str | Path | None, overrides: dict[str, Any]) -> Any:
    """``cls`` from its defaults, then the YAML file (if any), then ``overrides`` (dotted keys; None = not given)."""
    cfg = load_yaml(path, cls) if path else cls()
    return apply_overrides(cfg, overrides)


# ---------------------------------------------------------------------------------------------------------------
# Command-line options, generated from the fields


@dataclass(frozen=True)
class CliField:
    """One command-line option of a command: which field it sets, its spellings, type, default and help."""

    path: str  # dotted field name, e.g. "loss.beta"
    flags: tuple[str, ...]  # e.g. ("--lambda", "--anchor-lambda"), or ("--base-sample/--base-greedy",) for a switch
    type: Any  # int, float, str, bool; list[...] fields take comma-separated or repeated values
    default: Any
    help: str
    panel: str | None

    @property
    def param(self) -> str:
        """A Python identifier for the option (the function parameter typer reads)."""
        return "opt_" + self.path.replace(".", "__")

    @property
    def is_list(self) -> bool:
        return typing.get_origin(self.type) is list


def _selected(cli: bool | tuple[str, ...], name: str) -> bool | tuple[str, ...]:
    """Which of a section's subfields ``name`` exposes, given the section's ``cli`` choice."""
    if cli is True or cli is False:
        return cli
    inner = tuple(c.split(".", 1)[1] for c in cli if c.startswith(name + ".") and "." in c)
    return True if name in cli else (inner or False)


def cli_fields(cls: type, prefix: str = "", path: str = "", cli: bool | tuple[str, ...] = True,
               panel: str | None = None, defaults: Any = None) -> list[CliField]:
    """Every option of config class ``cls`` that its command line exposes, nested sections included; each default
    is read from ``defaults`` (an instance; by default ``cls()``), so a section's preset shows as its default."""
    defaults = cls() if defaults is None else defaults
    hints = typing.get_type_hints(cls)
    out: list[CliField] = []
    for f in dataclasses.fields(cls):
        chosen = _selected(cli, f.name)
        if chosen is False:
            continue
        dotted = f"{path}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = f.metadata.get("cli", True) if chosen is True else chosen  # a parent's choice narrows the section's
            out += cli_fields(tp, prefix + f.metadata.get("prefix", ""), dotted + ".", sub,
                              f.metadata.get("panel") or panel, getattr(defaults, f.name))
            continue
        names = f.metadata.get("flag") or f.name.replace("_", "-")
        names = (names,) if isinstance(names, str) else tuple(names)
        if tp is bool:
            flags = tuple("/".join(f"--{prefix}{n}" for n in (name.split("/") if "/" in name else [name, f"no-{name}"]))
                          for name in names)
        else:
            flags = tuple(f"--{prefix}{n}" for n in names)
        out.append(CliField(dotted, flags, tp, getattr(defaults, f.name), f.metadata.get("help", ""), panel))
    seen: set[str] = set()
    for c in out:
        for flag in (s for fl in c.flags for s in fl.split("/")):
            if flag in seen:
                raise ValueError(f"{cls.__name__}: two options are spelled {flag}")
            seen.add(flag)
    return out


@dataclass(frozen=True)
class FieldDoc:
    """One field of a config for the configuration reference: its YAML path, its flags (none when only YAML and
    ``--set`` reach it), type, default and help."""

    path: str
    flags: tuple[str, ...]
    type: str
    default: Any
    help: str


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")


def field_docs(cls: type, path: str = "", defaults: Any = None) -> list[FieldDoc]:
    """Every field of config class ``cls``, nested sections flattened to dotted paths, with the flags
    :func:`cli_fields` gives it on the command line."""
    defaults = cls() if defaults is None else defaults
    flags = {c.path: c.flags for c in cli_fields(cls)} if not path else {}
    hints = typing.get_type_hints(cls)
    out: list[FieldDoc] = []
    for f in dataclasses.fields(cls):
        tp, value = hints[f.name], getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            out += field_docs(tp, f"{path}{f.name}.", value)
        else:
            out.append(FieldDoc(f"{path}{f.name}", (), _type_name(tp) or str(tp), value, f.metadata.get("help", "")))
    if not path:
        out = [dataclasses.replace(d, flags=flags.get(d.path, ())) for d in out]
    return out


def cli_value(field: CliField, value: Any) -> Any:
    """A parsed command-line value as an override: repeated and comma-separated list values joined into one list."""
    if value is None or not field.is_list:
        return value
    return [v.strip() for item in value for v in str(item).split(",") if v.strip()]
