"""A Griffe extension (mkdocs.yml: mkdocstrings' ``extensions``) that lets the API reference read bapo's code as it is.

Two things the stock reading gets wrong, hence this file rather than a setting:

- A config field is declared once as ``name: type = option(default, "help")`` (:mod:`bapo.core.fields`), often
  through a helper (``model_option()``). Griffe reads source, so it saw a field with no docstring whose value is the
  call, and the page showed neither default nor help. Here the class is imported and each field's help becomes its
  docstring and its default its value; a nested section shows as ``Factory()``.
- Docstrings cross-reference in Sphinx's roles (``:func:`score```), which Markdown prints literally. Here each role
  becomes an optional autorefs link to the object it names, resolved in the docstring's own module (a name that is
  not on the page stays plain code instead of failing the strict build).
"""

from __future__ import annotations

import dataclasses
import importlib
import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc|obj):`~?([A-Za-z_][\w.]*)(?:\(\))?`")


def _declared(attr: griffe.Attribute) -> dataclasses.Field | None:
    """The dataclass field behind ``attr``, from the imported class (a field is often declared through a helper,
    ``model_option()``, whose default and help only the running code knows)."""
    cls = attr.parent
    try:
        real = getattr(importlib.import_module(cls.module.path), cls.name)
    except (ImportError, AttributeError):
        return None
    if not dataclasses.is_dataclass(real):
        return None
    return next((f for f in dataclasses.fields(real) if f.name == attr.name), None)


def _field(attr: griffe.Attribute) -> None:
    f = _declared(attr)
    if f is None:
        return
    if dataclasses.is_dataclass(f.default_factory) if f.default_factory is not dataclasses.MISSING else False:
        attr.value = f"{f.default_factory.__name__}()"
        help_ = f"A section of its own: its fields are written `{attr.name}.FIELD` in YAML and `--set`."
    else:
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        attr.value = repr(default)
        help_ = f.metadata.get("help")
    if help_ and attr.docstring is None:
        attr.docstring = griffe.Docstring(help_, parent=attr)


def _target(obj: griffe.Object, name: str) -> str:
    """The full path of ``name`` as written in ``obj``'s docstring: dotted from ``bapo``, else looked up in its
    class, then its module."""
    if name.startswith("bapo."):
        return name
    head, _, rest = name.partition(".")
    for scope in (obj.parent if obj.is_attribute or obj.is_function else obj, obj.module):
        if scope is None:
            continue
        try:
            return scope.resolve(head) + (f".{rest}" if rest else "")
        except (griffe.NameResolutionError, AttributeError):
            continue
    return name


def _roles(obj: griffe.Object) -> None:
    doc = obj.docstring
    if doc is not None and ":" in doc.value:
        doc.value = ROLE.sub(lambda m: f'<autoref identifier="{_target(obj, m[1])}" optional><code>'
                                       f'{m[1].rsplit(".", 1)[-1] if m[0].count("~") else m[1]}</code></autoref>',
                             doc.value)
    for member in obj.members.values():
        if not member.is_alias:
            _roles(member)


class BapoDocs(griffe.Extension):
    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs) -> None:
        if attr.parent is not None and attr.parent.is_class:
            _field(attr)

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        _roles(pkg)
