"""The plugin loads in every pytest run of the environment: unrelated runs stay untouched."""

from __future__ import annotations

import io

from nnconform.progress import Progress, progress

PROBE = '''
import sys

def test_unrelated():
    assert "torch" not in sys.modules, "the nnconform plugin imported torch in an unrelated run"
    assert "numpy" not in sys.modules

def test_nothing_global():
    import torch
    assert not torch.are_deterministic_algorithms_enabled()
'''

CONFORMANCE = '''
import torch

def test_set_up():
    assert torch.are_deterministic_algorithms_enabled()
'''


def test_an_unrelated_run_imports_and_sets_nothing(pytester):
    pytester.makepyfile(test_probe=PROBE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=2)
    assert "nnconform verdict" not in result.stdout.str()
    assert not (pytester.path / "reports").exists()


def test_a_conformance_run_is_set_up(pytester):
    pytester.mkdir("conformance")
    pytester.path.joinpath("conformance", "test_setup.py").write_text(CONFORMANCE)
    result = pytester.runpytest_subprocess("conformance", "--nnc-no-report", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "nnconform verdict: PASS" in result.stdout.str()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_tty_and_is_silent_elsewhere(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    tty = _Tty()
    with progress("greedy search", total=3, stream=tty) as p:
        p.update()
        p.update(note="ratio 0.5")
    text = tty.getvalue()
    assert "\n" not in text and text.count("\r") >= 3
    assert "greedy search: 1/3" in text and "greedy search: 2/3" in text and "ratio 0.5" in text
    assert text.endswith("\r")  # the line is cleared when the step ends
    pipe = io.StringIO()
    with progress("greedy search", total=3, stream=pipe) as p:
        p.update()
    assert pipe.getvalue() == "" and p.done == 1
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    assert not Progress("x", stream=_Tty()).enabled
