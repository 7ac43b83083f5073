"""Artifact-only compression submissions: files in, the reference decoders out.

The ``submitted-artifact`` compressor runs no proposal code. Its "compression" reads the submitted
files and refuses any whose sha256 differs from the one the manifest pins; its decoder is a
reference one: a plain safetensors state dict of the anchor's architecture (any float dtype, run
in float32), an ONNX graph run by onnxruntime (further files, such as AIMET encodings, count
towards the size), or the decoder of a reference compressor (``fp16``, ``nnc``, ``aimet-quant``...)
reading the files under the names that compressor writes. The runner then decodes on a NaN-filled
template, checks and evaluates it like any other method's artifact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..compress.base import (Artifact, ArtifactError, CompressedModel, CompressionContext, CompressionError,
                             Compressor, CompressorConfig, make_compressor)
from ..hashing import sha256_bytes
from ..kit import ConfigError, register_method

METHOD = "submitted-artifact"


@register_method("compressor", METHOD)
class SubmittedArtifact(Compressor):
    """Reads submitted files (hash-checked) and decodes them with a reference decoder."""

    @dataclass(frozen=True)
    class Config(CompressorConfig):
        """Where the submitted files are, the sha256 each must have, and which reference decoder reads them.

        ``decoder_config`` is the reference compressor's config as canonical JSON (a frozen config must be
        hashable).
        """

        files: tuple[str, ...] = ()
        sha256: tuple[str, ...] = ()
        decoder: str = "safetensors"
        decoder_config: str = "{}"

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.files:
                raise ConfigError(f"{METHOD}: `files` is empty")
            if len(self.files) != len(self.sha256):
                raise ConfigError(f"{METHOD}: {len(self.files)} files but {len(self.sha256)} sha256 values")
            names = [Path(f).name for f in self.files]
            if len(set(names)) != len(names):
                raise ConfigError(f"{METHOD}: two submitted files share a name: {names}")

    description = "artifact-only submission, decoded by a reference decoder"
    #: the files are re-read and re-hashed on every run: a cached copy would hide a changed file
    cacheable = False
    #: ONNX graphs run integer kernels where a simulation would not; there is no method-side model to match
    decode_tolerance = 5e-2

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressedModel:
        """The submitted files, each refused unless its bytes hash to the pinned sha256."""
        config = self.config
        files = {}
        for path, pinned in zip(config.files, config.sha256):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise CompressionError(f"submitted file {path}: cannot be read ({exc})") from None
            actual = sha256_bytes(data)
            if actual != pinned:
                raise ArtifactError(f"submitted file {path}: sha256 is {actual}, the manifest pins {pinned}: the file "
                                    f"is not the one the proposal declared")
            files[Path(path).name] = data
        artifact = Artifact(files, f"submitted:{config.decoder}")
        return CompressedModel(None, artifact, artifact.nbytes,
                               metadata={"decoder": config.decoder, "files": {Path(p).name: h for p, h in
                                                                              zip(config.files, config.sha256)}})

    def decode(self, artifact: Artifact, template: nn.Module, ctx: CompressionContext) -> nn.Module:
        """The plain safetensors or ONNX decoder, or the named reference compressor's own decoder."""
        config = self.config
        if config.decoder == "safetensors":
            return _decode_state_dict(artifact, template)
        if config.decoder == "onnx":
            return _decode_onnx(artifact)
        reference = make_compressor(config.decoder, json.loads(config.decoder_config))
        return reference.decode(artifact, template, ctx)


def _single(artifact: Artifact, suffix: str) -> tuple[str, bytes]:
    matches = [n for n in artifact.files if n.endswith(suffix)]
    if len(matches) != 1:
        raise ArtifactError(f"the submission needs exactly one {suffix} file, it has {sorted(artifact.files)}")
    return matches[0], artifact.files[matches[0]]


def _decode_state_dict(artifact: Artifact, template: nn.Module) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load

    from ..compress.serialize import load_full_state

    name, data = _single(artifact, ".safetensors")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{name}: not a safetensors file ({type(exc).__name__}: {exc})") from None
    reference = template.state_dict()
    state = {}
    for key, value in tensors.items():
        like = reference.get(key)
        state[key] = value.to(like.dtype) if like is not None and value.is_floating_point() else value
    return load_full_state(template, state, name).eval()


def _decode_onnx(artifact: Artifact) -> nn.Module:
    from ..compress.serialize import OnnxModule, check_onnx

    name, data = _single(artifact, ".onnx")
    check_onnx(data, name)
    return OnnxModule(data, optimization="basic").eval()


SubmittedArtifactConfig = SubmittedArtifact.Config


def config_for(files, decoder: str, decoder_config) -> SubmittedArtifactConfig:
    """The config of one artifact-only operating point (its claims are the point's)."""
    return SubmittedArtifactConfig(files=tuple(str(f.path) for f in files), sha256=tuple(f.sha256 for f in files),
                                   decoder=decoder, decoder_config=json.dumps(dict(decoder_config), sort_keys=True))


__all__ = ["METHOD", "SubmittedArtifact", "SubmittedArtifactConfig", "config_for"]
