"""The HTML stage reports, opened in a real (headless) browser the way a reviewer opens them.

For every ``reports/NN_<stage>.html`` of a real ``dvc repro`` run: its figures are embedded
PNGs, its section headings are there and no code/tracebacks/warnings leak into it (checked on
the file, with no browser); then the page opened in headless Chromium shows the same figures and
headings, and a screenshot shows actual content rather than a blank page. The browser tests
skip, with the reason, only where no Chromium-family browser is installed, and fail there in CI.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import missing_tool
from PIL import Image

pytestmark = pytest.mark.slow

#: Browsers tried in order: Debian's chromium, then what GitHub's Ubuntu images ship.
BROWSERS = ("chromium", "/usr/bin/chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
WINDOW = (1280, 4000)
#: Per report: the least number of embedded PNG figures and headings that must be present.
EXPECTED = {
    "01_download": (1, ["Download", "What was downloaded", "Class balance"]),
    "02_eda_preprocess": (5, ["Exploratory analysis", "Class distribution", "Correlations", "Outliers",
                              "2-D projections", "Preprocessing"]),
    "03_train": (1, ["Train", "Candidate search", "Threshold", "Final model"]),
    "04_evaluate": (3, ["Evaluate", "Test split", "yardstick", "seed project", "Why alerts fire"]),
}
#: A longer table is a DataFrame dumped whole by mistake, not something a reviewer reads.
MAX_TABLE_ROWS = 50
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def find_browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser binary; requested before ``pipeline_run`` so a machine without one skips before the pipeline."""
    found = find_browser()
    if found is None:
        missing_tool(f"no headless browser: none of {', '.join(BROWSERS)} is installed "
                     "(Debian: apt-get install chromium)")
    return found


class ReportDom(HTMLParser):
    """What the tests check in a rendered page: images, headings, tables, and nbconvert's output classes."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.headings: list[str] = []
        self.table_rows: list[int] = []
        self.classes: set[str] = set()
        self.mime_types: set[str] = set()
        self.text: list[str] = []
        self._heading: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.classes.update((values.get("class") or "").split())
        if values.get("data-mime-type"):
            self.mime_types.add(values["data-mime-type"])
        if tag == "img":
            self.images.append(values.get("src") or "")
        elif tag in ("h1", "h2", "h3"):
            self._heading = []
        elif tag == "table":
            self.table_rows.append(0)
        elif tag == "tr" and self.table_rows:
            self.table_rows[-1] += 1
        elif tag in ("style", "script"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append(" ".join("".join(self._heading).split()).rstrip("¶"))
            self._heading = None
        elif tag in ("style", "script"):
            self._skip = max(0, self._skip - 1)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self.text.append(data)
        if self._heading is not None:
            self._heading.append(data)


def embedded_pngs(sources: list[str]) -> list[bytes]:
    """The decoded ``data:image/png;base64,...`` images that really are non-trivial PNGs."""
    prefix = "data:image/png;base64,"
    pngs = [base64.b64decode(src[len(prefix):]) for src in sources if src.startswith(prefix)]
    return [png for png in pngs if png.startswith(PNG_SIGNATURE) and len(png) > 1000]


def run_browser(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)} did not finish in 180 s")
    if result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def stage_shows_code(repo: Path, report: str) -> bool:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    return bool((params.get(report.split("_", 1)[1]) or {}).get("show_code", False))


def test_every_html_report_has_expectations(pipeline_run):
    produced = sorted(p.stem for p in (pipeline_run / "reports").glob("[0-9][0-9]_*.html"))
    assert produced == sorted(EXPECTED), "a new stage report needs its expected figures and headings here"


def checked_dom(repo: Path, report: str, html: str) -> ReportDom:
    """Parse a page and check what a reviewer must see in it; return the parsed page."""
    dom = ReportDom()
    dom.feed(html)
    min_images, headings = EXPECTED[report]
    figures = embedded_pngs(dom.images)
    assert len(figures) >= min_images, f"{report}: {len(figures)} embedded PNG figures, expected >= {min_images}"
    for expected in headings:
        assert any(expected.lower() in h.lower() for h in dom.headings), \
            f"{report}: no heading containing {expected!r}; headings: {dom.headings}"
    assert "application/vnd.jupyter.stderr" not in dom.mime_types, f"{report}: shows warnings or stderr output"
    assert "jp-OutputArea-error" not in dom.classes and "Traceback" not in "".join(dom.text), \
        f"{report}: shows an error"
    if not stage_shows_code(repo, report):
        assert "jp-InputArea-editor" not in dom.classes, f"{report}: code cells are visible with show_code false"
    assert max(dom.table_rows, default=0) <= MAX_TABLE_ROWS, \
        f"{report}: a table has {max(dom.table_rows)} rows (> {MAX_TABLE_ROWS})"
    return dom


@pytest.mark.parametrize("report", sorted(EXPECTED))
def test_report_page_holds_its_figures_and_headings(pipeline_run, report):
    """The DOM checks on the file itself: they need no browser."""
    page = pipeline_run / "reports" / f"{report}.html"
    assert page.is_file(), f"{page} was not produced by dvc repro"
    checked_dom(pipeline_run, report, page.read_text())


@pytest.mark.browser
@pytest.mark.parametrize("report", sorted(EXPECTED))
def test_report_renders_in_a_browser(chromium, pipeline_run, report, tmp_path_factory):
    page = pipeline_run / "reports" / f"{report}.html"
    work = tmp_path_factory.mktemp(f"browser-{report}")
    url = page.resolve().as_uri()

    # One launch (1-2 s each) both prints the DOM as the browser built it and takes the screenshot.
    screenshot = work / f"{report}.png"
    dom = run_browser(chromium, work / "profile", "--dump-dom", f"--screenshot={screenshot}",
                      f"--window-size={WINDOW[0]},{WINDOW[1]}", url).stdout
    rendered = checked_dom(pipeline_run, report, dom)
    in_file = ReportDom()
    in_file.feed(page.read_text())
    assert len(embedded_pngs(rendered.images)) == len(embedded_pngs(in_file.images)), \
        f"{report}: the browser shows a different number of figures than the file holds"

    assert screenshot.is_file() and screenshot.read_bytes().startswith(PNG_SIGNATURE), "no screenshot written"
    with Image.open(screenshot) as image:
        assert image.size == WINDOW
        pixels = np.asarray(image.convert("L"), dtype=float)
    top = pixels[:1000]
    assert top.std() > 10, f"{report}: the top of the page is (nearly) one colour: blank or unstyled? {screenshot}"
    assert len(np.unique(pixels)) > 50, f"{report}: the screenshot has too few shades to hold figures: {screenshot}"
    print(f"{report}: {len(rendered.images)} images, headings {rendered.headings}; screenshot {screenshot}")
