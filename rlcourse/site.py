"""The course website and the lecture slides, built offline: ``rlcourse site`` and ``rlcourse slides``.

``rlcourse slides [--out DIR] [NN ...]`` turns each lecture notebook (``notebooks/NN_*.ipynb``), as
stored -- outputs included, nothing re-executed, the file on disk untouched -- into one reveal.js
deck with nbconvert's ``SlidesExporter``. Cells that carry nbconvert's slideshow metadata
(``cell.metadata.slideshow.slide_type``) keep it; a notebook without any is cut at its headings by
:class:`HeadingSlides`: a markdown cell starting with ``#`` or ``##`` opens a new slide, ``###`` a
sub-slide, and every other cell becomes a sub-slide below its heading (down-arrow in reveal.js),
so that a figure or a derivation gets the whole screen.

``rlcourse site [--out DIR]`` builds a static website with Jupyter Book 1 (Sphinx + MyST-NB, the
notebooks rendered with their stored outputs, ``execute_notebooks: off``) from README, LECTURES,
the notebooks, the labs' student versions (``labs/student/*.ipynb``), the problem sets
(``problems/*.md``, sphinx-exercise ``{exercise}``/``{solution}`` blocks, every solution folded
behind a toggle button), SYLLABUS and REFERENCES -- whichever of them exist.

Every script the pages load is served from the output directory: reveal.js from the copy shipped
in the ``sphinx-revealjs`` wheel, MathJax 3 from the copy shipped in the ``django-static-mathjax``
wheel (both PyPI packages of the ``site`` extra). Nothing is fetched at build time, and no page
loads anything from the network (``tests/test_site_browser.py`` checks this in headless Chromium
with every host but 127.0.0.1 unresolvable).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

#: The repository root (README.md, notebooks/ ...): the default source of both builders.
ROOT = Path(__file__).resolve().parents[1]

#: Written into every output directory the builders fill; a non-empty directory without it is
#: never cleared (it is not ours).
MARKER = ".rlcourse-build"

#: The MathJax 3 component every page loads: TeX and MathML input, HTML-CSS output.
MATHJAX_COMPONENT = "tex-mml-chtml.js"

INSTALL_HINT = 'install the site extra: pip install -e ".[site]"'


class MissingDependencyError(ImportError):
    """A package of the ``site`` extra is not installed (the message names the extra)."""


# --------------------------------------------------------------------------------------------
# Local assets: MathJax 3 and reveal.js, from the wheels of the site extra
# --------------------------------------------------------------------------------------------

def _require(module: str, package: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{what} needs the Python package {package!r} ({e}); {INSTALL_HINT}") from e


def mathjax_dir() -> Path:
    """The directory of MathJax 3's combined components (``es5/``) shipped in ``django-static-mathjax``."""
    mod = _require("mathjax", "django-static-mathjax", "the local copy of MathJax")
    d = Path(mod.__file__).parent / "static" / "mathjax" / "es5"
    if not (d / MATHJAX_COMPONENT).is_file():
        raise MissingDependencyError(f"{d / MATHJAX_COMPONENT} not found: the installed 'mathjax' module is not "
                                     f"django-static-mathjax's; {INSTALL_HINT}")
    return d


def revealjs_dir() -> Path:
    """The reveal.js distribution (``dist/``, ``plugin/``) shipped in the ``sphinx-revealjs`` wheel."""
    spec = importlib.util.find_spec("sphinx_revealjs")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(f"the local copy of reveal.js needs the Python package 'sphinx-revealjs'; "
                                     f"{INSTALL_HINT}")
    d = Path(spec.origin).parent / "_static" / "revealjs"
    if not (d / "dist" / "reveal.js").is_file():
        raise MissingDependencyError(f"{d / 'dist' / 'reveal.js'} not found; {INSTALL_HINT}")
    return d


def copy_mathjax(dest: Path) -> Path:
    """Copy MathJax 3 into ``dest``: the one component pages load, plus what it loads on demand
    (TeX extensions, fonts, the accessibility and menu modules). ``latest.js`` -- the loader that
    picks a CDN -- and the other combined components are left out."""
    src = mathjax_dir()
    keep_top = {MATHJAX_COMPONENT, "input", "output", "a11y", "ui", "adaptors", "sre"}

    def ignore(d, names):
        return [n for n in names if Path(d) == src and n not in keep_top]

    shutil.copytree(src, dest, ignore=ignore, dirs_exist_ok=True)
    return dest


def copy_revealjs(dest: Path) -> Path:
    """Copy reveal.js's built files (``dist/``: core, CSS, themes and their fonts; ``plugin/``)."""
    src = revealjs_dir()
    for sub in ("dist", "plugin"):
        shutil.copytree(src / sub, dest / sub, dirs_exist_ok=True)
    lic = src / "LICENSE"
    if lic.is_file():
        shutil.copy2(lic, dest / "LICENSE")
    return dest


# --------------------------------------------------------------------------------------------
# Output directories
# --------------------------------------------------------------------------------------------

def prepare_out(out: Path, arg: str = "--out") -> Path:
    """Make ``out`` an empty directory we own: refuse a file, or a non-empty directory that a
    builder of this module did not make (it could hold anything); clear one that it did."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{arg}: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{arg}: {out} is a non-empty directory that rlcourse did not build; "
                                  f"choose an empty or new directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("built by rlcourse; rebuilt (cleared) by the next build into this directory\n")
    return out


# --------------------------------------------------------------------------------------------
# Slides
# --------------------------------------------------------------------------------------------

_HEADING = re.compile(r"^\s*(#{1,6})\s")


def lecture_notebooks(root: Path = ROOT) -> dict[str, Path]:
    """The lecture notebooks ``notebooks/NN_*.ipynb`` by their number ``NN`` (sorted)."""
    found = {}
    for p in sorted((Path(root) / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        found[p.name[:2]] = p
    return found


def select_lectures(numbers, root: Path = ROOT) -> list[Path]:
    """The notebooks of the lectures ``numbers`` ("1", "01", 1 ...); all of them for None/empty."""
    lectures = lecture_notebooks(root)
    if not lectures:
        raise ValueError(f"no lecture notebooks (notebooks/NN_*.ipynb) under {root}")
    if not numbers:
        return list(lectures.values())
    chosen = []
    for n in numbers:
        key = str(n).strip()
        if not key.isdigit():
            raise ValueError(f"lecture: expected a lecture number such as 01, got {n!r}")
        key = f"{int(key):02d}"
        if key not in lectures:
            raise ValueError(f"lecture: no lecture {n!r}; the lectures are {', '.join(lectures)}")
        chosen.append(lectures[key])
    return chosen


def _slide_type(cell) -> str | None:
    return cell.get("metadata", {}).get("slideshow", {}).get("slide_type")


def heading_slide_types(cells) -> list[str]:
    """The slide type nbconvert should give each cell when a notebook has no slideshow metadata:
    ``"slide"`` for a markdown cell starting with a ``#``/``##`` heading (and for the first cell),
    ``"subslide"`` for every other cell (a ``###`` heading, a paragraph, a code cell with its
    output), so each piece gets a screen of its own below the heading it belongs to."""
    types = []
    for i, cell in enumerate(cells):
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        m = _HEADING.match(src) if cell.get("cell_type") == "markdown" else None
        if i == 0 or (m and len(m.group(1)) <= 2):
            types.append("slide")
        else:
            types.append("subslide")
    return types


def _heading_slides_preprocessor():
    from nbconvert.preprocessors import Preprocessor

    class HeadingSlides(Preprocessor):
        """Give every cell a slide type from the headings (:func:`heading_slide_types`), unless the
        notebook already has slideshow metadata, which is then kept as the author set it. Works on
        the in-memory copy nbconvert passes along: the stored notebook is not modified."""

        def preprocess(self, nb, resources):
            if any(_slide_type(c) for c in nb.cells):
                return nb, resources
            for cell, kind in zip(nb.cells, heading_slide_types(nb.cells)):
                cell.metadata.setdefault("slideshow", {})["slide_type"] = kind
            return nb, resources

    return HeadingSlides


# The deck template: nbconvert's reveal template with every remote script replaced by a local
# one -- no jQuery, require.js or mermaid from a CDN (nothing in the lectures needs them), MathJax 3
# and reveal.js from files next to the deck.
_DECK_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}
<script>
window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\(', '\\)']], displayMath: [['$$', '$$'], ['\\[', '\\]']],
        processEscapes: true, processEnvironments: true},
  options: {ignoreHtmlClass: 'tex2jax_ignore', processHtmlClass: 'tex2jax_process'}
};
</script>
<script defer src="{{ resources.rlcourse.mathjax }}"></script>
<style>
/* a sub-slide taller than the screen scrolls instead of overflowing */
.reveal .slides section section { max-height: 100%; overflow-y: auto; }
.reveal .jp-RenderedImage img { max-height: 560px; width: auto; }
</style>
{%- endblock html_head_js_mathjax -%}
{% block footer_js %}
<script src="{{ resources.reveal.url_prefix }}/dist/reveal.js"></script>
<script src="{{ resources.reveal.url_prefix }}/plugin/notes/notes.js"></script>
<script>
Reveal.initialize({
  controls: true, progress: true, history: true, center: false,
  transition: "{{ resources.reveal.transition | default('slide', true) }}",
  slideNumber: "c/t",
  width: 1280, height: 760,
  plugins: [RevealNotes]
});
</script>
{% endblock footer_js %}
"""


def _slides_exporter(reveal_prefix: str):
    try:
        import jinja2
        from nbconvert import SlidesExporter
    except ImportError as e:  # nbconvert comes with jupyterlab (dev extra)
        raise MissingDependencyError(f"rlcourse slides needs nbconvert ({e}); {INSTALL_HINT}") from e
    exporter = SlidesExporter(
        template_name="reveal",
        template_file="rlcourse_deck.html.j2",
        extra_loaders=[jinja2.DictLoader({"rlcourse_deck.html.j2": _DECK_TEMPLATE})],
        reveal_url_prefix=reveal_prefix,
        reveal_theme="white",
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    exporter.register_preprocessor(_heading_slides_preprocessor()(), enabled=True)
    # nbconvert's own slide grouping runs after ours (it reads the slide types we set)
    from nbconvert.exporters.slides import _RevealMetadataPreprocessor
    exporter._preprocessors = [p for p in exporter._preprocessors if not isinstance(p, _RevealMetadataPreprocessor)]
    exporter.register_preprocessor(_RevealMetadataPreprocessor(), enabled=True)
    return exporter


@dataclass
class SlidesResult:
    out: Path
    decks: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def build_slides(out: Path | str | None = None, lectures=None, root: Path | str = ROOT) -> SlidesResult:
    """Build one reveal.js deck per lecture notebook into ``out`` (default ``build/slides``):
    ``NN_name.slides.html`` plus ``index.html`` listing them, with reveal.js and MathJax copied
    into ``out/_static``. ``lectures``: lecture numbers to build (default all)."""
    import nbformat

    t0 = time.perf_counter()
    root = Path(root)
    notebooks = select_lectures(lectures, root)  # bad numbers fail before anything is written
    mathjax_dir(), revealjs_dir()                # so do missing packages
    exporter = _slides_exporter("_static/reveal.js")
    out = prepare_out(Path(out) if out is not None else root / "build" / "slides")
    copy_revealjs(out / "_static" / "reveal.js")
    copy_mathjax(out / "_static" / "mathjax")
    result = SlidesResult(out=out)
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        resources = {"metadata": {"name": path.stem, "path": str(path.parent)},
                     "rlcourse": {"mathjax": f"_static/mathjax/{MATHJAX_COMPONENT}"}}
        body, _ = exporter.from_notebook_node(nb, resources=resources)
        deck = out / f"{path.stem}.slides.html"
        deck.write_text(body, encoding="utf-8")
        result.decks.append(deck)
    items = "\n".join(f'<li><a href="{d.name}">{escape(_title(root / "notebooks" / (d.name[:-len(".slides.html")] + ".ipynb")))}</a></li>'
                      for d in result.decks)
    (out / "index.html").write_text(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>rlcourse: lecture slides</title></head>\n"
        f"<body><h1>Lecture slides</h1>\n<ul>\n{items}\n</ul>\n"
        "<p>Arrow keys: right for the next section, down for the next screen of a section; "
        "<kbd>Esc</kbd> for the overview, <kbd>S</kbd> for speaker notes.</p></body></html>\n",
        encoding="utf-8")
    result.seconds = time.perf_counter() - t0
    return result


def _title(path: Path) -> str:
    """The first heading of a notebook or markdown file (its file name if it has none)."""
    try:
        if path.suffix == ".ipynb":
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
            texts = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                     for c in cells if c["cell_type"] == "markdown"]
        else:
            texts = [path.read_text(encoding="utf-8")]
    except (OSError, ValueError, KeyError):
        return path.stem
    for text in texts:
        for line in text.splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip()
    return path.stem


# --------------------------------------------------------------------------------------------
# Site
# --------------------------------------------------------------------------------------------

@dataclass
class SiteResult:
    out: Path
    pages: dict[str, list[str]] = field(default_factory=dict)  # part -> source paths (relative)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def notebook_pages(self) -> list[str]:
        return [p for ps in self.pages.values() for p in ps if p.endswith(".ipynb")]


def site_sources(root: Path | str = ROOT) -> dict[str, list[str]]:
    """The documents of the site by part of its table of contents, as paths relative to ``root``;
    optional pieces (labs, problems, syllabus, references) appear only if they exist."""
    root = Path(root)
    if not (root / "README.md").is_file():
        raise ValueError(f"root: {root} has no README.md (the site's home page)")
    course = [n for n in ("LECTURES.md", "SYLLABUS.md", "REFERENCES.md") if (root / n).is_file()]
    parts = {
        "Course": course,
        "Lectures": [f"notebooks/{p.name}" for p in sorted((root / "notebooks").glob("*.ipynb"))],
        "Labs": [f"labs/student/{p.name}" for p in sorted((root / "labs" / "student").glob("*.ipynb"))],
        # an index.md of the problem sets comes first: the part's landing page, the sets below it
        "Problem sets": [f"problems/{p.name}" for p in sorted((root / "problems").glob("*.md"),
                                                              key=lambda p: (p.name != "index.md", p.name))],
    }
    return {k: v for k, v in parts.items() if v}


def _config_yml(title: str) -> dict:
    return {
        "title": title,
        "author": "the rlcourse authors",
        "copyright": "2025",
        "only_build_toc_files": True,
        "exclude_patterns": ["_build", "build", "**.ipynb_checkpoints"],
        "execute": {"execute_notebooks": "off"},
        "parse": {"myst_enable_extensions": ["amsmath", "colon_fence", "dollarmath", "linkify", "substitution"]},
        "html": {"use_repository_button": False, "use_issues_button": False, "use_edit_page_button": False,
                 "home_page_in_navbar": True},
        "launch_buttons": {"notebook_interface": "jupyterlab", "binderhub_url": "", "jupyterhub_url": "",
                           "colab_url": "", "deepnote_url": "", "thebe": False},
        "repository": {"url": "", "path_to_book": "", "branch": "main"},
        "sphinx": {
            "extra_extensions": ["sphinx_exercise"],
            "recursive_update": True,
            "config": {
                # no second search field in a header bar above the book's own sidebar
                "html_theme_options": {"navbar_persistent": []},
                # MathJax 3 from _static (a relative path is taken from there), not a CDN; it is
                # copied in after the build, not staged in the sources' _static, where Jupyter Book
                # would add every .js file to every page
                "mathjax_path": f"mathjax/{MATHJAX_COMPONENT}",
                # every solution of a problem set is folded behind a button
                "togglebutton_selector": ".toggle, .admonition.dropdown, .admonition.solution",
                "togglebutton_hint": "Show solution",
                "togglebutton_hint_hide": "Hide solution",
                "nb_execution_mode": "off",
                "suppress_warnings": ["myst.header", "mystnb.unknown_mime_type"],
            },
        },
    }


def _toc_yml(parts: dict[str, list[str]]) -> dict:
    """The table of contents: one part per entry of ``parts``; a part whose first file is an
    ``index.md`` gets it as its one chapter, with the other files as its sections."""
    def stem(p):
        return str(Path(p).with_suffix(""))

    def chapters(files):
        if len(files) > 1 and Path(files[0]).name == "index.md":
            return [{"file": stem(files[0]), "sections": [{"file": stem(p)} for p in files[1:]]}]
        return [{"file": stem(p)} for p in files]
    return {"format": "jb-book", "root": "README",
            "parts": [{"caption": cap, "chapters": chapters(files)} for cap, files in parts.items()]}


_TOCTREE = re.compile(r"^(`{3,}|:{3,})\{toctree\}.*?^\1[ \t]*\n?", re.MULTILINE | re.DOTALL)


def strip_toctrees(text: str) -> str:
    """A page's own ``{toctree}`` blocks removed (in the staged copy): the site's table of contents
    is its ``_toc.yml``, and a page's toctree (problems/index.md has one, for a build of that
    folder alone) would list its pages a second time in the navigation."""
    return _TOCTREE.sub("", text)


_LINK = re.compile(r"\]\(([^()\s#]+)(?:#[^()\s]*)?\)")


def linked_files(root: Path, docs: list[str]) -> list[str]:
    """Files of the repository that the documents ``docs`` link to with a relative Markdown link
    (``[text](rlcourse/kl.py)``) and that are not pages themselves (``.md``/``.ipynb``): staged
    with the site, they become download links instead of broken ones."""
    root = Path(root).resolve()
    found = set()
    for rel in docs:
        text = (root / rel).read_text(encoding="utf-8")
        for target in _LINK.findall(text):
            if ":" in target or target.startswith("/"):
                continue  # a URL (http:, mailto:) or an absolute path
            p = ((root / rel).parent / target).resolve()
            if p.suffix in (".md", ".ipynb") or not p.is_file() or not p.is_relative_to(root):
                continue
            found.add(p.relative_to(root).as_posix())
    return sorted(found)


def _stage(root: Path, stage: Path, parts: dict[str, list[str]]) -> None:
    """Copy the site's sources into ``stage`` with the repository's layout (so relative links and
    images keep working), plus the configuration and MathJax."""
    import yaml

    files = ["README.md"] + [p for ps in parts.values() for p in ps]
    for rel in files:
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".md"):
            (stage / rel).write_text(strip_toctrees((root / rel).read_text(encoding="utf-8")), encoding="utf-8")
        else:
            shutil.copy2(root / rel, stage / rel)
    for d in ("figures", "docs"):  # images README and the pages point at
        if (root / d).is_dir():
            shutil.copytree(root / d, stage / d, dirs_exist_ok=True)
    for rel in linked_files(root, files):  # source files the pages link to become downloads
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, stage / rel)
    (stage / "_config.yml").write_text(yaml.safe_dump(_config_yml("RL for large language models"), sort_keys=False))
    (stage / "_toc.yml").write_text(yaml.safe_dump(_toc_yml(parts), sort_keys=False))


_LOCAL_ID = re.compile(r"local id not found in doc '([^']+)': '([^']+)'")


def _anchor_exists(out: Path, warning: str) -> bool:
    """MyST warns about a link ``doc.md#id`` unless ``id`` is a heading's slug, although the link
    is written and works when the page has the id from an HTML anchor (``<a id="id"></a>``, as
    REFERENCES.md has for GitHub): such a warning is dropped if the built page has the id."""
    m = _LOCAL_ID.search(warning)
    if not m:
        return False
    page = out / f"{m.group(1)}.html"
    return page.is_file() and f'id="{m.group(2)}"' in page.read_text(encoding="utf-8")


def build_site(out: Path | str | None = None, root: Path | str = ROOT, quiet: bool = True) -> SiteResult:
    """Build the course website into ``out`` (default ``build/site``) with Jupyter Book 1; the
    notebooks are rendered with their stored outputs, never executed. Open ``out/index.html``."""
    import io
    import contextlib

    t0 = time.perf_counter()
    root = Path(root)
    parts = site_sources(root)
    jb_sphinx = _require("jupyter_book.sphinx", "jupyter-book<2", "rlcourse site")
    _require("sphinx_exercise", "sphinx-exercise", "rlcourse site")
    mathjax_dir()
    out = prepare_out(Path(out) if out is not None else root / "build" / "site")
    result = SiteResult(out=out, pages=parts)
    with tempfile.TemporaryDirectory(prefix="rlcourse-site-") as tmp:
        stage = Path(tmp) / "src"
        stage.mkdir()
        _stage(root, stage, parts)
        log = io.StringIO()
        with contextlib.redirect_stderr(log):
            status = jb_sphinx.build_sphinx(
                stage, out, path_config=str(stage / "_config.yml"), doctreedir=Path(tmp) / "doctrees",
                confoverrides={"external_toc_path": (stage / "_toc.yml").as_posix(), "latex_individualpages": False},
                noconfig=True, quiet=quiet, freshenv=True)
        result.warnings = [ln for ln in log.getvalue().splitlines()
                           if ("WARNING" in ln or "ERROR" in ln) and not _anchor_exists(out, ln)]
        if status != 0:
            raise RuntimeError(f"the site build failed ({status!r}):\n{log.getvalue()[-4000:]}")
    copy_mathjax(out / "_static" / "mathjax")
    if not (out / "index.html").is_file():  # sphinx-external-toc writes this redirect to the root page
        (out / "index.html").write_text('<!DOCTYPE html>\n<meta http-equiv="Refresh" content="0; url=README.html" />\n',
                                        encoding="utf-8")
    (out / ".nojekyll").write_text("")
    result.seconds = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def cmd_slides(args) -> int:
    import sys
    try:
        res = build_slides(args.out, args.lectures)
    except (ValueError, FileExistsError, MissingDependencyError) as e:
        print(f"rlcourse slides: {e}", file=sys.stderr)
        return 2
    for d in res.decks:
        print(d)
    print(f"{len(res.decks)} decks in {res.out} ({res.seconds:.1f} s); open {res.out / 'index.html'}")
    return 0


def cmd_site(args) -> int:
    import sys
    try:
        res = build_site(args.out, quiet=not args.verbose)
    except (ValueError, FileExistsError, MissingDependencyError, RuntimeError) as e:
        print(f"rlcourse site: {e}", file=sys.stderr)
        return 2
    n = sum(len(v) for v in res.pages.values()) + 1
    print(f"{n} pages ({len(res.notebook_pages)} notebooks; "
          + ", ".join(f"{k}: {len(v)}" for k, v in res.pages.items())
          + f") in {res.out} ({res.seconds:.1f} s, {len(res.warnings)} warnings); open {res.out / 'index.html'}")
    if args.verbose:
        for w in res.warnings:
            print(w)
    return 0


def add_subcommands(subparsers) -> None:
    """Add ``site`` and ``slides`` to the ``rlcourse`` command line."""
    s = subparsers.add_parser("site", help="build the course website (static HTML, offline) with Jupyter Book")
    s.add_argument("--out", default=None, help="output directory (default: build/site); rebuilt if rlcourse built it")
    s.add_argument("--verbose", action="store_true", help="show Sphinx's progress and warnings")
    s.set_defaults(func=cmd_site)
    d = subparsers.add_parser("slides", help="build one reveal.js deck per lecture notebook (offline)")
    d.add_argument("lectures", nargs="*", metavar="NN", help="lecture numbers (default: every lecture)")
    d.add_argument("--out", default=None, help="output directory (default: build/slides); rebuilt if rlcourse built it")
    d.set_defaults(func=cmd_slides)
