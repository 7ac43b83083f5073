"""Gate-side proxies of a proposal's methods: its code runs only in the sandbox, never in the gate.

The checker (:func:`describe_proposal`) runs the proposal's module once in a sandboxed process
(``nnconform.sandbox.methods:describe``, memoised by the folder's tree hash) to learn which methods it
registers and whether the manifest's configs build. For each method it registers, in the gate's own
registries under the proposal's name, a *proxy* class: its ``Config`` holds the manifest's values
(the proposal's validation ran in the sandbox), and each of its calls is one
:func:`~nnconform.sandbox.run_sandboxed` call of an adapter of :mod:`nnconform.sandbox.methods`, with
the proposal folder pinned (the manifest's ``tree_sha256``, else the hash the description ran on).

Encoding and decoding are separate processes: a compressor's ``decode`` sees the artifact only, an
update codec's ``decode`` the base and the body, a feature codec's ``decode_many`` the payloads and
its parameters. What comes back is data the harness loads itself (a state dict strictly into a
NaN-filled template of the anchor's architecture, an ONNX graph, tensors). A
:class:`~nnconform.sandbox.SandboxError` propagates to the criterion, which makes it the case's record.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..hashing import sha256_bytes
from ..kit.methods import PROPOSAL_MODULE_PREFIX, MethodConfig, register_method, registry

ADAPTERS = "nnconform.sandbox.methods"
#: How many decoded update states a proxy keeps (decoding is deterministic: the same base and body decode once).
DECODE_MEMO = 8


#: Host paths masked in every sandboxed call besides the defaults of ``sandbox.bwrap.hidden_paths``: the run's
#: data folder, ImageNet source, cache and report folders (the plugin sets them before any proposal is described).
_HIDDEN: list[Path] = []


def hide_paths(paths) -> None:
    """Mask ``paths`` (existing local folders or files; hub ids and ``None`` are ignored) in every later call."""
    for path in paths:
        if path and Path(str(path)).exists() and Path(str(path)).resolve() not in _HIDDEN:
            _HIDDEN.append(Path(str(path)).resolve())


@dataclass
class SandboxedProposal:
    """One proposal's code as the gate reaches it: its folder, module (or package), pin and the calls made."""

    name: str
    folder: Path
    module: str | None
    package: str | None
    tree_sha256: str
    isolation: str = ""
    calls: list[dict] = field(default_factory=list)

    def call(self, fn: str, *, inputs: dict | None = None, params: dict | None = None) -> dict:
        """Run adapter ``fn`` on the proposal's code in a fresh sandboxed process; its outputs (data)."""
        import torch

        from ..sandbox import run_sandboxed

        params = {"module": self.module, "package": self.package, **(params or {})}
        result = run_sandboxed(f"{ADAPTERS}:{fn}", inputs=inputs or {}, params=params, proposal_dir=self.folder,
                               tree_sha256=self.tree_sha256, proposal=self.name, call=fn,
                               threads=torch.get_num_threads(), hidden=tuple(_HIDDEN))
        self.isolation = result.isolation
        self.calls.append({"call": fn, "seconds": round(result.seconds, 3), "isolation": result.isolation})
        return result.outputs


@dataclass(frozen=True)
class Description:
    """What the sandboxed ``describe`` call found: the proposal's methods and the manifest points' verdicts."""

    proposal: SandboxedProposal
    methods: tuple[dict, ...]
    points: dict[str, dict]


_DESCRIBED: dict[tuple, Description] = {}


def describe_proposal(name: str, folder: Path, module: str | None, package: str | None, pinned: str | None,
                      points: list[dict]) -> Description:
    """Describe the proposal in the sandbox (once per tree hash, module and points) and register its proxies.

    ``points``: ``{"where", "kind", "name", "config"}`` per manifest operating point. Raises
    :class:`~nnconform.sandbox.SandboxError` (the proposal's import failed, the pin does not match, ...).
    """
    from .tree import tree_sha256

    digest = pinned or tree_sha256(folder)
    key = (str(Path(folder).resolve()), digest, module, package, repr(points))
    if key not in _DESCRIBED:
        sandboxed = SandboxedProposal(name, Path(folder), module, package, digest)
        out = sandboxed.call("describe", params={"points": points})
        methods = tuple(m for m in out.get("methods", []) if isinstance(m, dict))
        verdicts = {p["where"]: p for p in out.get("points", []) if isinstance(p, dict) and "where" in p}
        _DESCRIBED[key] = Description(sandboxed, methods, verdicts)
    description = _DESCRIBED[key]
    for method in description.methods:
        register_proxy(description.proposal, method)
    return description


# ---------------------------------------------------------------------------------------------
# Proxy configs and classes


def _config_class(base: type, method: dict) -> type:
    """A frozen ``Config`` with the proposal's fields and defaults (its validation ran in the sandbox)."""
    fields = []
    for f in method.get("fields", []):
        if f["name"] == "version":
            continue
        default = f.get("default")
        spec = dataclasses.field(default_factory=lambda d=default: _frozen(d)) if isinstance(default, (list, dict)) \
            else dataclasses.field(default=default)
        fields.append((f["name"], Any, spec))

    def post_init(self) -> None:
        base.__post_init__(self)
        for f in dataclasses.fields(self):  # lists become tuples: a config is hashable, like the real one
            object.__setattr__(self, f.name, _frozen(getattr(self, f.name)))

    cls = dataclasses.make_dataclass("Config", fields, bases=(base,), frozen=True,
                                     namespace={"VERSION": int(method.get("version", 1)), "__post_init__": post_init,
                                                "__doc__": f"config of the proposal's {method['name']!r} (fields "
                                                           f"checked by the proposal's own code, in the sandbox)"})
    return cls


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


def _unfrozen(config: MethodConfig) -> dict:
    out = config.to_dict()
    return {k: (_plain(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def register_proxy(sandboxed: SandboxedProposal, method: dict) -> type:
    """Register the proxy of one of the proposal's methods in the gate's registry of its kind (replacing an
    earlier proxy of the same name; a reference method of that name is never replaced)."""
    kind, name = method["kind"], method["name"]
    base, config_base = _PROXY_BASES[kind]()
    reg = registry(kind)
    if name in reg.names():
        existing = reg.get(name)
        if getattr(existing, "sandboxed", None) is None:
            raise ValueError(f"proposal {sandboxed.name!r} registers {kind} {name!r}, a name already taken")
        if existing.sandboxed is sandboxed and existing.source_sha256 == f"tree:{sandboxed.tree_sha256}":
            return existing
        reg.unregister(name)
    namespace = {"Config": _config_class(config_base, method), "sandboxed": sandboxed,
                 "source_sha256": f"tree:{sandboxed.tree_sha256}", "description": method.get("description", ""),
                 "__doc__": f"{method.get('description') or name} (proposal {sandboxed.name}, run in the sandbox)",
                 "__module__": f"{PROPOSAL_MODULE_PREFIX}sandboxed_{sandboxed.tree_sha256[:12]}"}
    if kind == "update-codec":
        namespace["lossless"] = bool(method.get("lossless", False))
    if kind == "compressor" and method.get("decode_tolerance"):
        namespace["decode_tolerance"] = float(method["decode_tolerance"])
    cls = type(f"Sandboxed_{name.replace('-', '_')}", (base,), namespace)
    return register_method(kind, name)(cls)


def is_sandboxed(method: Any) -> bool:
    """True for a proxy (instance or class) of a proposal's method."""
    return getattr(method, "sandboxed", None) is not None


def _architecture(anchor_name: str) -> dict:
    from ..anchors import get_anchor

    anchor = get_anchor(anchor_name)
    return {"anchor": anchor.name, "architecture": anchor.architecture,
            "architecture_kwargs": dict(anchor.architecture_kwargs), "input_shape": list(anchor.input_shape),
            "num_classes": int(anchor.num_classes)}


def _compressor_base():
    from ..compress.base import Artifact, ArtifactError, CompressedModel, Compressor, CompressorConfig
    from ..compress.serialize import OnnxModule, load_full_state

    class SandboxedCompressor(Compressor):
        """A proposal's compressor, run in the sandbox: ``compress`` sees the anchor's weights and the calibration
        set; ``decode`` (another process) the artifact only. The decoded model is the anchor's architecture
        loaded by the harness with the returned tensors, or the returned ONNX graph."""

        sandboxed: ClassVar[SandboxedProposal | None] = None
        source_sha256: ClassVar[str] = ""

        def __init__(self, config) -> None:
            super().__init__(config)
            self._decoded: dict[str, dict] = {}
            self._decodes: dict[str, int] = {}

        def _params(self, ctx) -> dict:
            return {"method": self.name, "config": _unfrozen(self.config), **_architecture(ctx.anchor),
                    "seed": int(ctx.seed)}

        def compress(self, model, ctx) -> CompressedModel:
            """One sandboxed call: the artifact, what the method reports, and its own module's probe logits."""
            from ..compress.runner import PROBE_SAMPLES

            cal = ctx.calibration
            params = {**self._params(ctx), "calibration": {
                "dataset": cal.dataset, "split": cal.split, "indices": list(cal.indices),
                "fingerprint": cal.fingerprint, "description": cal.description}}
            out = self.sandboxed.call("compress", params=params, inputs={
                "anchor": {k: v for k, v in model.state_dict().items()},
                "calibration": {"images": cal.images, "labels": cal.labels},
                "probe": {"x": cal.images[:PROBE_SAMPLES]}})
            names = out.get("files")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ArtifactError(f"proposal {self.sandboxed.name}: compress: the artifact's file names are not a "
                                    f"list of strings: {names!r}")
            files = {n: out.get(f"file.{i}") for i, n in enumerate(names)}
            artifact = Artifact(files, str(out.get("format", "")))
            probe = out.get("probe", {}).get("logits") if isinstance(out.get("probe"), dict) else None
            return CompressedModel(None, artifact, out.get("reported_bytes"), out.get("params"), out.get("macs"),
                                   dict(out.get("metadata") or {}), probe_logits=probe)

        def decode(self, artifact, template, ctx):
            """The artifact decoded in a fresh sandboxed process (which decodes it twice), loaded into ``template``
            by the harness; a second call here is answered from that process's second decode."""
            key = artifact.sha256
            if key not in self._decoded:
                self._decoded[key] = self.sandboxed.call(
                    "decode", params={**self._params(ctx), "files": list(artifact.files), "format": artifact.format},
                    inputs={f"file.{i}": data for i, data in enumerate(artifact.files.values())})
            out = self._decoded[key]
            self._decodes[key] = n = self._decodes.get(key, 0) + 1
            if "onnx" in out:
                return OnnxModule(out["onnx"]).eval()
            state = out["state_again"] if n > 1 and "state_again" in out else out.get("state")
            if not isinstance(state, dict):
                raise ArtifactError(f"proposal {self.sandboxed.name}: decode returned no state dict")
            return load_full_state(template, state, f"proposal {self.sandboxed.name}: decoded state").eval()

    return SandboxedCompressor, CompressorConfig


def _update_base():
    from ..hashing import state_dict_sha256

    class SandboxedUpdateCodec:
        """A proposal's update codec, run in the sandbox: ``encode`` sees base and target, ``decode`` (another
        process) the base and the body; a decoded state is kept for the same (base, body)."""

        sandboxed: ClassVar[SandboxedProposal | None] = None
        source_sha256: ClassVar[str] = ""
        lossless: ClassVar[bool] = False
        _memo: ClassVar[OrderedDict]

        def __init__(self, config=None) -> None:
            self.config = config or self.Config()

        def encode(self, base, target) -> bytes:
            """The payload body, from one sandboxed call."""
            out = self.sandboxed.call("update_encode", params={"codec": self.name, "config": _unfrozen(self.config)},
                                      inputs={"base": dict(base), "target": dict(target)})
            return out["body"]

        def decode(self, base, body: bytes):
            """The reconstructed state, from one sandboxed call per (base, body, config)."""
            memo = type(self).__dict__.get("_memo")
            if memo is None:
                memo = OrderedDict()
                type(self)._memo = memo
            key = (state_dict_sha256(base), sha256_bytes(bytes(body)), repr(self.config))
            if key not in memo:
                out = self.sandboxed.call("update_decode", params={"codec": self.name, "config": _unfrozen(self.config)},
                                          inputs={"base": dict(base), "body": bytes(body) or b""})
                memo[key] = out.get("state", {})
                while len(memo) > DECODE_MEMO:
                    memo.popitem(last=False)
            return dict(memo[key])

    return SandboxedUpdateCodec, MethodConfig


def _feature_base():
    import torch

    from ..split.codecs import FeatureCodec

    class SandboxedFeatureCodec(FeatureCodec):
        """A proposal's feature codec, run in the sandbox: one call encodes a batch of samples, another process
        decodes the payloads (the study hands them over in another order)."""

        sandboxed: ClassVar[SandboxedProposal | None] = None
        source_sha256: ClassVar[str] = ""

        def encode(self, tensor: torch.Tensor) -> bytes:
            """One sample (a call of its own; the study uses :meth:`encode_many`)."""
            return self.encode_many([tensor])[0]

        def decode(self, payload: bytes) -> torch.Tensor:
            """One payload (a call of its own; the study uses :meth:`decode_many`)."""
            return self.decode_many([payload])[0]

        def encode_many(self, tensors) -> list[bytes]:
            """Every sample's payload, from one sandboxed call."""
            tensors = list(tensors)
            if not tensors:
                return []
            out = self.sandboxed.call("features_encode", params={"codec": self.name, "config": _unfrozen(self.config)},
                                      inputs={"features": {str(i): t for i, t in enumerate(tensors)}})
            lengths, blob = out.get("lengths"), out.get("payloads", b"")
            if not isinstance(lengths, list) or len(lengths) != len(tensors) or \
                    not all(isinstance(n, int) and n >= 0 for n in lengths) or sum(lengths) > len(blob):
                raise ValueError(f"proposal {self.sandboxed.name}: features_encode returned malformed payload lengths")
            payloads, at = [], 0
            for n in lengths:
                payloads.append(blob[at:at + n])
                at += n
            return payloads

        def decode_many(self, payloads) -> list[torch.Tensor]:
            """Every payload's tensor, from one sandboxed call (a process that never saw the features)."""
            payloads = [bytes(p) for p in payloads]
            if not payloads:
                return []
            out = self.sandboxed.call("features_decode", params={
                "codec": self.name, "config": _unfrozen(self.config), "lengths": [len(p) for p in payloads],
                "empty": not any(payloads)}, inputs={"payloads": b"".join(payloads) or b"\0"})
            decoded = out.get("decoded") if isinstance(out.get("decoded"), dict) else {}
            if sorted(decoded) != sorted(str(i) for i in range(len(payloads))):
                raise ValueError(f"proposal {self.sandboxed.name}: features_decode returned {len(decoded)} tensors "
                                 f"for {len(payloads)} payloads")
            return [decoded[str(i)] for i in range(len(payloads))]

    return SandboxedFeatureCodec, FeatureCodec.Config


_BASES: dict[str, tuple] = {}


def _cached_base(kind: str, make):
    def get():
        if kind not in _BASES:
            _BASES[kind] = make()
        return _BASES[kind]
    return get


_PROXY_BASES = {"compressor": _cached_base("compressor", _compressor_base),
                "update-codec": _cached_base("update-codec", _update_base),
                "feature-codec": _cached_base("feature-codec", _feature_base)}
