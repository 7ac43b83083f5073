"""The zoo CLI refuses what would lose committed weights or build nothing; compare flags a drifted rebuild.

No training here: ``_build`` is replaced, so a refusal that failed would show up as a call.
"""

from __future__ import annotations

import pytest

from nnconform.paths import anchors_dir, read_toml
from nnconform.zoo import cli
from nnconform.zoo.build import write_manifest

KNOWN = "fmnist-lenet5, fmnist-resnet8, fmnist-mobilenetv2"


@pytest.fixture
def builds(monkeypatch):
    """Calls to the training step, which never trains here."""
    calls = []
    monkeypatch.setattr(cli, "_build", lambda root, names: calls.append((root, names)))
    return calls


def test_only_without_names_is_refused(builds, capsys):
    assert cli.main(["build", "--only"]) == 2
    assert f"--only needs at least one anchor name; known: {KNOWN}" in capsys.readouterr().err
    assert builds == []


def test_unknown_names_are_refused_naming_them(builds, capsys):
    assert cli.main(["build", "--only", "fmnist-lenet5", "lenet", "resnet9"]) == 2
    err = capsys.readouterr().err
    assert "unknown anchor name(s) lenet, resnet9" in err and KNOWN in err
    assert builds == []


def test_committed_checkpoints_are_not_overwritten_without_force(builds, capsys):
    committed = anchors_dir() / "zoo" / "fmnist-lenet5"
    assert any(committed.glob("*.safetensors")), "the embedded zoo is part of the package"
    assert cli.main(["build", "--only", "fmnist-lenet5"]) == 2
    err = capsys.readouterr().err
    assert str(committed / "epoch1.safetensors") in err and "--force" in err
    assert cli.main(["build"]) == 2  # every anchor: the same refusal
    assert builds == []


def test_force_and_a_fresh_folder_do_build(builds, tmp_path):
    (tmp_path / "zoo" / "fmnist-resnet8").mkdir(parents=True)
    (tmp_path / "zoo" / "fmnist-resnet8" / "epoch1.safetensors").write_bytes(b"old")
    assert cli.main(["build", "--only", "fmnist-lenet5", "--out", str(tmp_path)]) == 0  # nothing in its way
    assert cli.main(["build", "--only", "fmnist-resnet8", "--out", str(tmp_path)]) == 2
    assert cli.main(["build", "--only", "fmnist-resnet8", "--out", str(tmp_path), "--force"]) == 0
    assert builds == [(tmp_path, ["fmnist-lenet5"]), (tmp_path, ["fmnist-resnet8"])]


def test_compare_refuses_the_committed_folder_and_a_used_one(builds, tmp_path, capsys):
    assert cli.main(["compare", "--into", str(anchors_dir()), "--only", "fmnist-lenet5"]) == 2
    assert "is the committed anchors folder" in capsys.readouterr().err
    (tmp_path / "zoo" / "fmnist-lenet5").mkdir(parents=True)
    (tmp_path / "zoo" / "fmnist-lenet5" / "epoch8.safetensors").write_bytes(b"earlier rebuild")
    assert cli.main(["compare", "--into", str(tmp_path), "--only", "fmnist-lenet5"]) == 2
    assert cli.main(["compare", "--into", str(tmp_path), "--only"]) == 2
    assert builds == []


def _fake_rebuild(committed: dict, shift: float, touched: str):
    """A ``_build`` that writes the committed manifest back with one checkpoint moved by ``shift``."""
    def build(root, names):
        entries = {n: dict(committed[n], checkpoints=[dict(c) for c in committed[n]["checkpoints"]]) for n in names}
        for ck in entries[names[0]]["checkpoints"]:
            if ck["name"] == touched:
                ck["top1"] = round(ck["top1"] + shift, 6)
                ck["sha256"] = "0" * 64
        write_manifest(entries, root / "zoo.toml")
    return build


@pytest.mark.parametrize("checkpoint, shift, status", [
    ("epoch8", 0.002, 0), ("epoch8", -0.0081, 1),  # the anchor's weights: the final band
    ("finetune", 0.0081, 1),
    ("epoch3", 0.012, 0), ("epoch3", 0.0251, 1),  # mid-schedule: the intermediate band
])
def test_compare_prints_every_checkpoint_and_fails_outside_the_band(monkeypatch, tmp_path, capsys, checkpoint,
                                                                     shift, status):
    committed = read_toml(anchors_dir() / "zoo.toml")["anchors"]
    monkeypatch.setattr(cli, "_build", _fake_rebuild(committed, shift, checkpoint))
    assert cli.main(["compare", "--into", str(tmp_path), "--only", "fmnist-lenet5"]) == status
    out = capsys.readouterr().out
    n = len(committed["fmnist-lenet5"]["checkpoints"])
    assert f"{n - 1} of {n} checkpoints bit-identical" in out
    row = next(line for line in out.splitlines() if line.split()[1:2] == [checkpoint])
    assert "differs" in row and f"{100 * shift:+.2f}" in row
    assert ("OUTSIDE BAND" in row) == (status == 1)


def test_compare_names_a_missing_rebuilt_checkpoint():
    committed = {"a": {"weights": "x", "checkpoints": [{"name": "epoch1", "sha256": "1" * 64, "top1": 0.8}]}}
    (row,) = cli.compare_manifests(committed, {"a": {"checkpoints": []}}, ["a"])
    assert row["rebuilt_top1"] is None and not row["same_sha256"] and not row["inside_band"]
    assert "missing" in cli.format_rows([row]) and "OUTSIDE BAND" in cli.format_rows([row])
