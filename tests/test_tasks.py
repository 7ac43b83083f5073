"""Tasks (issue 13): the registry, anchors declaring their task, per-task tiers, WER, CTC decoding, and the
paired statistics of each task's gate."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from nnconform.anchors import ManifestError, get_anchor, parse_anchor
from nnconform.gates import _load_all_tiers, get_tier, load_tiers
from nnconform.tasks import TASKS, AsrTask, ClassificationTask, get_task, task_names

REPO = Path(__file__).resolve().parents[1]


def _zoo_raw(name="fmnist-lenet5"):
    return tomllib.loads((REPO / "anchors" / "zoo.toml").read_text())["anchors"][name]


def test_registry_knows_classification_and_asr():
    assert {"classification", "asr"} <= set(task_names())
    assert isinstance(get_task(), ClassificationTask)
    assert isinstance(get_task("asr", vocabulary=["<pad>", "a"]), AsrTask)
    with pytest.raises(KeyError, match="did you mean 'asr'"):
        TASKS.get("asrr")


def test_anchors_default_to_classification_and_declare_their_task():
    assert get_anchor("fmnist-lenet5").task == "classification"
    raw = dict(_zoo_raw(), task="asr")
    assert parse_anchor("x", raw, "zoo.toml").task == "asr"


def test_unknown_task_in_a_manifest_names_file_and_field():
    raw = dict(_zoo_raw(), task="speech")
    with pytest.raises(ManifestError, match=re.escape("zoo.toml: anchors.x.task: 'speech' is not one of")):
        parse_anchor("x", raw, "zoo.toml")
    with pytest.raises(ManifestError, match=r"zoo.toml: anchors.x.task: expected a string"):
        parse_anchor("x", dict(_zoo_raw(), task=3), "zoo.toml")


def test_classification_tiers_unchanged_and_asr_tiers_in_wer_units():
    cls = load_tiers()
    assert [(t.name, t.relative_margin, t.require_no_significant_drop) for t in cls.values()] == [
        ("transparent", 0.001, True), ("99.9%", 0.001, False), ("99%", 0.01, False)]
    asr = load_tiers(task="asr")
    assert list(asr) == list(cls)
    assert get_tier("99%", "asr").margin(0.25) == 0.01  # absolute: 1 WER point whatever the reference WER
    assert get_tier("99%").margin(0.9) == pytest.approx(0.009)


@pytest.mark.parametrize("extra, message", [
    ('[tasks.asr.tiers.transparent]\nabsolute_margin = 0.001\nrequire_no_significant_drop = true\nrationale = "r"\n',
     r"tasks.asr.tiers: tiers \['transparent'\] differ from the classification tiers"),
    ('[tasks.speech.tiers.t]\nabsolute_margin = 0.001\nrequire_no_significant_drop = true\nrationale = "r"\n',
     r"tasks.speech: 'speech' is not a task"),
    ('[tasks.asr.tiers.t]\nrequire_no_significant_drop = true\nrationale = "r"\n',
     r"tasks.asr.tiers.t: give exactly one of relative_margin and absolute_margin"),
    ('[tasks.asr.tiers.t]\nabsolute_margin = -0.1\nrequire_no_significant_drop = true\nrationale = "r"\n',
     r"tasks.asr.tiers.t.absolute_margin: must be >= 0"),
])
def test_bad_task_tiers_name_file_and_field(tmp_path, extra, message):
    path = tmp_path / "tiers.toml"
    path.write_text('[tiers.t]\nrelative_margin = 0.01\nrequire_no_significant_drop = true\nrationale = "r"\n'
                    + extra)
    _load_all_tiers.cache_clear()
    with pytest.raises(ValueError, match=message):
        _load_all_tiers(path)
    _load_all_tiers.cache_clear()
