"""Shared helpers of the conformance suite (fixtures come from the nnconform plugin)."""

from __future__ import annotations

import pytest

from nnconform.anchors import WeightsIntegrityError, WeightsUnavailable
from nnconform.data import DatasetUnavailable


@pytest.fixture
def load_or_skip(nnc_session, nnc_record):
    """Run a loader; a missing file or dataset skips the case with the exact message (the report
    lists it with the case), a corrupt weights file fails it with a FAIL record."""
    from nnconform.anchor_checks import integrity_failure

    def call(fn, *args, subject: str, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (WeightsUnavailable, DatasetUnavailable) as exc:
            pytest.skip(str(exc))
        except WeightsIntegrityError as exc:
            nnc_record(integrity_failure(subject, exc))
            pytest.fail(str(exc), pytrace=False)

    return call
