"""On-disk cache of coded split results: one file per (anchor stream, cut, operating point).

Coding every sample and re-running the tail is what a warm split run spends its time on. A result
depends on the features handed over (the model's weights, the samples, their preprocessing, the
batch size the tail runs at), on the codec (its operating point and the source file that defines
it: an edited codec, built in or a proposal's, is recoded) and on torch; all of that is in the key.
Only successful results are stored; a file that does not read back whole, or whose sample count
does not match, is ignored and recomputed. Writes are atomic.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..hashing import class_source_sha256, sha256_bytes

ENGINE_VERSION = "1"


@dataclass(frozen=True)
class SplitResultCache:
    """Coded results of one anchor's feature stream under ``root/split/``.

    ``stream`` identifies the features and the tail: model sha256, dataset fingerprint (of the exact
    samples), preprocessing, batch size; ``samples`` is how many samples a stored result must cover.
    """

    root: Path
    stream: dict
    samples: int

    def _path(self, cut: str, point: dict, codec: Any) -> Path:
        spec = {"engine": ENGINE_VERSION, "stream": self.stream, "cut": cut, "point": point,
                "codec_source": class_source_sha256(codec), "torch": torch.__version__}
        return self.root / "split" / f"{sha256_bytes(json.dumps(spec, sort_keys=True).encode())}.safetensors"

    def load(self, cut: str, point: dict, codec: Any) -> dict | None:
        """The stored result (logits, payload sizes, error statistics), or None."""
        from safetensors import safe_open

        path = self._path(cut, point, codec)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads(f.metadata()["result"])
                logits, sizes = f.get_tensor("logits"), f.get_tensor("payload_bytes")
        except Exception:  # absent, truncated or foreign: recompute
            return None
        if logits.shape[0] != self.samples or sizes.shape[0] != self.samples:
            return None
        return {"logits": logits, "payload_bytes": [int(s) for s in sizes.tolist()], **meta}

    def store(self, cut: str, point: dict, codec: Any, result) -> None:
        """Store a successful :class:`~nnconform.split.study.CodedResult` (atomic write)."""
        from safetensors.torch import save_file

        path = self._path(cut, point, codec)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"max_abs_error": result.max_abs_error, "sq_error": result.sq_error, "elements": result.elements,
                "determinism_checked": result.determinism_checked}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file({"logits": result.logits.contiguous(),
                       "payload_bytes": torch.tensor(result.payload_bytes, dtype=torch.int64)},
                      tmp, metadata={"result": json.dumps(meta)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
