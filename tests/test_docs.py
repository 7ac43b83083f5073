"""Reference pages generated from the code (issue 16): current, deterministic, stale when the code moves,
linked from the report, and built into a site by MkDocs in strict mode."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from nnconform import docs, kit
from nnconform.docs.__main__ import main
from nnconform.docs.results import read_results
from nnconform.paths import source_checkout

ROOT = source_checkout()
needs_clone = pytest.mark.skipif(ROOT is None, reason="not a clone: no docs/ to check")


@pytest.fixture(scope="module")
def pages():
    """The pages as the code generates them now (once per module: generation imports the criteria)."""
    return docs.generate()


@needs_clone
def test_committed_pages_are_current_and_generation_is_deterministic(pages):
    assert docs.stale_pages(pages, ROOT / "docs" / "reference") == []
    assert docs.generate() == pages
    for text in pages.values():
        assert not re.search(r"20\d\d-\d\d-\d\d[T ]\d\d:", text), "a timestamp would make --check flaky"
        assert str(ROOT) not in text, "absolute paths of this machine must not reach the pages"


def test_pages_cover_every_anchor_method_and_check(pages):
    from nnconform.docs.methods_page import reference_names

    from nnconform.anchors import all_anchors

    for name in all_anchors():
        assert f'id="{docs.entry_id("anchor", name)}"' in pages["anchors.md"]
    for kind in ("compressor", "update-codec", "feature-codec"):
        for name in reference_names(kind):  # nnconform's own; not a method another self-test registered
            assert f'id="{docs.entry_id("method", kind, name)}"' in pages["methods.md"]
    for check_id in kit.catalogue():
        assert f'id="{docs.entry_id("check", check_id)}"' in pages["checks.md"]
    for name in ("fashion-mnist", "imagenet-1k", "imagenet-samples"):
        assert f'id="{docs.entry_id("dataset", name)}"' in pages["datasets.md"]
    # what a delegate cites for an AIMET technique: its paper and the exact call
    ssvd = pages["methods.md"].split('id="method-compressor-aimet-ssvd"')[1].split("<a id=")[0]
    assert "Jaderberg" in ssvd and "ModelCompressor.compress_model" in ssvd and "| `target_ratio` | `float` | `0.5` |" in ssvd
    quant = pages["methods.md"].split('id="method-compressor-aimet-quant"')[1].split("<a id=")[0]
    assert "Data-Free Quantization" in quant and "Adaptive Rounding" in quant and "QuantizationSimModel(" in quant


def test_a_new_config_field_makes_the_pages_stale_until_regenerated(pages, tmp_path, monkeypatch):
    docs.write_pages(pages, tmp_path)
    assert docs.stale_pages(pages, tmp_path) == []
    cls = kit.method_class("compressor", "aimet-ssvd")

    @dataclasses.dataclass(frozen=True)
    class Config(cls.Config):
        planted_field: int = 7

    monkeypatch.setattr(cls, "Config", Config)
    planted = docs.generate()
    problems = docs.stale_pages(planted, tmp_path)
    assert len(problems) == 1 and "methods.md: stale" in problems[0]
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert main(["--out", str(tmp_path)]) == 0  # regenerated: current again
    assert main(["--out", str(tmp_path), "--check"]) == 0
    assert "| `planted_field` | `int` | `7` |" in (tmp_path / "methods.md").read_text()


def test_check_fails_on_a_missing_or_edited_page(pages, tmp_path, capsys):
    docs.write_pages(pages, tmp_path)
    (tmp_path / "checks.md").write_text((tmp_path / "checks.md").read_text().replace("Direction", "Drection", 1))
    (tmp_path / "anchors.md").unlink()
    assert main(["--out", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "anchors.md: missing" in err and "checks.md: stale from line" in err


def test_results_add_measured_figures_and_fingerprints(tmp_path):
    results = {"run_id": "r1", "datasets": {"fashion-mnist": {"fingerprint": "ab" * 32, "samples": 10000,
                                                              "source": "/usr/share/datasets/fashion-mnist",
                                                              "smoke": False}},
               "records": [{"check_id": "compression.accuracy", "subject": "fmnist-lenet5/aimet-ssvd/0.6",
                            "status": "pass", "measured": "99%", "expected": None,
                            "details": {"metrics": {"bytes": 12345, "compression_ratio": 2.5, "macs": 250000,
                                                    "acc_ref": 0.8937, "acc": 0.8901, "best_tier": "99%"}}}]}
    pages = docs.generate(results)
    ssvd = pages["methods.md"].split('id="method-compressor-aimet-ssvd"')[1].split("<a id=")[0]
    assert "Measured in run `r1`" in ssvd
    assert "| fmnist-lenet5/aimet-ssvd/0.6 | pass | 12345 | 2.5 | 250000 | 0.8937 | 0.8901 | 99% |" in ssvd
    wsvd = pages["methods.md"].split('id="method-compressor-aimet-wsvd"')[1].split("<a id=")[0]
    assert "no records of this method in that run" in wsvd
    assert "`" + "ab" * 32 + "` (10,000 samples" in pages["datasets.md"]
    bad = tmp_path / "results.json"
    bad.write_text('{"run_id": "x"}')
    with pytest.raises(ValueError, match="results.json: no 'records' list"):
        read_results(bad)
    assert main(["--results", str(bad), "--out", str(tmp_path), "--check"]) == 2


@needs_clone
def test_report_links_each_name_to_an_entry_that_exists(pages, tmp_path):
    from nnconform.report.render import detail_lines, records_html, records_markdown, reference_base

    run_dir = ROOT / "reports" / "some-run"
    base = reference_base(SimpleNamespace(run_id="some-run", config=SimpleNamespace(report_dir=ROOT / "reports")))
    assert base == "../../docs/reference"
    rec = SimpleNamespace(check_id="compression.accuracy", subject="fmnist-lenet5/aimet-ssvd/0.6", criterion="compression",
                          status=SimpleNamespace(value="pass"), measured=1, expected=1, tolerance=0, message="")
    run = SimpleNamespace(records=[rec], outcomes={}, benchmarks=[],
                          anchors_used={"fmnist-lenet5": {"family": "zoo", "dataset": "fashion-mnist", "num_params": 1,
                                                          "macs": 1, "metrics": {"top1": 0.9}, "weights": "w",
                                                          "sha256": "0" * 64}},
                          datasets_used={"fashion-mnist": {"samples": 1, "fingerprint": "f", "source": "s",
                                                           "smoke": False}})
    from nnconform.kit import describe

    results = {"tiers": {}, "checks": {rec.check_id: describe(rec.check_id).to_dict()},
               "records": [{"check_id": rec.check_id, "subject": rec.subject}]}
    text = "\n".join(detail_lines(run, results, {}, base) + records_markdown(run, results, base))
    text += records_html(run, results, base)
    links = re.findall(r"\.\./\.\./docs/reference/(\w+\.md)#([\w.-]+)", text)
    assert {(p, i) for p, i in links} >= {("anchors.md", "anchor-fmnist-lenet5"), ("datasets.md", "dataset-fashion-mnist"),
                                          ("methods.md", "method-compressor-aimet-ssvd"),
                                          ("checks.md", "check-compression.accuracy")}
    for page, anchor in links:  # every link resolves, from the run's folder, to an entry of the committed pages
        target = (run_dir / "../../docs/reference" / page).resolve()
        assert f'id="{anchor}"' in target.read_text(), (page, anchor)
    # an id outside the catalogue has no entry: not linked
    results["checks"] = {}
    assert "](" not in "\n".join(records_markdown(run, results, base)) and "(reference)" not in records_html(run, results, base)
    # without a base (no clone, no NNCONFORM_DOCS_URL) the names are plain text
    assert "](" not in "\n".join(detail_lines(run, results, {}, None))


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=300)


@needs_clone
def test_mkdocs_builds_the_site_in_strict_mode_and_fails_on_a_broken_link(tmp_path):
    pytest.importorskip("mkdocs")
    done = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    for page in ("index.html", "architecture.html", "proposals.html", "ci-gate.html", "reference/anchors.html",
                 "reference/datasets.html", "reference/methods.html", "reference/checks.html"):
        assert (tmp_path / "site" / page).is_file(), page
    assert 'id="method-compressor-aimet-ssvd"' in (tmp_path / "site" / "reference" / "methods.html").read_text()
    assert "make conformance" in (tmp_path / "site" / "index.html").read_text()  # the README is the home page

    # a copy with one broken link fails the strict build, naming the page
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    (tmp_path / "src" / "nnconform" / "docs").mkdir(parents=True)
    shutil.copy(ROOT / "src" / "nnconform" / "docs" / "mkdocs_hooks.py", tmp_path / "src" / "nnconform" / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with open(tmp_path / "docs" / "architecture.md", "a") as f:
        f.write("\nSee [the gone page](reference/no-such-page.md).\n")
    broken = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site2")
    assert broken.returncode != 0
    assert "no-such-page.md" in broken.stderr


def test_a_method_registered_by_another_test_does_not_make_the_pages_stale():
    """Self-tests register methods in-process (tests/test_compress_bad.py); the pages document nnconform's own."""
    from dataclasses import dataclass

    from nnconform.compress.base import Compressor

    @kit.register_method("compressor", "docs-test-stray-method")
    class Stray(Compressor):
        """A method a self-test registered."""

        @dataclass(frozen=True)
        class Config(kit.MethodConfig):
            """No fields."""

    try:
        assert docs.stale_pages(docs.generate(), ROOT / "docs" / "reference") == []
    finally:
        kit.registry("compressor").unregister("docs-test-stray-method")
