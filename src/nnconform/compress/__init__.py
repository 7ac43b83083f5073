"""Compression criterion (issue 3): compressed vs uncompressed models.

One method kind (``compressor``: a registered class with a nested frozen ``Config`` plus
``compress``/``decode``), one registry (:data:`COMPRESSORS`, entry-point group
``nnconform.compressors``), reference methods (AIMET compression and quantization, fp16, torch
int8, magnitude pruning, MPEG NNC), honest artifacts (every size is the length of bytes the
evaluation decodes and runs), the plan (``anchors/compression.toml``, :func:`~.plan.load_plan`),
the checks of each (anchor, method, operating point) case (:mod:`.checks`, :mod:`.runner`) and the
run's state (:mod:`.runs`).

Importing this package registers the built-in methods; none of them imports AIMET, nncodec or
onnxruntime until it runs.
"""

from .base import (COMPRESSORS, DEFAULT_DECODE_TOLERANCE, Artifact, ArtifactError, CalibrationSet, CompressedModel,
                   CompressionContext, CompressionError, Compressor, CompressorConfig, CompressorUnavailable,
                   compressor_class, config_from_dict, make_compressor, make_config)
from . import baselines, aimet_compression, aimet_quant, nnc  # noqa: F401  (register the built-ins)

__all__ = ["COMPRESSORS", "DEFAULT_DECODE_TOLERANCE", "Artifact", "ArtifactError", "CalibrationSet", "CompressedModel",
           "CompressionContext", "CompressionError", "Compressor", "CompressorConfig", "CompressorUnavailable",
           "compressor_class", "config_from_dict", "make_compressor", "make_config"]
