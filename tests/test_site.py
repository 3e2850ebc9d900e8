"""``rlcourse slides`` and ``rlcourse site`` without a browser: what they build from which sources,
that the stored notebooks are neither modified nor executed, that every script and stylesheet is
a local file of the build, and the errors for bad input. (The browser checks are in
``test_site_browser.py``.)"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from rlcourse import cli
from sitekit import STORED_MARK, make_course

from rlcourse import site

# Skipped where the site extra is not installed, except in CI, which installs it (".[dev,site]").
pytestmark = pytest.mark.skipif(importlib.util.find_spec("jupyter_book") is None and not os.environ.get("CI"),
                                reason='the site extra is not installed: pip install -e ".[site]"')

REPO = Path(__file__).resolve().parents[1]


class _Refs(HTMLParser):
    """Every URL an HTML page loads by itself: script src, link href, img src, iframe src."""

    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        key = {"script": "src", "link": "href", "img": "src", "iframe": "src"}.get(tag)
        if key and a.get(key):
            self.refs.append((tag, a[key]))


def loaded_refs(html: str) -> list[tuple[str, str]]:
    p = _Refs()
    p.feed(html)
    return p.refs


def assert_all_local(page: Path) -> int:
    """Every script, stylesheet and image ``page`` names is a relative path to an existing file
    (or inline data); returns how many scripts it loads."""
    refs = loaded_refs(page.read_text(encoding="utf-8"))
    for tag, url in refs:
        if url.startswith("data:"):
            continue
        assert "://" not in url and not url.startswith("//"), f"{page.name}: <{tag}> loads {url} from the network"
        target = (page.parent / url.split("?")[0].split("#")[0]).resolve()
        assert target.is_file(), f"{page.name}: <{tag}> {url} is not a file of the build"
    return sum(tag == "script" for tag, _ in refs)


# --------------------------------------------------------------------------------------------
# slides
# --------------------------------------------------------------------------------------------

def test_heading_slide_types_cut_at_the_top_two_heading_levels():
    cells = [nbformat.v4.new_markdown_cell(s) for s in ("# Title\ntext", "text", "## Section", "### Sub", "#no space")]
    cells.insert(2, nbformat.v4.new_code_cell("# a comment, not a heading"))
    assert site.heading_slide_types(cells) == ["slide", "subslide", "subslide", "slide", "subslide", "subslide"]
    # the first cell always opens the deck, heading or not
    assert site.heading_slide_types([nbformat.v4.new_code_cell("x = 1")]) == ["slide"]


def _sections(html: str) -> int:
    return html.count("<section")


def test_deck_has_one_slide_per_heading_and_a_subslide_per_other_cell(tmp_path):
    root = make_course(tmp_path / "course")
    res = site.build_slides(tmp_path / "out", root=root)
    html = res.decks[0].read_text()
    # 2 slides (# and the two ## headings make 3 top-level slides), each a <section> of sub-slides:
    # slide 1: title; slide 2: "## 1." + code + "### 1.1" + figure; slide 3: "## 2."
    assert _sections(html) == 3 + 1 + 4 + 1
    assert STORED_MARK in html and "data:image/png;base64," in html


def test_deck_keeps_the_authors_slideshow_metadata(tmp_path):
    root = make_course(tmp_path / "course", slideshow_metadata=True)
    html = site.build_slides(tmp_path / "out", root=root).decks[0].read_text()
    # one slide; the code cell is a fragment; the last cell is skipped
    assert _sections(html) == 2
    assert 'class="fragment"' in html
    assert "Another section" not in html


def test_slides_load_reveal_and_mathjax_from_local_files(tmp_path):
    res = site.build_slides(tmp_path / "out", ["2"])
    assert [d.name for d in res.decks] == ["02_policy_gradient.slides.html"]
    deck = res.decks[0]
    assert assert_all_local(deck) == 3  # MathJax, reveal.js, its notes plugin
    html = deck.read_text()
    assert "_static/reveal.js/dist/reveal.js" in html and f"_static/mathjax/{site.MATHJAX_COMPONENT}" in html
    assert "require.js" not in html and "jquery" not in html.lower()
    assert (res.out / "index.html").read_text().count("<li>") == 1


def test_every_lecture_gets_a_deck_and_the_notebooks_are_not_modified(tmp_path):
    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in notebooks}
    res = site.build_slides(tmp_path / "out")
    assert len(res.decks) == len(notebooks) >= 10
    for deck in res.decks:
        assert _sections(deck.read_text()) >= 10, deck.name
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in notebooks} == before


def test_slides_reject_an_unknown_lecture(capsys, tmp_path):
    assert cli.main(["slides", "99", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "99" in err and "01" in err  # what was asked, and what exists
    assert not (tmp_path / "o").exists()  # nothing written
    with pytest.raises(ValueError, match="lecture number"):
        site.select_lectures(["two"])


# --------------------------------------------------------------------------------------------
# output directory and dependencies
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["slides", "site"])
def test_out_that_is_a_file_is_refused(command, tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    assert cli.main([command, "--out", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert f.read_text() == "keep me"


def test_a_foreign_non_empty_directory_is_refused_and_our_own_is_rebuilt(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="did not build"):
        site.prepare_out(foreign)
    assert (foreign / "thesis.tex").read_text() == "keep me"
    ours = site.prepare_out(tmp_path / "ours")
    (ours / "stale.html").write_text("old")
    site.prepare_out(ours)
    assert not (ours / "stale.html").exists() and (ours / site.MARKER).is_file()


def test_missing_packages_name_the_extra_to_install(monkeypatch, tmp_path, capsys):
    import importlib

    real = importlib.import_module

    def no_jupyter_book(name, *a, **k):
        if name.startswith("jupyter_book") or name == "mathjax":
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_jupyter_book)
    assert cli.main(["site", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "jupyter-book" in err and '".[site]"' in err
    with pytest.raises(site.MissingDependencyError, match="django-static-mathjax"):
        site.mathjax_dir()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(site.MissingDependencyError, match="sphinx-revealjs.*site"):
        site.revealjs_dir()


def test_mathjax_copy_has_the_component_and_its_fonts_but_no_cdn_loader(tmp_path):
    d = site.copy_mathjax(tmp_path / "mj")
    assert (d / site.MATHJAX_COMPONENT).is_file()
    assert (d / "output" / "chtml" / "fonts" / "woff-v2" / "MathJax_Main-Regular.woff").is_file()
    assert (d / "input" / "tex" / "extensions" / "boldsymbol.js").is_file()  # autoloaded on demand
    assert not (d / "latest.js").exists()  # picks a CDN


# --------------------------------------------------------------------------------------------
# site
# --------------------------------------------------------------------------------------------

def test_site_sources_include_optional_parts_only_when_present(tmp_path):
    root = make_course(tmp_path / "c", problems=False)
    assert set(site.site_sources(root)) == {"Course", "Lectures"}
    (root / "labs" / "student").mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Lab")]),
                   root / "labs" / "student" / "lab01.ipynb")
    (root / "SYLLABUS.md").write_text("# Syllabus\n")
    parts = site.site_sources(root)
    assert parts["Labs"] == ["labs/student/lab01.ipynb"] and "SYLLABUS.md" in parts["Course"]
    with pytest.raises(ValueError, match="README"):
        site.site_sources(tmp_path / "empty")


def test_site_renders_stored_outputs_problem_sets_and_local_assets_only(tmp_path):
    root = make_course(tmp_path / "course")
    nb_path = root / "notebooks" / "01_sample.ipynb"
    before = nb_path.read_bytes()
    res = site.build_site(tmp_path / "out", root=root)
    out = res.out
    assert res.warnings == []
    assert (out / "index.html").is_file() and "README.html" in (out / "index.html").read_text()
    page = out / "notebooks" / "01_sample.html"
    # the stored output (which running the cell would replace by "2"), the stored figure as a file
    assert STORED_MARK in page.read_text()
    assert list((out / "_images").glob("*.png"))
    assert nb_path.read_bytes() == before
    problems = (out / "problems" / "01_sample.html").read_text()
    assert 'class="solution admonition"' in problems and "SOLUTION-BODY-MARK" in problems
    # the README's link to a source file became a download, not a broken link
    assert list((out / "_downloads").glob("*/code.py"))
    for p in [out / "README.html", page, out / "problems" / "01_sample.html"]:
        assert assert_all_local(p) > 5
        assert f"_static/mathjax/{site.MATHJAX_COMPONENT}" in p.read_text()
    assert (out / "_static" / "mathjax" / site.MATHJAX_COMPONENT).is_file()
    # solutions are folded: sphinx-togglebutton is told to treat every solution as a toggle
    assert ".admonition.solution" in problems


def test_local_asset_check_rejects_a_cdn_script(tmp_path):
    """Negative control for assert_all_local."""
    page = tmp_path / "p.html"
    page.write_text('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>')
    with pytest.raises(AssertionError, match="from the network"):
        assert_all_local(page)
    page.write_text('<img src="missing.png">')
    with pytest.raises(AssertionError, match="not a file"):
        assert_all_local(page)


def test_a_pages_own_toctree_is_dropped_and_a_problem_index_leads_its_part(tmp_path):
    text = "# Sets\n\nintro\n\n```{toctree}\n:hidden:\n\n01_a\n```\n\nafter\n\n:::{toctree}\n02_b\n:::\n"
    assert site.strip_toctrees(text) == "# Sets\n\nintro\n\n\nafter\n\n"
    assert site.strip_toctrees("```python\n{toctree}\n```\n") == "```python\n{toctree}\n```\n"  # code untouched
    root = make_course(tmp_path / "c")
    (root / "problems" / "index.md").write_text("# Problem sets\n\n```{toctree}\n01_sample\n```\n")
    parts = site.site_sources(root)
    assert parts["Problem sets"] == ["problems/index.md", "problems/01_sample.md"]
    toc = site._toc_yml(parts)
    problems = [p for p in toc["parts"] if p["caption"] == "Problem sets"][0]
    assert problems["chapters"] == [{"file": "problems/index", "sections": [{"file": "problems/01_sample"}]}]
