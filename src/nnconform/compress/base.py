"""The compressor protocol: one frozen config dataclass plus one handler per method.

A *compressor* turns an anchor model (and a fixed calibration set) into a :class:`CompressedModel`:
the serialized :class:`Artifact` (real bytes), the in-memory module the method produced, and what
the method says about itself (size, params, MACs, metadata). The engine never evaluates the
in-memory module: it evaluates ``decode(artifact)``, rebuilt on a template whose weights are NaN,
and checks that both agree (see :mod:`nnconform.compress.runner`).

Built-in reference methods and third-party proposals go through the same door: the
:data:`COMPRESSORS` registry, filled by :func:`register_compressor` or by entry points in the
``nnconform.compressors`` group (the entry point names a handler class or instance).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol, runtime_checkable

import torch

from ..hashing import sha256_bytes
from ..registry import Registry


class CompressionError(RuntimeError):
    """A method could not compress a model (its own failure, reported in its cases)."""


class ArtifactError(ValueError):
    """An artifact is malformed or does not decode; the message names the file and the problem."""


class CompressorUnavailable(RuntimeError):
    """A package a method needs is not installed; the message gives the install line (cases skip)."""


# ---------------------------------------------------------------------------------------------
# Configs


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_tuple_type(tp) -> bool:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple_type(a) for a in typing.get_args(tp))
    return False


@dataclass(frozen=True)
class CompressorConfig:
    """Base of every method's config: a frozen dataclass that round-trips to a plain dict.

    ``version`` is the config schema version the handler supports (``VERSION``); a config written
    for another version is refused by name. ``claimed_tier`` is the accuracy tier (from
    ``anchors/tiers.toml``) the method claims at this operating point; the case fails when it is
    not met. ``None`` claims nothing: the case then reports the tier met without gating on it.
    """

    VERSION: ClassVar[int] = 1
    method: ClassVar[str] = ""

    version: int = 1
    claimed_tier: str | None = None

    def __post_init__(self) -> None:
        if self.version != self.VERSION:
            raise ValueError(f"{self.method or type(self).__name__} config version {self.version!r} is not "
                             f"supported; this handler reads version {self.VERSION}")
        if self.claimed_tier is not None:
            from ..gates import load_tiers

            tiers = load_tiers()
            if self.claimed_tier not in tiers:
                raise ValueError(f"{self.method}: claimed_tier {self.claimed_tier!r} is not a tier; "
                                 f"valid: {list(tiers)}")

    # helpers for subclasses' __post_init__ ---------------------------------------------------

    def _check_range(self, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
        value = getattr(self, name)
        ok_lo = value > lo if lo_open else value >= lo
        ok_hi = value < hi if hi_open else value <= hi
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (ok_lo and ok_hi):
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise ValueError(f"{self.method}: {name}={value!r} must be in {left}{lo}, {hi}{right}")

    def _check_choice(self, name: str, choices) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ValueError(f"{self.method}: {name}={value!r} must be one of {list(choices)}")

    # round trip ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """``{"method": name, field: value, ...}`` with tuples as lists (JSON/TOML ready)."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CompressorConfig":
        """Build from :meth:`to_dict` output (or a manifest table); unknown keys are refused by name."""
        data = dict(data)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ValueError(f"config for method {method!r} given to {cls.method!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.method}: unknown config field(s) {unknown}; valid: {sorted(names)}")
        hints = _field_types(cls)
        for key, value in list(data.items()):
            if isinstance(value, list) and _is_tuple_type(hints.get(key)):
                data[key] = tuple(value)
        return cls(**data)

    def replace(self, **changes) -> "CompressorConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


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
    """

    module: torch.nn.Module | None
    artifact: Artifact
    reported_bytes: int
    params: int | None = None
    macs: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


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

    def dummy_input(self, batch: int = 1) -> torch.Tensor:
        """A deterministic input of the anchor's shape (for tracing and export)."""
        return self.calibration.images[:batch].clone()


# ---------------------------------------------------------------------------------------------
# The protocol and the registry


@runtime_checkable
class Compressor(Protocol):
    """A compression method: a config class, ``compress`` and ``decode``.

    ``decode`` receives only the artifact, the config and an architecture *template* whose floating
    parameters and buffers are NaN: whatever the decoded model computes must come from the artifact.
    """

    name: str
    config_cls: type[CompressorConfig]
    description: str

    def compress(self, model: torch.nn.Module, config: CompressorConfig, ctx: CompressionContext) -> CompressedModel:
        ...

    def decode(self, artifact: Artifact, template: torch.nn.Module, config: CompressorConfig,
               ctx: CompressionContext) -> torch.nn.Module:
        ...


#: Every compression method, built in or contributed (entry-point group ``nnconform.compressors``).
COMPRESSORS: Registry[Compressor] = Registry("compressor", "nnconform.compressors")


def register_compressor(cls):
    """Class decorator: register a handler class (instantiated once) under ``cls.name``.

    Also binds the config class to the method name so ``config.to_dict()`` records it.
    """
    if not getattr(cls, "name", None) or not getattr(cls, "config_cls", None):
        raise TypeError(f"{cls.__name__} needs class attributes `name` and `config_cls`")
    cls.config_cls.method = cls.name
    COMPRESSORS.register(cls.name, cls())
    return cls


def get_compressor(name: str) -> Compressor:
    """The handler registered as ``name`` (an entry point may name a class; it is instantiated)."""
    obj = COMPRESSORS.get(name)
    if isinstance(obj, type):
        if getattr(obj, "config_cls", None) is not None and not obj.config_cls.method:
            obj.config_cls.method = name
        obj = obj()
        COMPRESSORS.unregister(name)
        COMPRESSORS.register(name, obj)
    if not isinstance(obj, Compressor):
        raise TypeError(f"compressor {name!r} ({obj!r}) does not implement the Compressor protocol "
                        f"(name, config_cls, description, compress, decode)")
    return obj


def config_from_dict(data: Mapping[str, Any]) -> CompressorConfig:
    """Rebuild any method's config from its dict (``{"method": ..., ...}``)."""
    if "method" not in data:
        raise ValueError(f"a compressor config needs a 'method' key; got {sorted(data)}")
    return get_compressor(data["method"]).config_cls.from_dict(data)


def make_config(method: str, **fields) -> CompressorConfig:
    """A method's config from keyword fields: ``make_config("aimet-ssvd", target_ratio=0.5)``."""
    return get_compressor(method).config_cls.from_dict({"method": method, **fields})
