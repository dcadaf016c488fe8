"""MkDocs hooks (``hooks:`` in mkdocs.yml).

- The site's home page is the README itself, so the two front doors cannot drift apart (a hand-kept copy in
  docs/index.md had: an old test count, a missing feature): ``docs/index.md`` is a placeholder that this hook fills
  with README.md, its ``docs/`` links made relative to the site.
- ``configuration.md`` is generated from the options' declarations (:func:`configuration_reference`): one table per
  command, so the reference cannot fall behind the code.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"
DOCS_LINK = re.compile(r"\]\(docs/")
REFERENCE = "configuration.md"


def _cell(value: object) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value).lower() if isinstance(value, bool) \
        else str(value)
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def configuration_reference() -> str:
    """The configuration reference page: every command's options, read from the code."""
    from typer.main import get_command

    from bapo.cli import CONFIG_COMMANDS, app
    from bapo.options import field_docs

    lines = ["# Configuration reference", "",
             "Every option of every command, generated from the options' declarations when the site is built. The "
             "commands built from a config (below, first) read the same fields from a YAML file (`--config run.yaml`, "
             "nested sections as mappings) and from `--set FIELD=VALUE` (repeatable, the YAML field's dotted name); "
             "options given on the command line override the file, `--set` overrides both. A field with no flag is "
             "reached by YAML and `--set` alone. `bapo report`, `bapo export` and `bapo data fetch` take only the "
             "arguments and options listed under them.", ""]
    for name, cls in CONFIG_COMMANDS.items():
        lines += [f"## bapo {name}", "", f"Config: `{cls.__module__}.{cls.__name__}`; `--config FILE.yaml`, "
                  "`--set FIELD=VALUE`.", "", "| flag | YAML field | type | default | help |", "|---|---|---|---|---|"]
        lines += [f"| {' '.join(_code(f) for f in d.flags)} | `{d.path}` | {_cell(d.type)} | {_code(_cell(d.default))} "
                  f"| {_cell(d.help)} |" for d in field_docs(cls)]
        lines.append("")
    group = get_command(app)
    hand = [("report",), ("export", "model"), ("export", "adapter"), ("data", "fetch")]
    for path in hand:
        cmd = group
        for part in path:
            cmd = cmd.commands[part]
        lines += [f"## bapo {' '.join(path)}", "", "| argument or flag | default | help |", "|---|---|---|"]
        for p in cmd.params:
            if p.name == "help":
                continue
            spelled = p.opts[0] if p.param_type_name == "option" else (p.metavar or p.name).upper()
            default = "" if p.required or p.default is None else _code(_cell(p.default))
            lines.append(f"| `{spelled}` | {default} | {_cell(getattr(p, 'help', '') or '')} |")
        lines.append("")
    return "\n".join(lines)


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, REFERENCE, content=configuration_reference()))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """The home page (``index.md``) becomes the README; every other page is left as written."""
    if page.file.src_uri != "index.md":
        return markdown
    return DOCS_LINK.sub("](", README.read_text(encoding="utf-8"))
