"""The GitHub Actions example of docs/ci-gate.md says what the doc says: one job that runs the
conformance suite on the changed proposals and always publishes the report."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from nnconform import plugin
from nnconform.paths import REPO_ROOT

WORKFLOW = REPO_ROOT / "docs" / "github-actions-proposal-gate.yml"
DOC = REPO_ROOT / "docs" / "ci-gate.md"


@pytest.fixture(scope="module")
def workflow() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed; the text checks still run")
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(workflow: dict) -> list[dict]:
    (job,) = workflow["jobs"].values()
    return job["steps"]


def _step(workflow: dict, predicate) -> tuple[int, dict]:
    found = [(i, s) for i, s in enumerate(_steps(workflow)) if predicate(s)]
    assert len(found) == 1, f"expected one matching step, found {[s.get('name') for _, s in found]}"
    return found[0]


def _pytest_step(workflow):
    return _step(workflow, lambda s: ".venv/bin/pytest conformance/" in s.get("run", ""))


def test_text_runs_the_suite_with_the_proposal_and_always_uploads():
    text = WORKFLOW.read_text()
    assert re.search(r"^on:\n  pull_request:\n    paths:\n      - \"proposals/\*\*\"$", text, re.M)
    assert ".venv/bin/pytest conformance/" in text and "--proposal" in text
    assert "--junitxml=reports/junit.xml" in text and "--nnc-tier default" in text
    assert "--nnc-run-id pr-${{ github.event.pull_request.number }}" in text
    assert "bash scripts/setup.sh" in text and "$GITHUB_STEP_SUMMARY" in text
    assert "actions/upload-artifact@" in text and "if: always()" in text
    assert "matrix" not in text


def test_exactly_one_job_without_a_matrix_on_proposal_pull_requests(workflow):
    assert len(workflow["jobs"]) == 1
    (job,) = workflow["jobs"].values()
    assert "strategy" not in job
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    assert list(trigger) == ["pull_request"] and trigger["pull_request"]["paths"] == ["proposals/**"]


def test_sets_up_with_the_repository_script_and_caches_venv_and_nnconform_cache(workflow):
    _step(workflow, lambda s: s.get("run", "").strip() == "bash scripts/setup.sh")
    caches = {s["with"]["path"].strip(): s["with"]["key"] for s in _steps(workflow)
              if s.get("uses", "").startswith("actions/cache@")}
    assert set(caches) == {".venv", "~/.cache/nnconform"}
    assert all("hashFiles('pyproject.toml'" in key for key in caches.values())
    i_setup, _ = _step(workflow, lambda s: s.get("run", "").strip() == "bash scripts/setup.sh")
    assert all(i < i_setup for i, s in enumerate(_steps(workflow)) if s.get("uses", "").startswith("actions/cache@"))


def test_runs_pytest_on_conformance_with_the_proposal_manifests(workflow):
    _, step = _pytest_step(workflow)
    run = step["run"]
    assert re.search(r"\.venv/bin/pytest conformance/ .*\"\$\{args\[@\]\}\"", run)
    assert 'args+=(--proposal "$manifest")' in run
    assert "--nnc-tier default" in run and "--junitxml=reports/junit.xml" in run
    assert "if" in step and "manifests" in step["if"]  # no changed manifest: no suite run
    # the manifest check runs first, on the same manifests
    i_check, check = _step(workflow, lambda s: "-m nnconform.proposal check" in s.get("run", ""))
    assert i_check < _pytest_step(workflow)[0] and check["env"] == step["env"]


def test_the_workflow_options_are_the_plugins(workflow):
    class Parser:
        def __init__(self):
            self.names: set[str] = set()

        def getgroup(self, *args, **kwargs):
            return self

        def addoption(self, *names, **kwargs):
            self.names.update(names)

        def addini(self, *args, **kwargs):
            pass

    parser = Parser()
    plugin.pytest_addoption(parser)
    _, step = _pytest_step(workflow)
    used = set(re.findall(r"(?<![\w-])(--(?:nnc-[a-z-]+|proposal))\b", step["run"]))
    assert used == {"--proposal", "--nnc-tier", "--nnc-run-id"}
    assert used <= parser.names, f"not options of the plugin: {used - parser.names}"


def test_uploads_the_report_and_publishes_the_summary_even_on_failure(workflow):
    i_pytest, _ = _pytest_step(workflow)
    i_up, upload = _step(workflow, lambda s: s.get("uses", "").startswith("actions/upload-artifact@"))
    i_sum, summary = _step(workflow, lambda s: "$GITHUB_STEP_SUMMARY" in s.get("run", ""))
    assert upload["if"] == "always()" and summary["if"] == "always()"
    assert i_up > i_pytest and i_sum > i_pytest
    paths = upload["with"]["path"].splitlines()
    assert "reports/pr-${{ github.event.pull_request.number }}/" in paths and "reports/junit.xml" in paths
    assert "summary.md" in summary["run"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_every_run_block_is_valid_bash(workflow):
    for step in _steps(workflow):
        if "run" in step:
            script = re.sub(r"\$\{\{[^}]*\}\}", "X", step["run"])
            proc = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
            assert proc.returncode == 0, f"{step.get('name')}: {proc.stderr}"


def test_doc_explains_the_job_the_result_and_the_manifest_check():
    doc = DOC.read_text()
    assert "github-actions-proposal-gate.yml" in doc
    assert "python -m nnconform.proposal check" in doc
    for phrase in ("exit status", "job summary", "artifact", "index.html", "results.json", "summary.md",
                   "junit.xml", "if: always()", "~/.cache/nnconform", "--proposal"):
        assert phrase in doc, phrase
