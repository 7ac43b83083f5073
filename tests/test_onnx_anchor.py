"""ONNX anchors in the criteria (issue 14): the embedded onnx-fmnist-resnet8 and the gates on ONNX files.

* the embedded file is what its committed recipe exports, its manifest figures are the graph's, and its
  Fashion-MNIST accuracy in onnxruntime is the torch anchor's;
* a file with a wrong sha256, a truncated file and a wrong documented count fail their cases, naming the file;
* the accuracy gate fails a planted bad graph (weights zeroed), the split gates fail a planted bad tail;
* a user-supplied zoo file that is absent skips with the exact file, folder and URL.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnconform.anchors import WeightsIntegrityError, WeightsUnavailable, get_anchor, select_anchors
from nnconform.paths import REPO_ROOT

NAME = "onnx-fmnist-resnet8"
ANCHORS = REPO_ROOT / "anchors"


@pytest.fixture(scope="module")
def fmnist_test():
    from nnconform.data import DatasetUnavailable, load_dataset

    try:
        return load_dataset("fashion-mnist", "test")
    except DatasetUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def onnx_eval(fmnist_test, tmp_path_factory):
    """``(evaluator, result)``: the embedded ONNX anchor evaluated once on the Fashion-MNIST test set."""
    from nnconform.evaluate import Evaluator

    anchor = get_anchor(NAME)
    evaluator = Evaluator(tmp_path_factory.mktemp("cache"))
    return evaluator, evaluator.evaluate(anchor.build(), fmnist_test, anchor.preprocess)


def _anchors_dir(tmp_path: Path, edit) -> Path:
    """An anchors folder like the repository's (every entry linked) whose onnx.toml is ``edit(text)``."""
    folder = tmp_path / "anchors"
    folder.mkdir()
    for entry in ANCHORS.iterdir():
        if entry.name != "onnx.toml":
            (folder / entry.name).symlink_to(entry)
    (folder / "onnx.toml").write_text(edit((ANCHORS / "onnx.toml").read_text()))
    return folder


def _entry(text: str, name: str = NAME) -> tuple[int, int]:
    """Start and end of the ``[onnx_anchors.<name>]`` table in the manifest text."""
    start = text.index(f"[onnx_anchors.{name}]")
    nxt = text.find("\n[", start + 1)
    return start, len(text) if nxt < 0 else nxt + 1


def _replace_in_entry(text: str, pattern: str, repl: str) -> str:
    start, end = _entry(text)
    body, n = re.subn(pattern, repl, text[start:end], count=1, flags=re.M)
    assert n == 1, pattern
    return text[:start] + body + text[end:]


# ---------------------------------------------------------------------------------------------
# The embedded anchor


def test_embedded_onnx_anchor_is_a_criteria_anchor_outside_the_default_set():
    anchor = get_anchor(NAME)
    assert anchor.family == "onnx" and anchor.weights == f"onnx:{NAME}" and not anchor.default
    assert NAME in select_anchors("onnx") and NAME not in select_anchors("default")
    assert "onnx-vgg16" in select_anchors("onnx")
    assert "onnx-ssd-resnet34" not in select_anchors("all")  # detection graphs: node tables only


def test_embedded_file_is_what_the_committed_recipe_exports(tmp_path):
    from nnconform.hashing import sha256_file
    from nnconform.onnxgraph.export import export
    from nnconform.onnxgraph.manifest import get_onnx_anchor

    pinned = get_onnx_anchor(NAME)
    committed = ANCHORS / pinned.embedded
    assert sha256_file(committed) == pinned.sha256 and committed.stat().st_size == pinned.size_bytes
    rebuilt = export([NAME], tmp_path)[NAME]
    assert sha256_file(rebuilt) == pinned.sha256, "the export recipe no longer reproduces the committed file"


def test_documented_counts_are_the_graphs_with_batch_norm_folded():
    from nnconform.anchor_checks import check_params_macs

    rec = check_params_macs(get_anchor(NAME))
    assert rec.passed, rec.message
    torch_anchor = get_anchor("fmnist-resnet8")
    # folding a batch-norm of C channels into its (bias-free) convolution drops 2C scales and shifts, adds C biases
    channels = sum(m.num_features for m in torch_anchor.build_architecture().modules()
                   if isinstance(m, torch.nn.BatchNorm2d))
    assert rec.measured == {"num_params": torch_anchor.num_params - channels, "macs": torch_anchor.macs}


def test_onnxruntime_accuracy_equals_the_torch_anchors(fmnist_test, onnx_eval):
    from nnconform.anchor_checks import check_documented_accuracy

    onnx_anchor, torch_anchor = get_anchor(NAME), get_anchor("fmnist-resnet8")
    evaluator, onnx_result = onnx_eval
    torch_result = evaluator.evaluate(torch_anchor.build(), fmnist_test, torch_anchor.preprocess)
    assert onnx_result.top1 == torch_result.top1
    assert torch.equal(onnx_result.predictions, torch_result.predictions)
    assert float((onnx_result.logits - torch_result.logits).abs().max()) < 1e-4
    rec = check_documented_accuracy(onnx_anchor, fmnist_test, onnx_result)
    assert rec.passed and rec.check_id == "anchor.accuracy", rec.message


# ---------------------------------------------------------------------------------------------
# Gates that must fail


def _zeroed_weights(onnx_bytes: bytes) -> bytes:
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    for i, init in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.ndim >= 2:  # convolution and linear weights, not shapes
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.zeros_like(array), init.name))
    return model.SerializeToString()


def test_accuracy_gate_fails_a_graph_with_zeroed_weights(fmnist_test, onnx_eval):
    from nnconform.anchor_checks import check_documented_accuracy
    from nnconform.onnxgraph.anchor import OnnxAnchorModule

    anchor = get_anchor(NAME)
    evaluator, good_result = onnx_eval
    bad = OnnxAnchorModule(_zeroed_weights(anchor.build().onnx_bytes.numpy().tobytes()))
    bad_result = evaluator.evaluate(bad, fmnist_test, anchor.preprocess)
    assert bad_result.key != good_result.key  # other bytes, another cache entry: never the good graph's outputs
    good_rec = check_documented_accuracy(anchor, fmnist_test, good_result)
    bad_rec = check_documented_accuracy(anchor, fmnist_test, bad_result)
    assert good_rec.passed, good_rec.message  # the real graph is within tolerance
    assert not bad_rec.passed and bad_rec.measured < 0.2, bad_rec.message


def test_wrong_sha256_fails_naming_the_file(tmp_path, monkeypatch):
    from nnconform.anchor_checks import check_weights_sha256

    wrong = "0" * 64
    folder = _anchors_dir(tmp_path, lambda t: _replace_in_entry(t, r'^sha256 = ".*"$', f'sha256 = "{wrong}"'))
    monkeypatch.setenv("NNCONFORM_ANCHORS_DIR", str(folder))
    anchor = get_anchor(NAME)
    rec = check_weights_sha256(anchor)
    assert not rec.passed and "fmnist-resnet8.onnx" in rec.message and rec.expected == wrong
    with pytest.raises(WeightsIntegrityError, match=r"fmnist-resnet8\.onnx.*sha256"):
        anchor.build()


def test_truncated_file_fails_naming_the_file(tmp_path, monkeypatch):
    data = (ANCHORS / "zoo/fmnist-resnet8/fmnist-resnet8.onnx").read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/fmnist-resnet8.onnx").write_bytes(data[: len(data) // 2])
    folder = _anchors_dir(tmp_path, lambda t: _replace_in_entry(t, r'^embedded = ".*"$',
                                                              'embedded = "bad/fmnist-resnet8.onnx"'))
    (folder / "bad").symlink_to(tmp_path / "bad")
    monkeypatch.setenv("NNCONFORM_ANCHORS_DIR", str(folder))
    with pytest.raises(WeightsIntegrityError, match=r"bad/fmnist-resnet8\.onnx: 156,762 bytes.*truncated"):
        get_anchor(NAME).build()


def test_wrong_documented_count_fails_the_params_gate(tmp_path, monkeypatch):
    from nnconform.anchor_checks import check_params_macs

    folder = _anchors_dir(tmp_path, lambda t: _replace_in_entry(t, r"^num_params = \d+$", "num_params = 77754"))
    monkeypatch.setenv("NNCONFORM_ANCHORS_DIR", str(folder))
    rec = check_params_macs(get_anchor(NAME))
    assert not rec.passed and rec.measured["num_params"] == 77418 and rec.expected["num_params"] == 77754


def test_absent_zoo_file_skips_with_file_folder_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("NNCONFORM_ONNX_DIR", str(tmp_path / "onnx"))
    with pytest.raises(WeightsUnavailable) as info:
        get_anchor("onnx-vgg16").build()
    message = str(info.value)
    assert "vgg16-7.onnx" in message and str(tmp_path / "onnx") in message and "https://github.com/onnx/models" in message


def test_conformance_cases_of_a_tampered_anchor_fail_naming_the_file(tmp_path):
    """The anchors criterion itself: the cases of an anchor whose file does not match its pin fail (not skip) with
    an anchor.weights_sha256 FAIL naming the file."""
    folder = _anchors_dir(tmp_path, lambda t: _replace_in_entry(t, r'^sha256 = ".*"$', f'sha256 = "{"1" * 64}"'))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO_ROOT / "conformance/test_anchors.py"), "--nnc-anchors", NAME,
         "-k", "weights_sha256 or documented_accuracy", "--nnc-threads", "1", "--nnc-no-report", "-p",
         "no:cacheprovider", "--nnc-cache-dir", str(tmp_path / "cache"), "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "NNCONFORM_ANCHORS_DIR": str(folder)})
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "2 failed" in out and "FAIL" in out, out
    assert "fmnist-resnet8.onnx" in out and "1111111111" in out, out


# ---------------------------------------------------------------------------------------------
# Split at graph nodes


def test_split_graph_of_the_embedded_anchor():
    from nnconform.onnxgraph.splitgraph import OnnxSplitGraph

    anchor = get_anchor(NAME)
    model = anchor.build()
    graph = OnnxSplitGraph.from_module(model, anchor.input_shape)
    x = torch.randn((3, *anchor.input_shape), generator=torch.Generator().manual_seed(0))
    ref = model(x)
    branches = {c.name: c.num_tensors for c in graph.cuts}
    assert branches["layer2.relu2.Relu"] == 1 and branches["layer2.relu1.Relu"] == 2  # residual: 2 branches
    for cut in graph.cuts:
        head, tail = graph.split(cut.name)
        mid = head(x)
        mids = mid if isinstance(mid, tuple) else (mid,)
        assert tuple(tuple(t.shape[1:]) for t in mids) == cut.shapes
        assert torch.equal(tail(*mids), ref), cut.name  # bit-identical: no optimisation on either side
    params, macs = graph.totals()
    for name, p in graph.profiles().items():
        assert p.head_macs + p.tail_macs == macs and p.head_params + p.tail_params - p.shared_params == params, name
    assert graph.shapes_at((1, 56, 56))["layer2.relu2.Relu"] == ((32, 28, 28),)


def test_split_gates_fail_a_planted_bad_tail():
    from nnconform.onnxgraph.splitgraph import OnnxSplitGraph
    from nnconform.split.checks import check_head_tail_identity, check_onnx

    anchor = get_anchor(NAME)
    model = anchor.build()
    graph = OnnxSplitGraph.from_module(model, anchor.input_shape)
    x = torch.randn((1, *anchor.input_shape), generator=torch.Generator().manual_seed(1))
    cut = "layer2.relu2.Relu"
    assert check_head_tail_identity(NAME, model, graph, [cut], x, trained=True).passed
    assert check_onnx(NAME, graph, [cut], x, trained=True).passed
    real_tail = graph.tail(cut)
    graph.tail = lambda name: (lambda *t: real_tail(*(v * 1.01 for v in t)))  # a tail that scales its input
    graph.split = lambda name: (graph.head(name), graph.tail(name))
    rec = check_head_tail_identity(NAME, model, graph, [cut], x, trained=True)
    assert not rec.passed and cut in rec.message
