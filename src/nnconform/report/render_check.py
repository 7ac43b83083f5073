"""Render ``reports/<run>/index.html`` in headless Chromium and check what a reader would see.

The report page is meant to open offline, from a single file, with every plot embedded as a
``data:`` URI. :func:`check_rendered_report` opens it through selenium WebDriver and lists what is
wrong: no title or table, an image the browser could not decode, a reference to anything outside
the page, fewer plots than expected, severe console errors.

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the Python package ``selenium``
(the ``test`` extra). :func:`chromium_unavailable` says exactly what is missing.

The report imports every module of this package to register sections, so nothing here imports
selenium until a check runs.

Command line: ``python -m nnconform.report.render_check reports/latest/index.html [--min-plots N]``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import os
import re
import shutil
import sys
from html.parser import HTMLParser
from dataclasses import dataclass, field
from pathlib import Path

#: The fix for a missing browser or driver.
APT_HINT = "install with: sudo apt-get install chromium chromium-driver"
#: The fix for a missing selenium.
PIP_HINT = "install with: pip install selenium (or pip install -e '.[test]')"

_DRIVER_FALLBACK = "/usr/bin/chromedriver"
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600", "--disable-extensions", "--no-first-run")
_LOAD_TIMEOUT_S = 20.0


class ChromiumUnavailable(RuntimeError):
    """Headless Chromium cannot be driven here; the message says what to install."""


def find_chromedriver(chromedriver: str | None = None) -> str | None:
    """The chromedriver to use: ``chromedriver`` if given, else the one on PATH, else /usr/bin/chromedriver."""
    if chromedriver:
        return chromedriver if Path(chromedriver).is_file() and os.access(chromedriver, os.X_OK) else None
    found = shutil.which("chromedriver")
    if found:
        return found
    return _DRIVER_FALLBACK if os.access(_DRIVER_FALLBACK, os.X_OK) else None


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, or None."""
    for name in _BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_unavailable(chromedriver: str | None = None) -> str | None:
    """None when selenium, Chromium and chromedriver are all here; otherwise what is missing and how to install it."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append(f"selenium is not installed; {PIP_HINT}")
    if find_chromium() is None:
        missing.append(f"chromium is not on PATH; {APT_HINT}")
    if find_chromedriver(chromedriver) is None:
        where = f"at {chromedriver}" if chromedriver else f"on PATH or at {_DRIVER_FALLBACK}"
        missing.append(f"chromedriver not found {where}; {APT_HINT}")
    return "; ".join(missing) or None


@dataclass
class RenderResult:
    """What the browser saw: the page title, counts, each image and the problems found."""

    title: str = ""
    tables: int = 0
    images: list[dict] = field(default_factory=list)
    plots: int = 0
    console_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# One round trip: every image (attribute src, decode state, size on screen, whether a closed <details>
# folds it away) and every reference to something outside the page.
_INSPECT_JS = r"""
const imgs = Array.from(document.images).map((im, i) => {
  const r = im.getBoundingClientRect();
  return {index: i, alt: im.getAttribute('alt') || '', src: (im.getAttribute('src') || '').slice(0, 80),
          complete: im.complete, naturalWidth: im.naturalWidth, naturalHeight: im.naturalHeight,
          shownWidth: r.width, shownHeight: r.height, folded: im.closest('details:not([open])') !== null};
});
const refs = [];
for (const el of document.querySelectorAll('img[src], script[src], link[href], iframe[src], source[src], source[srcset], img[srcset], embed[src], object[data], video[src], audio[src]')) {
  for (const attr of ['src', 'href', 'srcset', 'data']) {
    const v = el.getAttribute(attr);
    if (v !== null) refs.push({tag: el.tagName.toLowerCase(), attr: attr, value: v.slice(0, 120)});
  }
}
return {title: document.title, tables: document.querySelectorAll('table').length, images: imgs, refs: refs};
"""


class _ImgCollector(HTMLParser):
    """Every ``<img>`` of a page, in document order (the order of ``document.images``)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            a = dict(attrs)
            self.images.append({"alt": a.get("alt") or "", "src": a.get("src") or ""})

    handle_startendtag = handle_starttag


def embedded_image_problem(src: str) -> str | None:
    """Why the bytes of a ``data:image/...`` URI are not a sound image, or None when they are (or it is not one).

    Browsers draw truncated or bit-flipped PNGs partly, with their full natural size, so this
    decodes the bytes strictly with Pillow: chunk checksums are verified and every pixel is read.
    """
    m = re.match(r"data:([^,;]*)((?:;[^,;]*)*),(.*)\Z", src.strip(), re.S | re.I)
    if m is None:
        return None if not src.strip().lower().startswith("data:") else "malformed data: URI (no comma)"
    mime, params, payload = m.group(1).lower(), m.group(2).lower(), m.group(3)
    if not mime.startswith("image/") or mime == "image/svg+xml":
        return None
    if ";base64" in params:
        try:
            data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
        except (binascii.Error, ValueError) as exc:
            return f"invalid base64 in the data: URI ({exc})"
    else:
        from urllib.parse import unquote_to_bytes

        data = unquote_to_bytes(payload)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as exc:  # Pillow raises SyntaxError, OSError, ValueError... for broken data
        return f"corrupt {mime} data ({type(exc).__name__}: {exc})"
    return None


def _short(text: str, limit: int = 300) -> str:
    """A console message with embedded data: URIs elided, cut to ``limit`` characters."""
    text = re.sub(r"(data:[^,\s]{0,40},)\S{16,}", r"\1...", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_external(value: str) -> bool:
    """True unless a reference is an embedded data: URI or an in-page #fragment."""
    v = value.strip().lower()
    return not (v.startswith("data:") or v.startswith("#") or v == "")


def start_headless_chromium(chromedriver: str | None = None):
    """A selenium WebDriver for headless Chromium (``--headless=new --no-sandbox --disable-gpu``).

    Pass it as ``driver=`` to :func:`inspect_rendered_report` to check several pages with one
    browser; the caller quits it. Raises :class:`ChromiumUnavailable` with the install command
    when selenium, Chromium or chromedriver is missing or the browser does not start.
    """
    reason = chromium_unavailable(chromedriver)
    if reason:
        raise ChromiumUnavailable(reason)
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in _CHROME_ARGS:
        options.add_argument(arg)
    options.binary_location = find_chromium()
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(options=options, service=Service(executable_path=find_chromedriver(chromedriver)))
    except WebDriverException as exc:
        text = (exc.msg or str(exc)).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ChromiumUnavailable(f"headless Chromium did not start ({first}); check that the chromium and "
                                  f"chromium-driver versions match; {APT_HINT}") from exc


def _browser_log(driver) -> list[dict]:
    """The console entries logged since the last call (reading drains them); [] where unsupported."""
    try:
        return driver.get_log("browser")
    except Exception:  # not every driver exposes the console log
        return []


def inspect_rendered_report(index_html: str | os.PathLike, *, min_plots: int = 1,
                            chromedriver: str | None = None, driver=None) -> RenderResult:
    """Open ``index_html`` in headless Chromium and return what it rendered, with the problems found.

    A plot is an ``<img>`` with a ``data:image/...`` source that decoded in the browser (natural
    width and height above zero) and whose bytes Pillow reads without error. With ``driver`` (from
    :func:`start_headless_chromium`) that browser is used and left open; otherwise one is started
    and quit. Raises :class:`ChromiumUnavailable` when the browser cannot be started.
    """
    path = Path(index_html)
    result = RenderResult()
    if not path.is_file():
        result.problems.append(f"{path}: no such file")
        return result
    own = driver is None
    if own:
        driver = start_headless_chromium(chromedriver)
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        driver.set_page_load_timeout(_LOAD_TIMEOUT_S)
        _browser_log(driver)  # drop what earlier pages logged
        try:
            driver.get(path.resolve().as_uri())
            WebDriverWait(driver, _LOAD_TIMEOUT_S).until(
                lambda d: d.execute_script("return document.readyState === 'complete' && "
                                           "Array.from(document.images).every(i => i.complete)"))
        except TimeoutException:
            result.problems.append(f"the page did not finish loading within {_LOAD_TIMEOUT_S:.0f} s")
        seen = driver.execute_script(_INSPECT_JS)
        logs = _browser_log(driver)
    finally:
        if own:
            driver.quit()

    result.title = (seen.get("title") or "").strip()
    result.tables = int(seen.get("tables") or 0)
    result.images = list(seen.get("images") or [])
    result.console_errors = [_short(str(e.get("message", ""))) for e in logs if e.get("level") == "SEVERE"]
    problems = result.problems
    parsed = _ImgCollector()
    parsed.feed(path.read_text(encoding="utf-8", errors="replace"))
    data_problem = {i: embedded_image_problem(im["src"]) for i, im in enumerate(parsed.images)}
    if len(parsed.images) != len(result.images):
        problems.append(f"the browser found {len(result.images)} images, the HTML has {len(parsed.images)} <img> tags")
    if not result.title:
        problems.append("the page has no <title>")
    if result.tables == 0:
        problems.append("the page has no <table>")
    for im in result.images:
        name = f"image {im['index']}" + (f" ({im['alt']!r})" if im["alt"] else "")
        src = im["src"]
        im["data_problem"] = data_problem.get(im["index"])
        if im["data_problem"]:
            problems.append(f"{name}: {im['data_problem']}")
        if not src.lower().startswith("data:"):
            problems.append(f"{name}: src {src!r} is not an embedded data: URI")
        if not im["complete"]:
            problems.append(f"{name}: did not finish loading")
        elif not (im["naturalWidth"] > 0 and im["naturalHeight"] > 0):
            problems.append(f"{name}: did not decode (naturalWidth {im['naturalWidth']}, "
                            f"naturalHeight {im['naturalHeight']}); broken or corrupt image data")
        elif not im["folded"] and not (im["shownWidth"] > 0 and im["shownHeight"] > 0):
            problems.append(f"{name}: decoded but is not displayed (size on page "
                            f"{im['shownWidth']:.0f}x{im['shownHeight']:.0f})")
    for ref in seen.get("refs") or []:
        if ref["tag"] != "img" and _is_external(ref["value"]):
            problems.append(f"<{ref['tag']} {ref['attr']}={ref['value']!r}> refers outside the page; "
                            "the report must open offline from one file")
        elif ref["tag"] == "img" and ref["attr"] == "srcset" and _is_external(ref["value"]):
            problems.append(f"<img srcset={ref['value']!r}> refers outside the page")
    result.plots = sum(1 for im in result.images if im["src"].lower().startswith("data:image/")
                       and im["complete"] and im["naturalWidth"] > 0 and im["naturalHeight"] > 0
                       and not im["data_problem"])
    if result.plots < min_plots:
        problems.append(f"{result.plots} plot(s) rendered, expected at least {min_plots}")
    for msg in result.console_errors:
        problems.append(f"console error: {msg}")
    return result


def check_rendered_report(index_html: Path, *, min_plots: int = 1, chromedriver: str | None = None) -> list[str]:
    """The problems a reader of ``index_html`` would meet in headless Chromium; an empty list means none.

    Checks that the page has a title and at least one table; that every ``<img>`` finished loading,
    decoded (natural width and height above zero), is shown, and is an embedded ``data:`` URI whose
    bytes are a sound image (see :func:`embedded_image_problem`); that no img, link or script refers
    outside the page; that at least ``min_plots`` plots rendered; and that the browser console
    logged no severe error. Raises :class:`ChromiumUnavailable` (with the
    install command) when selenium, Chromium or chromedriver is missing.
    """
    return inspect_rendered_report(index_html, min_plots=min_plots, chromedriver=chromedriver).problems


def main(argv: list[str] | None = None) -> int:
    """``python -m nnconform.report.render_check INDEX_HTML...``: exit 0 when every page renders cleanly,
    1 when one has a problem, 2 when headless Chromium is unavailable."""
    parser = argparse.ArgumentParser(prog="python -m nnconform.report.render_check",
                                     description="Render report pages in headless Chromium and list their problems.")
    parser.add_argument("index_html", type=Path, nargs="+")
    parser.add_argument("--min-plots", type=int, default=1, help="plots each page must show (default: %(default)s)")
    parser.add_argument("--chromedriver", default=None, help="chromedriver to use (default: PATH, /usr/bin/chromedriver)")
    args = parser.parse_args(argv)
    try:
        driver = start_headless_chromium(args.chromedriver)
    except ChromiumUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bad = 0
    try:
        for page in args.index_html:
            result = inspect_rendered_report(page, min_plots=args.min_plots, driver=driver)
            print(f"{page}: title {result.title!r}, {result.tables} tables, {len(result.images)} images, "
                  f"{result.plots} plots: {'ok' if not result.problems else f'{len(result.problems)} problems'}")
            for problem in result.problems:
                print(f"  problem: {problem}")
            bad += bool(result.problems)
    finally:
        driver.quit()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
