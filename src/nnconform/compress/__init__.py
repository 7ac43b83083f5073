"""Compression criterion (issue 3): compressed vs uncompressed models.

One protocol (:class:`Compressor`: a frozen config dataclass plus ``compress``/``decode``), one
registry (:data:`COMPRESSORS`, entry-point group ``nnconform.compressors``), reference methods
(AIMET compression and quantization, fp16, torch int8, magnitude pruning, MPEG NNC), honest
artifacts (every size is the length of bytes the evaluation decodes and runs) and the metrics and
gates of each (anchor, method, operating point) case (:mod:`nnconform.compress.runner`).

Importing this package registers the built-in methods; none of them imports AIMET, nncodec or
onnxruntime until it runs.
"""

from .base import (COMPRESSORS, Artifact, ArtifactError, CalibrationSet, CompressedModel, CompressionContext,
                   CompressionError, Compressor, CompressorConfig, CompressorUnavailable, config_from_dict,
                   get_compressor, make_config, register_compressor)
from . import baselines, aimet_compression, aimet_quant, nnc  # noqa: F401  (register the built-ins)

__all__ = ["COMPRESSORS", "Artifact", "ArtifactError", "CalibrationSet", "CompressedModel", "CompressionContext",
           "CompressionError", "Compressor", "CompressorConfig", "CompressorUnavailable", "config_from_dict",
           "get_compressor", "make_config", "register_compressor"]
