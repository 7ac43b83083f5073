"""NNC (ISO/IEC 15938-17, MPEG-7 part 17) coding of the delta tensors through Fraunhofer's ``nncodec``.

The float deltas (target - base, as float32) go through NNCodec's incremental mode: the NDUs are
marked as a differential update (``compress_differences``) in a parameter update tree (PUT).
Weights are quantized with ``qp`` (step 2^(qp/4) with dependent quantization; more negative is
finer), 1-D tensors with the finer ``nonweight_qp``; DeepCABAC entropy-codes the levels. Non-float
tensors and 0-d tensors are carried exactly, like the other lossy codecs; elements whose decoded
delta is zero keep the base's exact bits.

On its own (``encode``/``decode``, one pair of checkpoints) every call starts an empty update tree,
so an update is the first node under a parent NNC never coded: temporal context adaptation
(``tca``) has no earlier levels to adapt to and changes nothing. The update tree is kept only
when a caller passes the same ``tree`` (:func:`fresh_tree`) to successive calls, as
:mod:`nnconform.updates.lineage` does along a whole lineage (base coded first, then each update
referencing the previous one, encoder and decoder keeping equal trees).

Install: ``pip install --no-deps nncodec==2.1.3`` plus ``h5py ptflops torchmetrics
opencv-python-headless`` (nncodec imports them). The codec registers without nncodec; using it
without nncodec raises :class:`CodecUnavailable` with that line.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .. import kit
from .codec import KIND, CodecUnavailable
from .body import check_bool, check_int, check_records, decode_exact, exact_record, pack_records, unpack_records
from .state import StateDict, apply_sparse, float_delta, identical, is_continuous

INSTALL_HINT = ("pip install --no-deps nncodec==2.1.3 && pip install h5py ptflops torchmetrics "
                "opencv-python-headless")


def _nnc():
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from nncodec import nnc
    except ImportError as exc:
        raise CodecUnavailable(f"update codec 'nnc' needs nncodec ({exc}); install it with: {INSTALL_HINT}") from exc
    return nnc


@contextlib.contextmanager
def _quiet(what: str):
    """Silence NNCodec's prints and turn its ``SystemExit`` on bad input into a ValueError."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield
    except SystemExit as exc:
        raise ValueError(f"nncodec failed to {what}: {exc} {out.getvalue()[-300:]}".strip()) from None


def fresh_tree() -> dict:
    """NNCodec's incremental-coding state (its ``approx_param_base``) for the first update of a parent: an
    empty parameter update tree. NNCodec updates it in place on each call: the last quantization levels,
    PUT node depth, device and parameter ids of every tensor it coded (what TCA adapts to)."""
    return {"parameters": {}, "put_node_depth": {}, "device_id": 0, "parameter_id": {}}


@kit.register_method(KIND, "nnc")
class NNCDeltaCodec:
    """Lossy NNC coding of the float deltas (DeepCABAC, dependent quantization, incremental mode).

    Model updates as ISO/IEC 15938-17 (NNC) codes them: the difference between the target and the
    base checkpoint is coded as an incremental update (the standard's parameter update tree, PUT,
    with the NDUs marked as differential), each weight delta quantized with ``qp`` (dependent,
    trellis-coded quantization when ``use_dq``) and the levels entropy-coded by DeepCABAC; with a
    kept update tree, temporal context adaptation (``tca``) lets each update's contexts start from
    the previous one's. Coded through Fraunhofer HHI's NNCodec, the reference software of the
    standard; see the module docstring for when TCA engages.
    """

    lossless: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Config(kit.MethodConfig):
        """``qp``: NNC quantization parameter of weights (-60..0, lower is finer; step about 2^(qp/4));
        ``nonweight_qp`` for 1-D tensors; ``incremental``: code as a differential update (PUT) with
        temporal context adaptation ``tca``; ``use_dq``: dependent (trellis) quantization."""

        qp: int = -32
        nonweight_qp: int = -75
        incremental: bool = True
        tca: bool = False
        use_dq: bool = True

        def __post_init__(self) -> None:
            super().__post_init__()
            for field_name in ("qp", "nonweight_qp"):
                check_int("nnc", field_name, getattr(self, field_name), -100, 0)
            for field_name in ("incremental", "tca", "use_dq"):
                check_bool("nnc", field_name, getattr(self, field_name))

    def __init__(self, config: "NNCDeltaCodec.Config | None" = None) -> None:
        self.config = config or self.Config()

    def encode(self, base: StateDict, target: StateDict, *, tree: dict | None = None) -> bytes:
        """The body coding ``target - base``; ``tree`` (incremental mode only) is the update tree to extend
        in place (default: a fresh one, so the update references nothing earlier)."""
        nnc = _nnc()
        records: dict[str, torch.Tensor] = {}
        deltas: dict[str, np.ndarray] = {}
        for name, b in base.items():
            t = target[name]
            if not is_continuous(b) or b.dim() == 0:
                exact_record(records, name, b, t)
            elif not identical(b, t):
                deltas[name] = float_delta(name, b, t).to(torch.float32).reshape(b.shape).numpy()
        if deltas:
            c = self.config
            kwargs = dict(compress_differences=True, approx_param_base=fresh_tree() if tree is None else tree,
                          update_base_param=True, tca=c.tca) if c.incremental else {}
            with _quiet("encode"):
                bitstream = nnc.compress(deltas, bitstream_path=None, qp=c.qp, nonweight_qp=c.nonweight_qp,
                                         use_dq=c.use_dq, return_bitstream=True, verbose=False, **kwargs)
            records["::nnc"] = torch.frombuffer(bytearray(bitstream), dtype=torch.uint8).clone()
        return pack_records(records, 3)

    def decode(self, base: StateDict, body: bytes, *, tree: dict | None = None) -> StateDict:
        """The state ``body`` makes of ``base``; ``tree`` is the decoder's update tree, extended in place
        (default: a fresh one; it must equal the encoder's tree before this update)."""
        records = unpack_records(body)
        bitstream = records.pop("::nnc", None)
        check_records(records, base, ("exact",))
        deltas: dict[str, np.ndarray] = {}
        if bitstream is not None:
            nnc = _nnc()
            kwargs = (dict(approx_param_base=fresh_tree() if tree is None else tree, update_base_param=True)
                      if self.config.incremental else {})
            with _quiet("decode"):
                deltas = nnc.decompress(bytearray(bitstream.numpy().tobytes()), verbose=False, **kwargs)
        unknown = sorted(set(deltas) - set(base))
        if unknown:
            raise ValueError(f"NNC bitstream holds tensors the base lacks: {unknown[:5]}")
        out: StateDict = {}
        for name, b in base.items():
            exact = decode_exact(records, name, b)
            if exact is not None:
                out[name] = exact
            elif name in deltas:
                d = torch.from_numpy(np.ascontiguousarray(deltas[name], dtype=np.float32)).reshape(-1)
                if d.numel() != b.numel():
                    raise ValueError(f"{name}: NNC decoded {d.numel()} values for {b.numel()} elements")
                idx = torch.nonzero(d).reshape(-1)
                out[name] = apply_sparse(b, idx, d[idx])
            else:
                out[name] = b.clone()
        return out
