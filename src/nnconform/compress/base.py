"""The compressor method kind: one class per method with a nested frozen, versioned ``Config``.

A *compressor* turns an anchor model (and a fixed calibration set) into a :class:`CompressedModel`:
the serialized :class:`Artifact` (real bytes), the in-memory module the method produced, and what
the method says about itself (size, params, MACs, metadata). The engine never evaluates the
in-memory module: it evaluates ``decode(artifact)``, rebuilt on a template whose weights are NaN,
and checks that both agree (see :mod:`nnconform.compress.runner`).

Built-in reference methods and third-party proposals go through the same door, the kit's method
kind ``compressor`` (:data:`COMPRESSORS`, entry-point group ``nnconform.compressors``)::

    @kit.register_method("compressor", "my-method")
    class MyMethod(Compressor):
        @dataclass(frozen=True)
        class Config(CompressorConfig):
            bits: int = 8

        def compress(self, model, ctx): ...          # uses self.config
        def decode(self, artifact, template, ctx): ...

``make_compressor(name, params)`` (``kit.make("compressor", ...)``) builds an instance. The accuracy
or size a point claims is the operating point's (:class:`nnconform.compress.plan.CompressionPoint`),
never the config's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from ..hashing import sha256_bytes
from ..kit import ConfigError, MethodConfig, make, method_class, method_kind


class CompressionError(RuntimeError):
    """A method could not compress a model (its own failure, reported in its cases)."""


class ArtifactError(ValueError):
    """An artifact is malformed or does not decode; the message names the file and the problem."""


class CompressorUnavailable(RuntimeError):
    """A package a method needs is not installed; the message gives the install line (cases skip)."""


@dataclass(frozen=True)
class CompressorConfig(MethodConfig):
    """Base of every compressor's nested ``Config`` (the kit's :class:`~nnconform.kit.MethodConfig`:
    frozen, versioned, validated in ``__post_init__``, round-trips to a plain dict)."""


# ---------------------------------------------------------------------------------------------
# Artifacts and results


@dataclass(frozen=True)
class Artifact:
    """The serialized compressed model: named files and their exact bytes.

    Its size is the sum of the file lengths: what a deployment would store or transmit. ``format``
    names the encoding (``safetensors+structure``, ``onnx-qdq``, ``nnc``...) for the report.
    """

    files: Mapping[str, bytes]
    format: str

    def __post_init__(self) -> None:
        if not self.files:
            raise ArtifactError("an artifact needs at least one file")
        for name, data in self.files.items():
            if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
                raise ArtifactError(f"artifact file name {name!r} must be a plain file name")
            if not isinstance(data, (bytes, bytearray)):
                raise ArtifactError(f"artifact file {name!r} holds {type(data).__name__}, not bytes")
        object.__setattr__(self, "files", {k: bytes(v) for k, v in self.files.items()})

    @property
    def nbytes(self) -> int:
        """Total size in bytes (sum of the file lengths)."""
        return sum(len(v) for v in self.files.values())

    @property
    def sha256(self) -> str:
        """Fingerprint of the names and bytes of all files, in order."""
        parts = [f"{name}:{sha256_bytes(data)}" for name, data in sorted(self.files.items())]
        return sha256_bytes("\n".join(parts).encode())

    def file(self, name: str) -> bytes:
        """One file's bytes; an ArtifactError naming the files present otherwise."""
        try:
            return self.files[name]
        except KeyError:
            raise ArtifactError(f"{self.format} artifact has no file {name!r}; it has {sorted(self.files)}") from None

    def sizes(self) -> dict[str, int]:
        """Bytes per file."""
        return {k: len(v) for k, v in self.files.items()}

    def write(self, folder: str | Path) -> Path:
        """Write every file into ``folder`` (created); returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (folder / name).write_bytes(data)
        return folder

    @classmethod
    def read(cls, folder: str | Path, names: list[str], format: str) -> "Artifact":
        """Read the named files back from ``folder``."""
        folder = Path(folder)
        return cls({n: (folder / n).read_bytes() for n in names}, format)


@dataclass
class CompressedModel:
    """What a compressor returns for one operating point.

    ``module`` is the method's own in-memory result (used only to prove the artifact encodes it);
    ``reported_bytes`` is the size the method claims (must equal ``artifact.nbytes``); ``params``
    and ``macs`` describe the compressed model (``None``: the engine counts them on the decoded
    module); ``metadata`` is anything the method wants in the report (per-layer ranks, encodings).
    ``probe_logits``: a method that ran in another process (a proposal's, in the sandbox) returns no
    module but its module's logits on the runner's probe inputs (the first ``PROBE_SAMPLES``
    calibration images), which the consistency check compares with the decoded model's.
    """

    module: torch.nn.Module | None
    artifact: Artifact
    reported_bytes: int
    params: int | None = None
    macs: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    probe_logits: torch.Tensor | None = None


@dataclass(frozen=True)
class CalibrationSet:
    """A fixed, documented list of training samples, preprocessed for the anchor.

    ``images`` is the model input (float32 ``[N, C, H, W]``); ``indices`` are the sample indices
    in ``dataset``/``split``; ``fingerprint`` covers the dataset fingerprint and the indices.
    """

    dataset: str
    split: str
    indices: tuple[int, ...]
    images: torch.Tensor
    labels: torch.Tensor
    fingerprint: str
    description: str = ""

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` samples (all when ``n`` is None)."""
        n = len(self) if n is None else min(n, len(self))
        return self.images[:n], self.labels[:n]

    def loader(self, batch_size: int, n: int | None = None, *, with_labels: bool = True):
        """A deterministic (unshuffled) DataLoader over the first ``n`` samples."""
        x, y = self.take(n)
        ds = torch.utils.data.TensorDataset(x, y) if with_labels else torch.utils.data.TensorDataset(x)
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)

    def to_dict(self) -> dict[str, Any]:
        """What the report records (the index list itself lives in ``anchors/compression.toml``)."""
        return {"dataset": self.dataset, "split": self.split, "samples": len(self), "fingerprint": self.fingerprint,
                "first_indices": list(self.indices[:8]), "description": self.description}


@dataclass(frozen=True)
class CompressionContext:
    """What a handler may use besides the model: shapes, calibration data, a private folder
    (removed after the call) and a cache folder for intermediate results that survive runs."""

    anchor: str
    input_shape: tuple[int, ...]
    num_classes: int
    calibration: CalibrationSet
    workdir: Path
    cache_dir: Path | None = None
    seed: int = 0
    #: where a handler computes (``--nnc-device``): AIMET moves the model and batches here; artifacts come back on CPU
    device: str = "cpu"

    def dummy_input(self, batch: int = 1) -> torch.Tensor:
        """A deterministic input of the anchor's shape (for tracing and export)."""
        return self.calibration.images[:batch].clone()


# ---------------------------------------------------------------------------------------------
# The method kind


#: Relative tolerance of the decoded model against the method's own module, unless the class sets
#: ``decode_tolerance`` (an ONNX runtime computing integer kernels differs from AIMET's
#: fake-quantization simulation by a rounding step here and there).
DEFAULT_DECODE_TOLERANCE = 1e-4


class Compressor:
    """Base of a compression method: ``compress`` and ``decode`` with ``self.config``.

    ``decode`` receives only the artifact and an architecture *template* whose floating parameters
    and buffers are NaN: whatever the decoded model computes must come from the artifact.
    ``cacheable = False`` keeps a method's artifacts out of the cache (one that reads files the
    user may change); ``decode_tolerance`` is how far the decoded model may be from the method's own.
    """

    Config: ClassVar[type[CompressorConfig]] = CompressorConfig
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    decode_tolerance: ClassVar[float] = DEFAULT_DECODE_TOLERANCE
    cacheable: ClassVar[bool] = True

    def __init__(self, config: CompressorConfig) -> None:
        if not isinstance(config, type(self).Config):
            raise ConfigError(f"compressor {self.name!r} needs a {type(self).__qualname__}.Config, got "
                              f"{type(config).__qualname__}")
        self.config = config

    def compress(self, model: torch.nn.Module, ctx: CompressionContext) -> CompressedModel:
        """The artifact (and in-memory result) of ``model`` at this config."""
        raise NotImplementedError

    def decode(self, artifact: Artifact, template: torch.nn.Module, ctx: CompressionContext) -> torch.nn.Module:
        """The model ``artifact`` encodes, rebuilt on the NaN-filled ``template``."""
        raise NotImplementedError


#: Every compression method, built in or contributed (entry-point group ``nnconform.compressors``).
COMPRESSORS = method_kind("compressor", "nnconform.compressors")


def compressor_class(name: str) -> type:
    """The class registered as ``name`` (a KeyError suggests close names; a TypeError names a class
    that is not a method)."""
    return method_class("compressor", name)


def make_compressor(name: str, params: Mapping[str, Any] | None = None):
    """A compressor instance from its name and config fields: ``make_compressor("nnc", {"qp": -32})``."""
    return make("compressor", name, params)


def config_from_dict(data: Mapping[str, Any]) -> CompressorConfig:
    """Rebuild any method's config from its dict (``{"method": ..., ...}``)."""
    if "method" not in data:
        raise ConfigError(f"a compressor config needs a 'method' key; got {sorted(data)}")
    return compressor_class(data["method"]).Config.from_dict(data)


def make_config(method: str, **fields) -> CompressorConfig:
    """A method's config from keyword fields: ``make_config("aimet-ssvd", target_ratio=0.5)``."""
    return compressor_class(method).Config.from_dict({**fields, "method": method})
