"""On-disk cache of coded split results: one file per (anchor stream, cut, operating point).

Coding every sample and re-running the tail is what a warm split run spends its time on. A result
depends on the features handed over (the model's weights, the samples, their preprocessing, the
batch size the tail runs at), on the codec (its operating point and the source file that defines
it: an edited codec, built in or a proposal's, is recoded) and on torch; all of that is in the key.
Only successful results are stored, as verified entries of a :class:`~nnconform.store.ContentStore`
(``<cache>/split/<key>/``): the logits and payload sizes in a safetensors file, the error statistics in
the checksummed manifest. An entry that does not verify (a bit flip, a truncated file, an edited
value) or whose sample count does not match is warned about, recomputed and replaced; writes are
atomic and safe beside other runs on the same cache folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..hashing import class_source_sha256, sha256_bytes
from ..store import ContentStore

ENGINE_VERSION = "1"
RESULT_FILE = "result.safetensors"


@dataclass(frozen=True)
class SplitResultCache:
    """Coded results of one anchor's feature stream under ``root/split/``.

    ``stream`` identifies the features and the tail: model sha256, dataset fingerprint (of the exact
    samples), preprocessing, batch size; ``samples`` is how many samples a stored result must cover.
    """

    root: Path
    stream: dict
    samples: int
    entries: ContentStore = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", ContentStore(Path(self.root) / "split", "split result cache"))

    def key(self, cut: str, point: dict, codec: Any) -> str:
        """The entry key of (cut, operating point, codec) on this stream."""
        spec = {"engine": ENGINE_VERSION, "stream": self.stream, "cut": cut, "point": point,
                "codec_source": class_source_sha256(codec), "torch": torch.__version__}
        return sha256_bytes(json.dumps(spec, sort_keys=True).encode())

    def load(self, cut: str, point: dict, codec: Any) -> dict | None:
        """The stored result (logits, payload sizes, error statistics), or None (absent or corrupt: warned)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        key = self.key(cut, point, codec)
        entry = self.entries.get(key)
        if entry is None:
            return None
        try:
            tensors = load(entry.files[RESULT_FILE])
            logits, sizes = tensors["logits"], tensors["payload_bytes"]
            meta = {k: entry.meta[k] for k in ("max_abs_error", "sq_error", "elements", "determinism_checked")}
            if logits.shape[0] != self.samples or sizes.shape[0] != self.samples:
                raise ValueError(f"it covers {logits.shape[0]} samples, this stream has {self.samples}")
        except (SafetensorError, KeyError, TypeError, ValueError) as exc:  # verified bytes, unusable content
            self.entries.report_corrupt(key, f"{type(exc).__name__}: {exc}")
            return None
        return {"logits": logits, "payload_bytes": [int(s) for s in sizes.tolist()], **meta}

    def store(self, cut: str, point: dict, codec: Any, result) -> None:
        """Store a successful :class:`~nnconform.split.study.CodedResult` (atomic, verified on read)."""
        from safetensors.torch import save

        meta = {"max_abs_error": result.max_abs_error, "sq_error": result.sq_error, "elements": result.elements,
                "determinism_checked": result.determinism_checked}
        data = save({"logits": result.logits.contiguous(),
                     "payload_bytes": torch.tensor(result.payload_bytes, dtype=torch.int64)})
        self.entries.put(self.key(cut, point, codec), {RESULT_FILE: data}, meta)
