"""The course website and the slides in a real browser (headless Chromium, Debian's package).

The site is built from the repository into a temporary directory, served by ``http.server`` on
127.0.0.1, and loaded in Chromium with every other host unresolvable. From the DOM Chromium dumps
(through a same-origin check page, ``sitekit.CHECK_HTML``) the tests assert that MathJax typeset
every equation from the local copy, that no TeX is left raw, that every image decoded (natural
width > 0) from a file of the build, and that the page fetched nothing outside 127.0.0.1; they
also take screenshots and check they are not blank. The checks themselves are shown to fail on a
page that loads MathJax from a CDN, has raw TeX and a broken image (negative control).

Skipped only when chromium is absent and ``CI`` is unset: in CI (``.ci/run`` installs chromium)
a missing browser fails the tests.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from sitekit import CHECK_HTML, Server, check_page, chromium_path, make_course, screenshot

pytestmark = pytest.mark.skipif(chromium_path() is None and not os.environ.get("CI"),
                                reason="chromium is not installed (CI installs it and runs these tests)")

REPO = Path(__file__).resolve().parents[1]
RAW_TEX = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\$[^$\s][^$]*\\[A-Za-z]+[^$]*\$")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The repository's site and slides, plus a small course with a problem set, built and served."""
    from rlcourse import site

    if chromium_path() is None:
        pytest.fail("CI is set but chromium is not installed: apt-get install -y --no-install-recommends chromium")
    base = tmp_path_factory.mktemp("served")
    built = {
        "site": site.build_site(base / "site"),
        "slides": site.build_slides(base / "slides", ["02"]),
        "sample": site.build_site(base / "sample", root=make_course(base / "sample-src")),
    }
    (base / "check.html").write_text(CHECK_HTML)
    with Server(base) as server:
        yield server, base, built


def _local_file(base: Path, server, url: str) -> Path | None:
    """The file of the build a same-origin URL points at (None for data: URLs)."""
    if url.startswith("data:"):
        return None
    u = urlparse(url)
    assert u.hostname == "127.0.0.1" and u.port == server.port, url
    return base / unquote(u.path).lstrip("/")


def assert_offline_and_loaded(report: dict, server, base: Path) -> None:
    """Everything the page fetched, and every script and stylesheet it names, is on 127.0.0.1 (or
    inline data); every image decoded and, unless inline, is a file of the build."""
    outside = [u for u in report["resources"] + report["scripts"] + report["stylesheets"]
               if not u.startswith(server.base + "/") and not u.startswith("data:")]
    assert not outside, f"{report['url']} loads from outside 127.0.0.1: {outside}"
    for img in report["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, f"{report['url']}: image did not load: {img}"
        f = _local_file(base, server, img["src"])
        assert f is None or f.is_file(), f"{report['url']}: image {img['src']} is not a file of the build"


def assert_typeset(report: dict, min_equations: int) -> None:
    assert report["mathjax"], f"{report['url']}: MathJax did not run"
    assert report["mjx"] >= min_equations, f"{report['url']}: {report['mjx']} typeset equations, expected >= {min_equations}"
    assert report["mjx_errors"] == 0, f"{report['url']}: {report['mjx_errors']} MathJax errors"
    assert report["math_spans"] == report["math_spans_typeset"], report
    raw = RAW_TEX.findall(report["text"])
    assert not raw, f"{report['url']}: raw TeX left in the page: {raw[:5]}"


def assert_not_blank(png: Path) -> None:
    import matplotlib.image as mpimg

    pixels = mpimg.imread(png)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 600, pixels.shape
    assert pixels[..., :3].std() > 0.02, f"{png} is blank"


def test_site_has_a_page_per_notebook_and_the_lecture_pages(served):
    server, base, built = served
    res = built["site"]
    assert len(res.notebook_pages) >= 10, res.pages
    assert res.warnings == [], res.warnings
    for nb in res.notebook_pages:
        assert (base / "site" / nb).with_suffix(".html").is_file(), nb


def test_index_page_loads_offline_and_its_figures_decode(served, tmp_path):
    server, base, _ = served
    report = check_page(server, "/check.html", "/site/index.html")  # a redirect to README.html
    assert report["url"].endswith("/site/README.html"), report["url"]
    assert_offline_and_loaded(report, server, base)
    assert report["text"].count("rlcourse") > 3
    readme_images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (REPO / "README.md").read_text())
    shown = [i["src"] for i in report["images"] if "/_images/" in i["src"]]
    assert len(shown) == len(readme_images), (readme_images, shown)  # every README image, decoded (checked above)
    assert_not_blank(screenshot(server, "/site/README.html", tmp_path / "index.png"))


def test_notebook_page_typesets_every_equation_and_shows_its_stored_figures(served, tmp_path):
    server, base, _ = served
    report = check_page(server, "/check.html", "/site/notebooks/02_policy_gradient.html")
    assert report["mathjax_version"].startswith("3."), report["mathjax_version"]
    assert_typeset(report, min_equations=20)
    assert_offline_and_loaded(report, server, base)
    figures = [i for i in report["images"] if "/_images/" in i["src"]]
    assert len(figures) >= 3, report["images"]  # the notebook stores three figures
    assert any("/_static/mathjax/" in r for r in report["resources"])
    assert_not_blank(screenshot(server, "/site/notebooks/02_policy_gradient.html", tmp_path / "nb.png"))


def test_slide_deck_runs_reveal_and_typesets_offline(served, tmp_path):
    server, base, built = served
    deck = built["slides"].decks[0].name
    report = check_page(server, "/check.html", f"/slides/{deck}")
    assert report["reveal"], "reveal.js did not initialise"
    assert report["reveal_slides"] >= 10, report["reveal_slides"]
    assert_typeset(report, min_equations=20)
    assert_offline_and_loaded(report, server, base)
    assert len(report["images"]) >= 3  # the stored figures, inline
    assert any("/_static/reveal.js/dist/reveal.js" in r for r in report["resources"])
    assert_not_blank(screenshot(server, f"/slides/{deck}", tmp_path / "deck.png"))


def test_problem_set_solutions_are_folded_behind_a_button(served):
    server, base, _ = served
    report = check_page(server, "/check.html", "/sample/problems/01_sample.html")
    assert_typeset(report, min_equations=2)
    assert_offline_and_loaded(report, server, base)
    assert len(report["solutions"]) == 1, report["solutions"]
    sol = report["solutions"][0]
    assert sol["button"] and not sol["body_visible"], sol
    assert "SOLUTION-BODY-MARK" in (base / "sample" / "problems" / "01_sample.html").read_text()


def test_the_courses_problem_sets_fold_every_solution(served):
    server, base, built = served
    sets = [p for p in built["site"].pages.get("Problem sets", []) if not p.endswith("index.md")]
    if not sets:
        pytest.skip("the repository has no problem sets yet (problems/NN_*.md)")
    page = "/site/" + sets[0].replace(".md", ".html")
    report = check_page(server, "/check.html", page)
    assert_typeset(report, min_equations=5)
    assert_offline_and_loaded(report, server, base)
    assert len(report["solutions"]) >= 3, page
    for sol in report["solutions"]:
        assert sol["button"] and not sol["body_visible"], (page, sol)


def test_sample_notebook_page_shows_stored_outputs(served):
    server, base, _ = served
    report = check_page(server, "/check.html", "/sample/notebooks/01_sample.html")
    assert "stored-output-not-recomputed" in (base / "sample" / "notebooks" / "01_sample.html").read_text()
    assert_typeset(report, min_equations=2)
    assert_offline_and_loaded(report, server, base)
    assert [i["w"] for i in report["images"] if "/_images/" in i["src"]] == [40]


def test_checks_reject_a_page_with_a_cdn_script_raw_tex_and_a_broken_image(served):
    """Negative control: the same checks fail on a page that needs the network and a missing file."""
    server, base, _ = served
    bad = base / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "page.html").write_text(
        '<!DOCTYPE html><html><head><title>bad</title>'
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script></head>'
        '<body><p>$$\\int_0^1 x\\,dx$$ and \\(a^2\\)</p><img src="missing.png">'
        '<div class="admonition solution"><p class="admonition-title">Solution</p><p>shown</p></div></body></html>')
    report = check_page(server, "/check.html", "/bad/page.html")
    assert report["solutions"] == [{"classes": "admonition solution", "button": False, "body_visible": True}]
    with pytest.raises(AssertionError, match="outside 127.0.0.1"):
        assert_offline_and_loaded(report, server, base)
    report["scripts"] = report["resources"] = []
    with pytest.raises(AssertionError, match="image did not load"):
        assert_offline_and_loaded(report, server, base)
    with pytest.raises(AssertionError, match="MathJax did not run"):
        assert_typeset(report, min_equations=1)
    report.update(mathjax=True, mjx=5)
    with pytest.raises(AssertionError, match="raw TeX"):
        assert_typeset(report, min_equations=1)
    shutil.rmtree(bad)
