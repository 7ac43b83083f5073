import json

import pytest

from nnconform.records import CheckRecord, Status, gate
from nnconform.registry import Registry
from nnconform.session import record_from_property, record_to_property


def test_registry_refuses_duplicates_and_suggests_close_names():
    reg = Registry("widget")
    reg.register("uniform-8bit", object())
    with pytest.raises(ValueError, match="already registered"):
        reg.register("uniform-8bit", object())
    with pytest.raises(KeyError, match="did you mean 'uniform-8bit'"):
        reg.get("uniform-8bt")


def test_registry_decorator_returns_the_object():
    reg = Registry("widget")

    @reg.register("f")
    def f():
        return 1

    assert reg.get("f") is f and reg.names() == ["f"] and "f" in reg


def test_record_round_trips_through_user_properties():
    rec = gate("x.y", "subj", False, measured=float("nan"), expected={"a": (1, 2)}, details={"k": [1.5]})
    name, value = record_to_property(rec)
    back = record_from_property(value)
    assert back.status is Status.FAIL and back.expected == {"a": [1, 2]} and back.measured == "nan"
    json.loads(value)  # plain JSON, so it crosses xdist's wire


def test_record_from_exception_keeps_traceback():
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        rec = CheckRecord.from_exception("c", "s", exc)
    assert rec.status is Status.ERROR and "boom" in rec.message and "Traceback" in rec.traceback
    assert not rec.passed
