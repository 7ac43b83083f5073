"""Criterion 2 (issue 4): model updates. Comparing checkpoints of a lineage and coding updates.

Public API: :data:`UPDATE_CODECS` (the kit's ``update-codec`` method kind), :func:`make_codec`
(``kit.make("update-codec", ...)``), :func:`encode_update`, :func:`apply_update`,
:func:`read_header`; the checkpoint comparison in :mod:`.compare`; the plan (lineage pairs,
operating points, claims) in :mod:`.plan`; the checks in :mod:`.checks`; what a run computes once
(payloads, the case pipelines) in :mod:`.runs`.

Sending an update and applying it::

    payload = encode_update(make_codec("topk", {"fraction": 0.01}), base_state, target_state,
                            preprocess=anchor.preprocess_for("finetune"))
    decoded = apply_update(base_state, payload)   # refuses a wrong base or damaged bytes
    model.load_state_dict(decoded.state); decoded.preprocess

A proposal adds a codec as a class decorated with ``@kit.register_method("update-codec", name)``
with a nested frozen ``Config(kit.MethodConfig)``, ``lossless``, ``__init__(self, config)``,
``encode(base, target) -> bytes`` and ``decode(base, body) -> state`` (or through the entry-point
group ``nnconform.update_codecs``); the container adds the hashes and the checks.
"""

from ..kit import PayloadError
from .codec import (KIND, UPDATE_CODECS, BaseMismatchError, CodecUnavailable, DecodedUpdate, ReconstructionError,
                    UpdateCodec, apply_update, codec_config_dict, encode_update, make_codec, operating_point_label,
                    read_header)
from .payload import FORMAT_VERSION, PayloadHeader, PayloadVersionError
from .state import StateMismatchError
from . import nnc, reference  # noqa: F401  (register the reference codecs)

__all__ = [
    "KIND", "UPDATE_CODECS", "BaseMismatchError", "CodecUnavailable", "DecodedUpdate", "FORMAT_VERSION",
    "PayloadError", "PayloadHeader", "PayloadVersionError", "ReconstructionError", "StateMismatchError",
    "UpdateCodec", "apply_update", "codec_config_dict", "encode_update", "make_codec", "operating_point_label",
    "read_header",
]
