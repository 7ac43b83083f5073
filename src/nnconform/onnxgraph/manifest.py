"""ONNX model-zoo anchors: ``[onnx_anchors.<name>]`` tables of ``anchors/onnx.toml``.

An ONNX anchor is a file, not a torch architecture: a pinned file name and sha256 (the ONNX model
zoo's Git LFS object id is the file's sha256), its size, the URL it is published at, its external
data files if any, the input sizes its node table is computed at and the documented metrics. The
files are large and never downloaded by nnconform: a run looks for them in ``<data dir>/onnx``
(``--nnc-data-dir``), else ``$NNCONFORM_ONNX_DIR``, else ``~/.cache/nnconform/onnx``, and an absent file
is an :class:`~nnconform.onnxgraph.files.OnnxUnavailable` whose message names the file, the folder and
the URL. An embedded anchor (``embedded``: a path under the anchors folder, written by
``python -m nnconform.onnxgraph export``) is read from there instead.

A classification anchor with ``num_classes``, ``num_params``, ``macs`` and ``preprocess`` takes part in the
anchors and split criteria (:attr:`OnnxAnchor.in_criteria`, :mod:`nnconform.onnxgraph.anchor`); the others
(the detection graphs) give node tables only.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..data import Preprocess
from ..paths import anchors_dir, read_toml
from .files import ExternalData, OnnxFile, OnnxFileError, OnnxUnavailable, load_onnx

FILE_NAME = "onnx.toml"
TABLE = "onnx_anchors"
TASKS = ("classification", "detection")
DATASETS = ("imagenet-1k", "coco-val2017", "fashion-mnist")
ENV_DIR = "NNCONFORM_ONNX_DIR"


class OnnxManifestError(ValueError):
    """``anchors/onnx.toml`` is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class OnnxAnchor:
    """A model-zoo ONNX file pinned by name, sha256 and size, with where it comes from and how it is run."""

    name: str
    file: str
    sha256: str
    size_bytes: int
    source: str
    task: str
    dataset: str
    input_shape: tuple[int, ...]
    sizes: tuple[int, ...]
    metrics: Mapping[str, float]
    license: str
    provenance: str
    preprocess: Preprocess | None = None
    external_data: tuple[ExternalData, ...] = ()
    default: bool = False
    manifest: str = ""
    notes: str = field(default="", compare=False)
    #: a path under the anchors folder (an embedded anchor, committed); "" for a file the user supplies
    embedded: str = ""
    num_classes: int | None = None
    #: the documented parameters and MACs (counted from the graph by the anchors criterion)
    num_params: int | None = None
    macs: int | None = None
    #: how far the measured metric may lie from the documented one
    tolerance: float = 0.005

    @property
    def in_criteria(self) -> bool:
        """Whether the anchor takes part in the criteria: a classifier with classes, preprocessing and documented
        parameters and MACs (a detection graph gives node tables only)."""
        return (self.task == "classification" and self.num_classes is not None and self.preprocess is not None
                and self.num_params is not None and self.macs is not None)

    def folder(self, data_dir: str | Path | None = None) -> Path:
        """Where the file is looked for: an embedded one's folder under the anchors folder; else
        ``<data_dir>/onnx``, else ``$NNCONFORM_ONNX_DIR``, else ``~/.cache/nnconform/onnx``."""
        if self.embedded:
            return (anchors_dir() / self.embedded).parent
        return onnx_dir(data_dir)

    def path(self, data_dir: str | Path | None = None) -> Path:
        """The file's expected location."""
        return self.folder(data_dir) / self.file

    def load(self, data_dir: str | Path | None = None) -> OnnxFile:
        """The verified file (sha256, external data); :class:`OnnxUnavailable` says where to put an absent one."""
        path = self.path(data_dir)
        if not path.is_file() and self.embedded:
            raise OnnxUnavailable(f"{self.name}: embedded ONNX file {self.embedded} is not in {path.parent}; write it "
                                  f"with `python -m nnconform.onnxgraph export {self.name}`")
        if not path.is_file():
            raise OnnxUnavailable(
                f"{self.name}: ONNX file {self.file} ({self.size_bytes:,} bytes, sha256 {self.sha256}) is not in "
                f"{path.parent}; download {self.source} and put it there as {self.file} (the folder is "
                f"<data dir>/onnx when the node-table CLI is given --data-dir, else ${ENV_DIR}, else "
                f"~/.cache/nnconform/onnx)")
        found = path.stat().st_size
        if found != self.size_bytes:  # cheaper than hashing half a gigabyte, and says what happened
            raise OnnxFileError(f"{path}: {found:,} bytes, but {self.file} is {self.size_bytes:,} bytes "
                                f"({'truncated' if found < self.size_bytes else 'not the published file'}); "
                                f"download {self.source} again")
        return load_onnx(path, self.sha256, self.external_data)


def onnx_dir(data_dir: str | Path | None = None) -> Path:
    """The folder ONNX anchor files are read from (see :meth:`OnnxAnchor.folder`)."""
    if data_dir:
        return Path(data_dir) / "onnx"
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    return Path.home() / ".cache" / "nnconform" / "onnx"


def parse_onnx_anchor(name: str, raw: object, manifest: str) -> OnnxAnchor:
    """One ``[onnx_anchors.<name>]`` table, every field type- and range-checked, unknown fields refused."""
    import re

    from ..kit.plan import PlanError, Table

    where = f"{manifest}: {TABLE}.{name}"
    try:
        t = Table(raw, where)
        sha = t.str("sha256")
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise PlanError(f"{t.at('sha256')}: {sha!r} is not a full 64-hex-digit sha256")
        file = t.str("file")
        embedded = t.str("embedded", "")
        if embedded and (embedded.startswith("/") or ".." in embedded.split("/") or Path(embedded).name != file):
            raise PlanError(f"{t.at('embedded')}: {embedded!r} must be a path under the anchors folder ending in "
                            f"the file name {file!r}")
        if "/" in file or "\\" in file or not file.endswith(".onnx"):
            raise PlanError(f"{t.at('file')}: {file!r} must be a bare file name ending in .onnx")
        external = []
        for e in t.tables("external_data", []):
            external.append(ExternalData(e.str("file"), e.str("sha256")))
            e.done()
        metrics_t = t.table("metrics", {})
        metrics = {k: metrics_t.float(k, min=0, max=1) for k in list(metrics_t.data)}
        preprocess = None
        if t.has("preprocess"):
            try:
                preprocess = Preprocess.from_dict(t.get("preprocess", dict))
            except (TypeError, KeyError, ValueError) as exc:
                raise PlanError(f"{t.at('preprocess')}: {exc}") from None
        anchor = OnnxAnchor(
            name=name, file=file, sha256=sha, size_bytes=t.int("size_bytes", min=1), source=t.str("source"),
            task=t.str("task", choices=TASKS), dataset=t.str("dataset", choices=DATASETS),
            input_shape=tuple(t.list("input_shape", int, check=t.positive)),
            sizes=tuple(t.list("sizes", int, check=t.positive)), metrics=metrics, license=t.str("license"),
            provenance=t.str("provenance"), preprocess=preprocess, external_data=tuple(external),
            default=t.bool("default", False), manifest=manifest, notes=t.str("notes", ""), embedded=embedded,
            num_classes=t.int("num_classes", None, min=1), num_params=t.int("num_params", None, min=0),
            macs=t.int("macs", None, min=0), tolerance=t.float("tolerance", 0.005, min=0, max=1))
        t.done()
    except PlanError as exc:
        raise OnnxManifestError(str(exc)) from None
    if not anchor.embedded and not anchor.source.startswith("https://"):
        raise OnnxManifestError(f"{where}.source: {anchor.source!r} is not an https URL of the published file")
    return anchor


def load_onnx_manifest(path: str | Path) -> dict[str, OnnxAnchor]:
    """Every ONNX anchor of one manifest file (a missing file holds none)."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = read_toml(path, OnnxManifestError)
    unknown = sorted(set(data) - {TABLE})
    if unknown:
        raise OnnxManifestError(f"{path}: unknown top-level table(s) {unknown}; ONNX anchors are [{TABLE}.<name>]")
    return {name: parse_onnx_anchor(name, raw, str(path)) for name, raw in data.get(TABLE, {}).items()}


@functools.lru_cache(maxsize=4)
def _load(folder: Path) -> dict[str, OnnxAnchor]:
    anchors = load_onnx_manifest(folder / FILE_NAME)
    from ..anchors import all_anchors

    clash = sorted(set(anchors) & {n for n, a in all_anchors().items() if a.family != "onnx"})
    if clash:
        raise OnnxManifestError(f"{folder / FILE_NAME}: anchor name(s) {clash} are also torch anchors; "
                                "names are unique")
    return anchors


def all_onnx_anchors() -> dict[str, OnnxAnchor]:
    """Every ONNX anchor of ``anchors/onnx.toml``."""
    return _load(anchors_dir())


def get_onnx_anchor(name: str) -> OnnxAnchor:
    """One ONNX anchor by name; a KeyError with close names otherwise."""
    anchors = all_onnx_anchors()
    if name not in anchors:
        import difflib

        close = difflib.get_close_matches(name, anchors, n=3)
        raise KeyError(f"no ONNX anchor named {name!r}" + (f"; did you mean {close}?" if close else "")
                       + f" (known: {sorted(anchors)})")
    return anchors[name]
