"""An ONNX file checked before it is used, and run in onnxruntime.

A file is trusted only through its pinned sha256: a wrong digest (a truncated download, another
release) is an :class:`OnnxFileError` naming the file, the digest found and the one pinned. Tensors
kept as external data must name files inside the model's own folder (no absolute path, no ``..``,
no link leading out: :func:`nnconform.proposal.tree.confine`), each listed with its own sha256; the
file size reported is the model file plus its external data. A file that is simply absent is an
:class:`OnnxUnavailable` (a case skips with its message, which says which file to put where).

onnxruntime runs on the CPU provider with deterministic compute, sequential execution and the
run's thread count, so two runs of one graph on one machine give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..hashing import sha256_file


class OnnxFileError(RuntimeError):
    """An ONNX file exists but cannot be accepted: wrong sha256, truncated or unreadable, external data
    outside its folder or not listed (the message names the file)."""


class OnnxUnavailable(RuntimeError):
    """An ONNX file (or one of its external data files) the user must supply is absent."""


@dataclass(frozen=True)
class ExternalData:
    """One external data file of a model: its name relative to the model's folder and its sha256."""

    name: str
    sha256: str


@dataclass(frozen=True, eq=False)
class OnnxFile:
    """A verified ONNX model: its path, sha256, total size in bytes (external data included) and the
    parsed ``onnx.ModelProto`` with every tensor's data loaded."""

    path: Path
    sha256: str
    size_bytes: int
    model: Any
    external: tuple[ExternalData, ...] = ()

    @property
    def input_names(self) -> list[str]:
        """The graph's real inputs (initializers listed as inputs by old exporters left out)."""
        return real_inputs(self.model)

    def counts(self) -> tuple[int, int]:
        """``(parameters, MACs)`` read from the graph (:mod:`nnconform.compress.onnx_profile`)."""
        from ..compress.onnx_profile import onnx_counts

        return onnx_counts(self.model.SerializeToString())


def real_inputs(model) -> list[str]:
    """Names of the graph inputs that are not initializers (IR < 4 lists weights as inputs too)."""
    stored = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in stored]


def load_onnx(path: str | Path, sha256: str | None = None, external: Iterable[ExternalData] = (), *,
              check: bool = True) -> OnnxFile:
    """Read ``path`` after checking its sha256 (when pinned) and its external data (each a listed, pinned
    file inside the model's folder); ``onnx.checker`` validates the graph when ``check``."""
    import onnx

    from ..proposal.tree import PathEscape, confine, onnx_external_data_problems

    path = Path(path)
    external = tuple(external)
    if not path.is_file():
        raise OnnxUnavailable(f"ONNX file {path.name} is not in {path.parent}")
    actual = sha256_file(path)
    if sha256 is not None and actual != sha256:
        raise OnnxFileError(f"{path}: sha256 is {actual} ({path.stat().st_size} bytes), but {sha256} is pinned; "
                            "the file is truncated, corrupt or not the published one")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OnnxFileError(f"{path}: not a readable ONNX model (truncated?): {type(exc).__name__}: {exc}") from None
    folder = path.parent
    problems = onnx_external_data_problems(folder, path.name, [e.name for e in external])
    if problems:
        raise OnnxFileError(f"{path}: external data refused: " + "; ".join(problems))
    size = path.stat().st_size
    for e in external:
        try:
            target = confine(folder, e.name, where=f"{path.name}: external data")
        except PathEscape as exc:
            raise OnnxFileError(f"{path}: {exc}") from None
        if not target.is_file():
            raise OnnxUnavailable(f"external data file {e.name} of {path.name} is not in {folder}")
        digest = sha256_file(target)
        if digest != e.sha256:
            raise OnnxFileError(f"{target}: external data of {path.name} has sha256 {digest}, but {e.sha256} "
                                "is pinned; it is truncated, corrupt or not the published one")
        size += target.stat().st_size
    if external:
        try:
            onnx.load_external_data_for_model(model, str(folder))
        except Exception as exc:
            raise OnnxFileError(f"{path}: its external data cannot be read: {type(exc).__name__}: {exc}") from None
    if check:
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise OnnxFileError(f"{path}: not a valid ONNX graph: {type(exc).__name__}: {exc}") from None
    return OnnxFile(path=path, sha256=actual, size_bytes=size, model=model, external=external)


def make_session(model, threads: int = 1):
    """An onnxruntime session on the CPU provider: deterministic compute, sequential execution,
    ``threads`` intra-op threads (the run's ``--nnc-threads``) and one inter-op thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.use_deterministic_compute = True
    opts.log_severity_level = 3  # warnings about unused initializers of cut graphs are noise here
    data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
    return ort.InferenceSession(bytes(data), sess_options=opts, providers=["CPUExecutionProvider"])


def run_model(session, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray] | np.ndarray,
              outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Run ``session`` on ``inputs`` (by name, or in the session's input order) and return its outputs
    by name (``outputs`` chooses some)."""
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    feed = dict(inputs) if isinstance(inputs, Mapping) else dict(zip(names, inputs))
    missing = [n for n in names if n not in feed]
    if missing:
        raise ValueError(f"inputs {missing} of the graph were not given (given: {sorted(feed)})")
    wanted = list(outputs) if outputs is not None else [o.name for o in session.get_outputs()]
    return dict(zip(wanted, session.run(wanted, {n: feed[n] for n in names})))


def evaluate_top1(onnx_file: OnnxFile, dataset, preprocess, batch_size: int = 64,
                  threads: int = 1) -> tuple[np.ndarray, float]:
    """``(logits [N, C], top-1)`` of a classifier graph over an :class:`~nnconform.data.ImageDataset`."""
    session = make_session(onnx_file.model, threads)
    (inp,) = [i.name for i in session.get_inputs()]
    out = session.get_outputs()[0].name
    logits, labels = [], []
    for x, y in dataset.batches(preprocess, batch_size):
        logits.append(session.run([out], {inp: x.numpy().astype(np.float32)})[0].reshape(len(x), -1))
        labels.append(y.numpy())
    scores, truth = np.concatenate(logits), np.concatenate(labels)
    return scores, float(np.mean(scores.argmax(1) == truth))
