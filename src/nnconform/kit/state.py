"""Per-criterion session state: one object per criterion and run, behind one fixture.

A criterion keeps what it computes once per run (anchors under test, calibration sets, payloads,
graphs, studies) in one state object. :func:`criterion_state` creates it on first use and keeps it
on the pytest config, so every fixture and case of the run shares it::

    @pytest.fixture(scope="session")
    def compression(request, nnc_session):
        return criterion_state(request.config, "compression", lambda: CompressionRuns(nnc_session))
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import pytest

T = TypeVar("T")
_STATES = pytest.StashKey[dict]()


def criterion_state(config: pytest.Config, name: str, factory: Callable[[], T]) -> T:
    """The run's state object of criterion ``name`` (made by ``factory`` on first use)."""
    states: dict[str, Any] = config.stash.setdefault(_STATES, {})
    if name not in states:
        states[name] = factory()
    return states[name]
