"""The HTML report renders in headless Chromium with every plot present; broken pages fail the check.

The good report is real: a small conformance suite run through pytest and the plugin writes
``reports/<run>/index.html`` from model-update records (two lineage trajectories and one
rate-accuracy curve, so three plots) without evaluating any model. The bad pages are that report
with one thing broken. Skips, saying what to install, without Chromium, chromedriver or selenium.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nnconform.report.render_check import (
    RenderResult,
    check_rendered_report,
    chromium_unavailable,
    embedded_image_problem,
    inspect_rendered_report,
    start_headless_chromium,
)

_MISSING = chromium_unavailable()
needs_chromium = pytest.mark.skipif(_MISSING is not None, reason=f"headless Chromium unavailable: {_MISSING}")

SUITE = '''
import numpy as np
import pytest

from nnconform.records import CheckRecord, Status
from nnconform.updates.checks import check_update_accuracy

pytestmark = pytest.mark.criterion("updates")


@pytest.mark.parametrize("anchor", ["lineage-a", "lineage-b"])
def test_lineage(anchor, nnc_record):
    for i, (ck, top1) in enumerate([("epoch1", 0.80), ("epoch2", 0.84), ("finetune", 0.86)]):
        nnc_record(CheckRecord("updates.lineage_accuracy", f"{anchor}/{ck}", Status.PASS, measured=top1,
                               details={"anchor": anchor, "checkpoint": ck, "index": i, "top1": top1,
                                        "ci95": [top1 - 0.01, top1 + 0.01], "documented": top1, "smoke": False,
                                        "preprocess": {"resize": None}}))


def test_codec_curve(nnc_record):
    target = np.random.default_rng(0).random(1000) < 0.86
    for codec, label, nbytes, flips, claim in [("full", "full", 1000, 0, "transparent"),
                                               ("topk", "topk-0.01", 30, 5, None),
                                               ("topk", "topk-0.1", 200, 1, None)]:
        recon = target.copy()
        recon[np.flatnonzero(target)[:flips]] = False
        rec = nnc_record(check_update_accuracy(
            f"p/{label}", target_correct=target, recon_correct=recon, claim=claim, update_bytes=nbytes,
            full_bytes=1000, agreement=1 - flips / 1000,
            extra={"pair": "p", "codec": codec, "label": label, "top1": float(recon.mean()),
                   "target_top1": float(target.mean())}))
        assert rec.passed, rec.message
'''

PLOTS = 3  # two trajectories and one rate-accuracy curve


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """Run the small suite through pytest and the plugin; the run folder of the report it wrote."""
    root = tmp_path_factory.mktemp("render")
    (root / "conformance").mkdir()
    (root / "conformance" / "test_demo.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider",
                           "--nnc-report-dir", str(root / "reports"), "--nnc-run-id", "render",
                           "--nnc-tier", "quick"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "reports" / "render"


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module's checks (starting one takes about a second)."""
    driver = start_headless_chromium()
    yield driver
    driver.quit()


def _check(page: Path, browser) -> RenderResult:
    return inspect_rendered_report(page, min_plots=PLOTS, driver=browser)


def _variant(report: Path, tmp_path: Path, change) -> Path:
    """A copy of the report's index.html with ``change`` applied to its text."""
    page = (report / "index.html").read_text()
    new = change(page)
    assert new != page
    out = tmp_path / f"{change.__name__}.html"  # one file per variant: no page is reloaded in place
    out.write_text(new)
    return out


def _first_png(page: str) -> str:
    return re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page).group(1)


def test_the_report_embeds_its_plots(report):
    """Each plot once (the executive summary shows it first; the details link back to it)."""
    results = json.loads((report / "results.json").read_text())
    pngs = [rel for rel in results["artifacts"].values() if rel.endswith(".png")]
    page = (report / "index.html").read_text()
    assert len(pngs) == PLOTS and page.count('src="data:image/png;base64,') == PLOTS
    assert all(embedded_image_problem(f"data:image/png;base64,{m}") is None
               for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page))


@needs_chromium
def test_a_good_report_renders_with_every_plot(report, browser):
    assert check_rendered_report(report / "index.html", min_plots=PLOTS) == []  # its own browser
    result = _check(report / "index.html", browser)
    assert result.problems == []
    assert result.plots == PLOTS == len(result.images)
    assert result.title == "nnconform report render" and result.tables >= 4
    assert all(im["naturalWidth"] > 100 and im["shownWidth"] > 0 for im in result.images)


@needs_chromium
def test_corrupt_base64_names_the_image(report, tmp_path, browser):
    def corrupt(page):
        b64 = _first_png(page)
        return page.replace(b64, b64[:200] + "!!!!@@@@" + b64[208:], 1)

    result = _check(_variant(report, tmp_path, corrupt), browser)
    bad = [p for p in result.problems if p.startswith("image 0 ('rate-accuracy p')")]
    assert any("did not decode" in p for p in bad) and any("invalid base64" in p for p in bad), result.problems
    assert result.plots == PLOTS - 1


@needs_chromium
def test_truncated_png_that_the_browser_draws_partly_still_fails(report, tmp_path, browser):
    def truncate(page):
        b64 = _first_png(page)
        raw = base64.b64decode(b64)
        return page.replace(b64, base64.b64encode(raw[: len(raw) // 2]).decode(), 1)

    result = _check(_variant(report, tmp_path, truncate), browser)
    assert any(p.startswith("image 0 ('rate-accuracy p'): corrupt image/png data") for p in result.problems), \
        result.problems
    assert result.plots == PLOTS - 1


@needs_chromium
def test_external_image_fails(report, tmp_path, browser):
    def external(page):
        return page.replace("data:image/png;base64," + _first_png(page), "http://example.invalid/plot.png", 1)

    problems = _check(_variant(report, tmp_path, external), browser).problems
    assert any("'http://example.invalid/plot.png' is not an embedded data: URI" in p for p in problems), problems


@needs_chromium
def test_external_stylesheet_and_script_fail(report, tmp_path, browser):
    def external(page):
        return page.replace("</head>", '<link rel="stylesheet" href="https://example.invalid/a.css">'
                                       '<script src="file:///tmp/x.js"></script></head>', 1)

    problems = _check(_variant(report, tmp_path, external), browser).problems
    assert any(p.startswith("<link href='https://example.invalid/a.css'> refers outside") for p in problems)
    assert any(p.startswith("<script src='file:///tmp/x.js'> refers outside") for p in problems), problems


@needs_chromium
def test_fewer_plots_than_expected_fails(report, tmp_path, browser):
    def drop_plots(page):
        return re.sub(r'<img[^>]*src="data:image/png;base64,[^"]*"[^>]*>', "", page, count=2)

    result = _check(_variant(report, tmp_path, drop_plots), browser)
    assert result.plots == PLOTS - 2
    assert result.problems == [f"{PLOTS - 2} plot(s) rendered, expected at least {PLOTS}"]


@needs_chromium
def test_a_plot_hidden_by_css_fails_but_one_folded_in_details_does_not(report, tmp_path, browser):
    def hide(page):
        return page.replace("<img ", '<img style="display:none" ', 1)

    problems = _check(_variant(report, tmp_path, hide), browser).problems
    assert len(problems) == 1 and problems[0].startswith("image 0 ('rate-accuracy p'): decoded but is not "
                                                         "displayed"), problems

    def fold(page):
        return re.sub(r'(<img[^>]*>)', r"<details><summary>plot</summary>\1</details>", page, count=1)

    assert _check(_variant(report, tmp_path, fold), browser).problems == []


@needs_chromium
def test_a_page_without_title_or_table_fails(tmp_path, browser):
    page = tmp_path / "index.html"
    page.write_text("<!DOCTYPE html><html><head></head><body><p>nothing</p></body></html>")
    result = inspect_rendered_report(page, min_plots=0, driver=browser)
    assert result.problems == ["the page has no <title>", "the page has no <table>"]


def test_a_missing_file_is_a_problem_without_a_browser(tmp_path):
    assert inspect_rendered_report(tmp_path / "nope.html").problems == [f"{tmp_path / 'nope.html'}: no such file"]


def test_the_unavailable_message_says_what_to_install(monkeypatch):
    from nnconform.report import render_check

    monkeypatch.setattr(render_check.shutil, "which", lambda name: None)
    monkeypatch.setattr(render_check, "_DRIVER_FALLBACK", "/nonexistent/chromedriver")
    msg = render_check.chromium_unavailable()
    assert "chromium is not on PATH; install with: sudo apt-get install chromium chromium-driver" in msg
    assert ("chromedriver not found on PATH or at /nonexistent/chromedriver; "
            "install with: sudo apt-get install chromium chromium-driver") in msg
    with pytest.raises(render_check.ChromiumUnavailable, match="sudo apt-get install chromium chromium-driver"):
        render_check.check_rendered_report(Path(__file__))
