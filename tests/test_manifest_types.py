"""Anchor manifests and tiers.toml: every value type-, range- and name-checked at load, naming file and field."""

from __future__ import annotations

import pytest

from nnconform.anchors import ManifestError, parse_anchor
from nnconform.gates import _load_tiers

GOOD = {"family": "zoo", "architecture": "m:f", "weights": "w.safetensors", "sha256": "0" * 64,
        "dataset": "fashion-mnist", "input_shape": [1, 28, 28], "num_classes": 10,
        "preprocess": {"mean": [0.2], "std": [0.3], "channels": 1}, "metrics": {"top1": 0.9}, "tolerance": 0.003,
        "num_params": 1, "macs": 1, "license": "x", "provenance": "y",
        "checkpoints": [{"name": "e1", "weights": "e1.safetensors", "sha256": "1" * 64, "top1": 0.8}]}


@pytest.mark.parametrize("field,value,message", [
    ("tolerance", "0.003", r"anchors\.a\.tolerance: expected a number, got '0\.003'"),
    ("tolerance", -0.1, r"anchors\.a\.tolerance: must be >= 0"),
    ("default", "no", r"anchors\.a\.default: expected true or false, got 'no'"),
    ("num_classes", True, r"anchors\.a\.num_classes: expected an integer"),
    ("input_shape", [1, -28, 28], r"anchors\.a\.input_shape\[1\]: must be > 0"),
    ("metrics", {"top1": 1.5}, r"anchors\.a\.metrics\.top1: must be in \[0, 1\]"),
    ("tolrance", 0.1, r"unknown key\(s\) 'tolrance'; did you mean 'tolerance'"),
    ("checkpoints", [{"name": "e1", "weights": "e1", "sha256": "1" * 64, "top1": "0.8"}],
     r"checkpoints\[0\]\.top1: expected a number"),
    ("checkpoints", [{"name": "e1", "wieghts": "e1", "sha256": "1" * 64}], r"checkpoints\[0\]"),
])
def test_bad_anchor_values_are_refused_by_field(field, value, message):
    parse_anchor("a", GOOD, "zoo.toml")  # the good table loads
    with pytest.raises(ManifestError, match=message) as info:
        parse_anchor("a", {**GOOD, field: value}, "zoo.toml")
    assert str(info.value).startswith("zoo.toml: anchors.a")


@pytest.mark.parametrize("body,message", [
    ('relative_margin = 0.01\nrequire_no_significant_drop = "no"\nrationale = "r"',
     r"require_no_significant_drop: expected true or false, got 'no'"),
    ('relative_margin = "0.01"\nrequire_no_significant_drop = false\nrationale = "r"',
     r"relative_margin: expected a number"),
    ('relative_margin = -0.01\nrequire_no_significant_drop = false\nrationale = "r"', r"relative_margin: must be >= 0"),
    ('relative_margin = 0.01\nrequire_no_significant_drop = false\nrationale = "r"\nmargin = 1',
     r"unknown key\(s\) 'margin'"),
])
def test_bad_tier_values_are_refused_by_field(tmp_path, body, message):
    path = tmp_path / "tiers.toml"
    path.write_text(f'[tiers."99%"]\n{body}\n')
    _load_tiers.cache_clear()
    with pytest.raises(ValueError, match=message) as info:
        _load_tiers(path)
    assert str(path) in str(info.value) and 'tiers.99%' in str(info.value)
