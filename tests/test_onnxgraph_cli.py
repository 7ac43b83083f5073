"""``python -m nnconform.onnxgraph table``: the TR 26.847-style node table of an ONNX file."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from nnconform.hashing import sha256_file
from nnconform.onnxgraph.__main__ import main
from nnconform.onnxgraph.table import parse_sizes


@pytest.fixture(scope="module")
def resnet8_onnx(tmp_path_factory):
    from nnconform.anchors import get_anchor
    from nnconform.onnxgraph.crosscheck import export_onnx

    anchor = get_anchor("fmnist-resnet8")
    path = tmp_path_factory.mktemp("onnx") / "resnet8.onnx"
    onnx.save(export_onnx(anchor.build_architecture(), anchor.input_shape), str(path))
    return path


def test_the_table_lists_every_cut_with_branches_shapes_and_bytes(resnet8_onnx, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert main(["table", str(resnet8_onnx), "--sizes", "28,56", "--json", str(out),
                 "--sha256", sha256_file(resnet8_onnx)]) == 0
    text = capsys.readouterr().out
    assert "| # | node | op | branches | shapes @28 | bytes/input @28 | shapes @56 | bytes/input @56 |" in text
    assert ("| /layer1/conv1/Conv | Conv | 2 | 1x16x28x28 + 1x16x28x28 | 100,352 | 1x16x56x56 + 1x16x56x56 "
            "| 401,408 |") in text
    rows = json.loads(out.read_text())["rows"]
    flatten = next(r for r in rows if r["node"] == "/flatten/Flatten")
    assert flatten["branches"] == 1 and [s["bytes_per_input"] for s in flatten["sizes"]] == [256, 256]


def test_the_table_refuses_a_file_that_is_not_the_pinned_one(resnet8_onnx, capsys):
    assert main(["table", str(resnet8_onnx), "--sha256", "0" * 64]) == 1
    assert "resnet8.onnx: sha256 is" in capsys.readouterr().err


def test_an_absent_anchor_file_is_named(tmp_path, capsys):
    assert main(["table", "onnx-vgg16", "--data-dir", str(tmp_path)]) == 1
    assert "vgg16-7.onnx (553,437,328 bytes" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [("224,320", [(224, 224), (320, 320)]), ("512x384", [(512, 384)])])
def test_sizes_parse(text, expected):
    assert parse_sizes(text) == expected


@pytest.mark.parametrize("text", ["224,abc", "0", "1x2x3", ""])
def test_bad_sizes_are_named(text):
    with pytest.raises(ValueError, match="input size|no input size"):
        parse_sizes(text)


def test_the_module_runs_as_a_command(resnet8_onnx):
    done = subprocess.run([sys.executable, "-m", "nnconform.onnxgraph", "table", str(resnet8_onnx)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "30 candidate cuts" in done.stdout and "shapes @graph size" in done.stdout
