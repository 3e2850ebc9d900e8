"""Helpers for the site/slides tests: a small course tree to build, and a headless-Chromium check
of a served page (what MathJax typeset, which images decoded, what the page fetched)."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import nbformat


def png_bytes(width: int = 40, height: int = 30) -> bytes:
    """A valid RGB PNG of a red rectangle (the stored figure of the fixture notebook)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


#: The text the fixture notebook stored as the output of ``print(1 + 1)``: a site that shows it
#: rendered the stored output; one that re-executed the notebook would show ``2``.
STORED_MARK = "stored-output-not-recomputed"

PROBLEM_MD = r"""# Problem set 01 (sample)

```{exercise} The score function has mean zero
:label: ex-eglp

Show that $\mathbb{E}_{a \sim \pi_\theta}[\nabla_\theta \log \pi_\theta(a)] = 0$.
```

```{solution} ex-eglp
$$\sum_a \pi_\theta(a) \nabla_\theta \log \pi_\theta(a) = \nabla_\theta \sum_a \pi_\theta(a) = \nabla_\theta 1 = 0.$$
SOLUTION-BODY-MARK
```
"""


def make_course(root: Path, *, problems: bool = True, slideshow_metadata: bool = False) -> Path:
    """A minimal course tree under ``root``: README.md, LECTURES.md, one lecture notebook with a
    stored figure and a stored (deliberately wrong) text output, and, optionally, a problem set."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("# Sample course\n\nSee [the lectures](LECTURES.md) and "
                                    "[the code](pkg/code.py).\n\n$$J(\\theta) = \\mathbb{E}[R]$$\n")
    (root / "LECTURES.md").write_text("# Lectures\n\n1. The policy gradient, $\\nabla_\\theta J$.\n")
    (root / "pkg").mkdir(exist_ok=True)
    (root / "pkg" / "code.py").write_text("x = 1\n")
    nb = nbformat.v4.new_notebook()
    cells = [
        nbformat.v4.new_markdown_cell("# 01 · Sample lecture\n\nThe objective $J(\\theta)$."),
        nbformat.v4.new_markdown_cell("## 1. A section\n\n$$\\nabla_\\theta J = \\mathbb{E}[R \\nabla \\log p]$$"),
        nbformat.v4.new_code_cell("print(1 + 1)", outputs=[nbformat.v4.new_output("stream", text=STORED_MARK + "\n")],
                                  execution_count=1),
        nbformat.v4.new_markdown_cell("### 1.1 A sub-section\n\nText."),
        nbformat.v4.new_code_cell("plot()", execution_count=2, outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": base64.b64encode(png_bytes()).decode(), "text/plain": "<Figure>"})]),
        nbformat.v4.new_markdown_cell("## 2. Another section\n\nMore text."),
    ]
    if slideshow_metadata:
        for c, kind in zip(cells, ["slide", "-", "fragment", "-", "-", "skip"]):
            c.metadata["slideshow"] = {"slide_type": kind}
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (root / "notebooks").mkdir(exist_ok=True)
    nbformat.write(nb, root / "notebooks" / "01_sample.ipynb")
    if problems:
        (root / "problems").mkdir(exist_ok=True)
        (root / "problems" / "01_sample.md").write_text(PROBLEM_MD)
    return root


# --------------------------------------------------------------------------------------------
# Serving and headless Chromium
# --------------------------------------------------------------------------------------------

def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Server:
    """``http.server`` on 127.0.0.1 (a free port), serving ``directory`` from a thread."""

    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# The check page: it loads the page under test in a same-origin iframe, waits for the page's load
# event and for MathJax to finish typesetting (MathJax.startup.promise), then writes what it found
# into <pre id="result"> as JSON -- Chromium's --dump-dom prints it.
CHECK_HTML = r"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>check</title></head><body>
<pre id="result">pending</pre>
<iframe id="page" width="1280" height="900"></iframe>
<script>
const target = new URLSearchParams(location.search).get('page');
const frame = document.getElementById('page');
const out = document.getElementById('result');
function report(r) { out.textContent = JSON.stringify(r); }
frame.addEventListener('load', () => {
  const w = frame.contentWindow, d = frame.contentDocument;
  const typeset = (w.MathJax && w.MathJax.startup && w.MathJax.startup.promise) || Promise.resolve();
  typeset.then(() => new Promise(ok => setTimeout(ok, 300))).then(() => {
    const clone = d.body.cloneNode(true);
    clone.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight').forEach(e => e.remove());
    report({
      url: w.location.href,
      title: d.title,
      mathjax: !!(w.MathJax && w.MathJax.version), mathjax_version: w.MathJax && w.MathJax.version,
      mjx: d.querySelectorAll('mjx-container').length,
      mjx_errors: d.querySelectorAll('mjx-merror').length,
      math_spans: d.querySelectorAll('span.math, div.math').length,
      math_spans_typeset: [...d.querySelectorAll('span.math, div.math')].filter(e => e.querySelector('mjx-container')).length,
      text: clone.textContent,
      images: [...d.images].map(i => ({src: i.currentSrc || i.src, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight})),
      scripts: [...d.querySelectorAll('script[src]')].map(s => s.src),
      stylesheets: [...d.querySelectorAll('link[href]')].map(l => l.href),
      resources: w.performance.getEntriesByType('resource').map(e => e.name),
      solutions: [...d.querySelectorAll('.admonition.solution')].map(s => ({
        classes: s.className,
        button: !!s.querySelector('button.toggle-button'),
        body_visible: [...s.children].filter(c => !c.classList.contains('admonition-title') && c.tagName !== 'BUTTON')
                         .some(c => w.getComputedStyle(c).visibility === 'visible' && c.getBoundingClientRect().height > 0),
      })),
      reveal: !!(w.Reveal && w.Reveal.isReady && w.Reveal.isReady()),
      reveal_slides: w.Reveal && w.Reveal.getTotalSlides ? w.Reveal.getTotalSlides() : null,
    });
  }, err => report({error: String(err)}));
});
frame.src = target;
</script></body></html>
"""


def chromium(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """Run headless Chromium with every host but 127.0.0.1 unresolvable (a page that needed the
    network fails to load it), as root without its sandbox, with a throw-away profile."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("chromium not found: apt-get install -y --no-install-recommends chromium")
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"rlcourse-chromium-{os.getpid()}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def check_page(server: Server, check_url_path: str, page_path: str) -> dict:
    """Load ``page_path`` through the check page (``check_url_path``, a copy of CHECK_HTML in the
    served directory) and return its JSON report."""
    url = f"{server.base}{check_url_path}?page={page_path}"
    proc = chromium(["--virtual-time-budget=60000", "--window-size=1400,1000", "--dump-dom", url])
    start = proc.stdout.find('<pre id="result">')
    if start < 0:
        raise AssertionError(f"chromium printed no DOM for {url} (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
    end = proc.stdout.find("</pre>", start)
    raw = proc.stdout[start + len('<pre id="result">'):end]
    import html as _html
    raw = _html.unescape(raw)
    if raw == "pending":
        raise AssertionError(f"{page_path}: the page did not finish loading/typesetting in Chromium")
    return json.loads(raw)


def screenshot(server: Server, page_path: str, png: Path, size=(1280, 860)) -> Path:
    proc = chromium(["--virtual-time-budget=30000", f"--window-size={size[0]},{size[1]}",
                     f"--screenshot={png}", f"{server.base}{page_path}"])
    if not png.is_file():
        raise AssertionError(f"no screenshot of {page_path} (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
    return png
