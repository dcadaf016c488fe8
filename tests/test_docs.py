"""The documentation site: ``mkdocs build --strict`` (a broken link, page or API reference fails it), the README
short enough to be a front door, and the home page rendered in headless Chromium where it is installed."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                       capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_the_site_builds_strictly_with_every_page_and_the_api_reference(site):
    for page in ("index.html", "training/index.html", "budget/index.html", "RESULTS/index.html", "api/index.html"):
        assert (site / page).is_file(), page
    api = (site / "api" / "index.html").read_text()
    assert "TrainConfig" in api and "forgetting" in api.lower()  # rendered from the docstrings


def page_text(site: Path, page: str) -> str:
    """A built page's article as text: tags dropped, entities read, runs of whitespace one space."""
    import html
    import re

    raw = (site / page / "index.html").read_text()
    article = raw[raw.index("<article"):raw.index("</article>")]
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", article)))


def test_the_api_page_shows_every_exported_name_with_its_signature(site):
    import inspect

    import bapo

    text = page_text(site, "api")
    for name in bapo.__all__:
        obj = getattr(bapo, name)
        assert f"bapo.{name}" in text, f"bapo.{name} has no heading"
        if isinstance(obj, type) and issubclass(obj, BaseException):
            continue  # an error's signature is Exception's
        first = next(iter(inspect.signature(obj).parameters), None)
        # the signature as rendered: the real name, then its first parameter
        assert re.search(rf"{obj.__name__}\( ?{first or ''}", text), f"bapo.{name}: no signature"
    # a config field shows its type, its default and its help, read from the option's declaration
    assert "beta: float = 0.1" in text and "Output directory for the adapter" in text
    # Sphinx roles became links, not literal text
    assert ":func:" not in text and ":class:" not in text
    raw = (site / "api" / "index.html").read_text()
    assert 'href="#bapo.core.losses.preference_loss"' in raw


def test_the_configuration_reference_lists_every_field_of_every_command(site):
    import dataclasses

    from bapo.cli import CONFIG_COMMANDS
    from bapo.options import cli_fields, field_docs

    text = page_text(site, "configuration")
    for name, cls in CONFIG_COMMANDS.items():
        section = text[text.index(f"bapo {name}¶ Config:"):]
        for d in field_docs(cls):
            assert d.path in section, (name, d.path)
        for f in cli_fields(cls):  # every flag the command takes, beside its YAML field
            assert f"{' '.join(f.flags)} {f.path} " in section, (name, f.flags, f.path)
    # a field reached by YAML alone is listed too (a section the command line leaves out)
    assert all(dataclasses.is_dataclass(c) for c in CONFIG_COMMANDS.values())
    for hand in ("bapo report", "bapo export adapter", "bapo data fetch"):
        assert hand in text


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text) < 10_000 and "make test" in text and "](docs/training.md)" in text  # it links the pages


def test_a_broken_link_fails_the_build(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\nSee [nowhere](missing.md).\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: t\nstrict: true\n")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=tmp_path, capture_output=True,
                       text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0 and "missing.md" in r.stderr


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed (apt-get install chromium)")
def test_the_home_page_renders_in_headless_chromium(site, tmp_path):
    from tests.helpers import screenshot

    img = screenshot(site / "index.html", tmp_path)
    assert img.shape[:2] == (1600, 1200) and img[..., :3].std() > 0.05  # text and tables drawn, not a blank page


def test_the_sites_home_is_the_readme_with_its_links_made_relative(site):
    home = (site / "index.html").read_text()
    readme = (ROOT / "README.md").read_text()
    heading = next(line for line in readme.splitlines() if line.startswith("## Five minutes"))[3:]
    assert heading in home and "front doors are one text" not in home  # the README, not docs/index.md's placeholder
    assert 'href="training/"' in home and 'href="docs/training.md"' not in home


def test_the_home_follows_the_readme_as_it_changes(tmp_path):
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "mkdocs_hooks.py", tmp_path)
    shutil.copy(ROOT / "docs" / "index.md", tmp_path / "docs")
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n")
    (tmp_path / "README.md").write_text("# t\n\nA sentence written today. See [the guide](docs/guide.md).\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: t\nstrict: true\nhooks: [mkdocs_hooks.py]\n")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=tmp_path, capture_output=True,
                       text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-3000:]
    home = (tmp_path / "site" / "index.html").read_text()
    assert "A sentence written today." in home and 'href="guide/"' in home


USER_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_user_pages_name_no_issue_numbers():
    """Pages are written for users, who cannot see this project's tracker."""
    hits = [f"{p.name}:{i}" for p in USER_PAGES for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"\bissues? \d+", line, re.IGNORECASE)]
    assert not hits, hits


def test_results_and_performance_open_with_a_table_of_what_holds_now():
    for page, header in (("RESULTS.md", "| question | finding | strength of evidence | section |"),
                         ("PERFORMANCE.md", "| what | peer | bapo's speed-up (min / med / max) | dtype | date | command |")):
        text = (ROOT / "docs" / page).read_text()
        first_section = text.index("\n## ")
        assert text.index(header) < text.index("\n## ", first_section + 1), f"{page}: the table is not first"


def test_the_readmes_python_example_does_what_its_cli_lines_do():
    text = (ROOT / "README.md").read_text()
    cli = re.search(r"bapo train --data alice.jsonl --out adapters/alice --forgetting-budget (\S+)", text)
    python = text[text.index("```python"):]
    python = python[:python.index("```", 3)]
    assert cli and f'spec="{cli[1]}"' in python and 'path="alice.jsonl"' in python and '"adapters/alice"' in python
    assert "bapo.evaluate(" in python and "bapo.report(" in python
