"""MkDocs hooks (``hooks:`` in mkdocs.yml). The site's home page is the README itself, so the two front doors cannot
drift apart (a hand-kept copy in docs/index.md had: an old test count, a missing feature): ``docs/index.md`` is a
placeholder that this hook fills with README.md, its ``docs/`` links made relative to the site."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"
DOCS_LINK = re.compile(r"\]\(docs/")


def on_page_markdown(markdown: str, page, config, files) -> str:
    """The home page (``index.md``) becomes the README; every other page is left as written."""
    if page.file.src_uri != "index.md":
        return markdown
    return DOCS_LINK.sub("](", README.read_text(encoding="utf-8"))
