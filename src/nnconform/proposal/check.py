"""The submission checker: validate a proposal manifest before anything runs.

Every problem is collected, not just the first: the TOML syntax, then the committed JSON Schema
(``proposal.schema.json``: required fields, types, hash format), then what a schema cannot know:
that the anchors and checkpoints exist, that claimed tiers are tiers of ``anchors/tiers.toml``,
that the proposal's code (run in the sandbox, never here) registers every method it names with
configs that build,
that the operating points do not collide with the reference methods', and that every submitted
file exists with the sha256 the manifest pins. Each problem names the file and the field.
"""

from __future__ import annotations

import difflib
import functools
import json
import tomllib
from pathlib import Path
from typing import Any, Iterable

from ..hashing import sha256_bytes, sha256_file
from .manifest import NO_CLAIM, Problem, Proposal, SubmittedFile

SCHEMA_PATH = Path(__file__).with_name("proposal.schema.json")
MANIFEST_NAME = "proposal.toml"
#: Decoders of artifact-only compressed weights besides the reference compressors' own.
PLAIN_DECODERS = ("safetensors", "onnx")
KINDS = ("compression", "updates", "split")


@functools.lru_cache(maxsize=1)
def proposal_schema() -> dict:
    """The committed JSON Schema of proposal manifests."""
    return json.loads(SCHEMA_PATH.read_text())


def resolve_manifest(path: str | Path) -> Path:
    """The manifest a ``--proposal`` value names: a ``.toml`` file, a folder holding ``proposal.toml``,
    or a ``.py`` file with its manifest beside it (``x.toml`` or ``proposal.toml``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p / MANIFEST_NAME
    if p.suffix == ".py":
        same_stem = p.with_suffix(".toml")
        return same_stem if same_stem.exists() else p.with_name(MANIFEST_NAME)
    return p


def _field(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _close(name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else f"; known: {known}"


class _Checker:
    def __init__(self, manifest: Path) -> None:
        self.manifest = manifest
        self.file = str(manifest)
        self.problems: list[Problem] = []

    def problem(self, field: str, message: str) -> None:
        self.problems.append(Problem(self.file, field, message))

    # -- steps ----------------------------------------------------------------------------

    def read(self) -> tuple[dict | None, str]:
        try:
            raw = self.manifest.read_bytes()
        except FileNotFoundError:
            self.problem("", "no such file (pass a proposal.toml, a folder holding one, or a .py file with its "
                             "manifest beside it)")
            return None, ""
        except OSError as exc:
            self.problem("", f"cannot read the manifest: {exc}")
            return None, ""
        try:
            return tomllib.loads(raw.decode("utf-8")), sha256_bytes(raw)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            self.problem("", f"not valid TOML: {exc}")
            return None, sha256_bytes(raw)

    def schema(self, data: dict) -> None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(proposal_schema())
        for error in sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message)):
            where = _field(error.absolute_path)
            if error.validator == "oneOf" and isinstance(error.instance, dict):
                # name the closest alternative's errors instead of "is not valid under any of the given schemas"
                best = min(error.context, key=lambda e: len(list(e.schema_path)), default=None) if error.context else None
                kind = error.instance.get("criterion")
                message = (f"artifact with criterion {kind!r}: {best.message}" if best is not None and kind
                           else f"does not match the schema: {error.message}")
            elif error.validator == "required" and isinstance(error.instance, dict):
                for missing in [r for r in error.validator_value if r not in error.instance]:
                    self.problem(_field([*error.absolute_path, missing]), "missing required field")
                continue
            elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
                valid = sorted(error.schema.get("properties", {}))
                for extra in [k for k in error.instance if k not in valid]:
                    self.problem(_field([*error.absolute_path, extra]),
                                 f"unknown field{_close(extra, valid).replace('; known', '; valid fields')}")
                continue
            else:
                message = error.message
            self.problem(where, message)

    def describe_code(self, name: str, module: str | None, package: str | None, pinned: str | None, data: dict):
        """Run the proposal's code in the sandbox (never here) to register proxies of its methods and check the
        manifest's configs with the proposal's own validation; a problem for each config that does not build,
        or one for the module when its code does not load. Returns the :class:`SandboxedProposal` (or None)."""
        from ..sandbox import SandboxError
        from .sandboxed import describe_proposal

        points = _manifest_points(data)
        try:
            described = describe_proposal(name, self.manifest.parent, module, package, pinned,
                                          [{k: p[k] for k in ("where", "kind", "name", "config")} for p in points])
        except (SandboxError, ValueError) as exc:
            field = "proposal.module" if module is not None else "proposal.package"
            self.problem(field, f"loading the proposal's code in the sandbox failed: {exc}")
            return None
        for p in points:
            verdict = described.points.get(p["where"])
            if verdict is not None and verdict.get("error"):
                self.problem(p["where"], f"{p['what']}: {verdict['error']}")
        return described.proposal

    def registered(self, where: str, registry, name: str) -> bool:
        """A method the manifest names must be in its registry (the proposal's code registers it)."""
        if name in registry:
            return True
        self.problem(where, f"no {registry.kind} {name!r} is registered (the proposal's code must register it)"
                            f"{_close(name, registry.names())}")
        return False

    def builds(self, where: str, what: str, build) -> bool:
        """``build()`` (a config or codec from the manifest's values) must not raise."""
        if any(p.field == where for p in self.problems):
            return False  # the proposal's own validation (in the sandbox) already named this field
        try:
            build()
            return True
        except Exception as exc:  # the proposal's own validation, whatever it raises
            self.problem(where, f"{what}: {type(exc).__name__}: {exc}")
            return False

    def unique(self, where: str, what: str, key: str, reference: set[str], seen: set[str]) -> bool:
        """Labels (case ids) may not collide with the reference operating points or each other."""
        taken_by = "a reference operating point" if key in reference else "another point" if key in seen else None
        seen.add(key)
        if taken_by:
            self.problem(where, f"{what} {key!r} is already taken (by {taken_by})")
        return taken_by is None

    def confined(self, where: str, rel: str) -> Path | None:
        """``rel`` inside the proposal folder, or a problem and ``None``: a path leaving the folder (``..``,
        absolute, a link out, a link loop) is refused without reading, hashing or even stat-ing its target."""
        from .tree import PathEscape, confine  # imported here: `python -m nnconform.proposal.tree` runs it as main

        try:
            return confine(self.manifest.parent, rel)
        except PathEscape as exc:
            self.problem(where, str(exc))
            return None

    def onnx_external_data(self, where: str, entry: dict) -> bool:
        """An ONNX artifact's external data files must be listed in ``files`` (so pinned and counted) and
        confined to the folder; a problem per tensor otherwise."""
        from .tree import onnx_external_data_problems

        listed = [f["path"] for f in entry.get("files", []) if isinstance(f, dict) and isinstance(f.get("path"), str)]
        ok = True
        for rel in (r for r in listed if r.endswith(".onnx")):
            try:
                problems = onnx_external_data_problems(self.manifest.parent, rel, listed)
            except Exception as exc:  # an unreadable graph is named here, not crashed on
                problems = [f"{rel}: not a readable ONNX model ({type(exc).__name__}: {exc})"]
            for message in problems:
                self.problem(f"{where}.files", message)
                ok = False
        return ok

    def submitted_file(self, where: str, raw: Any) -> SubmittedFile | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
            return None
        path = self.confined(f"{where}.path", raw["path"])
        if path is None:
            return None
        pinned = str(raw.get("sha256", ""))
        if not path.is_file():
            self.problem(f"{where}.path", f"no such file {path}")
        else:
            actual = sha256_file(path)
            if actual != pinned:
                self.problem(f"{where}.sha256", f"{path.name} hashes to {actual}, the manifest pins {pinned}")
        return SubmittedFile(path, pinned)


def load_proposal(path: str | Path, *, import_code: bool = True) -> Proposal:
    """Read and check a proposal manifest; the returned :class:`Proposal` lists every problem found.

    With ``import_code`` the proposal's ``module`` (or ``package``) is loaded **in the sandbox**, never in this
    process (:mod:`nnconform.proposal.sandboxed`): what it registers becomes proxy methods here, and the
    configs it claims are checked by its own code there.
    """
    manifest = resolve_manifest(path)
    ck = _Checker(manifest)
    data, digest = ck.read()
    if data is None:
        return Proposal(manifest=manifest, name=manifest.parent.name, manifest_sha256=digest,
                        problems=tuple(ck.problems))
    ck.schema(data)
    head = data.get("proposal") if isinstance(data.get("proposal"), dict) else {}
    name = str(head.get("name") or manifest.parent.name)

    from ..anchors import get_anchor, list_anchors
    from ..gates import load_tiers

    tiers = set(load_tiers())
    known_anchors = set(list_anchors())
    anchors = tuple(a for a in head.get("anchors", []) if isinstance(a, str))
    for i, a in enumerate(anchors):
        if a not in known_anchors:
            ck.problem(f"proposal.anchors[{i}]", f"no anchor {a!r}{_close(a, known_anchors)}")
    criteria = tuple(c for c in head.get("criteria", []) if c in KINDS)

    module = head.get("module")
    module_path = ck.confined("proposal.module", module) if isinstance(module, str) else None
    package = head.get("package") if isinstance(head.get("package"), str) else None
    code_sections = [k for k in KINDS if data.get(k)]
    if module_path is not None and package is not None:
        ck.problem("proposal.module", "give either `module` or `package`, not both")
    if code_sections and not isinstance(module, str) and package is None:
        ck.problem("proposal", f"[[{code_sections[0]}]] names methods to run, but the manifest gives no `module` "
                               f"(a .py file) or `package` that registers them")
    pinned = head.get("module_sha256")
    if isinstance(pinned, str) and not isinstance(module, str):
        ck.problem("proposal.module_sha256", "pins a module, but the manifest gives no `module`")
    elif isinstance(pinned, str) and module_path is not None and module_path.is_file() and (actual := sha256_file(module_path)) != pinned:
        ck.problem("proposal.module_sha256", f"{module_path.name} hashes to {actual}, the manifest pins {pinned}: "
                                             f"not the reviewed code, so it is not imported")
        module_path = None  # never run code other than the pinned one
    from .tree import tree_pin_problem

    tree_pin = head.get("tree_sha256")
    if isinstance(tree_pin, str) and (why := tree_pin_problem(manifest.parent, tree_pin)) is not None:
        ck.problem("proposal.tree_sha256", f"{why}, so no code of it is imported")
        module_path, package = None, None  # the pin covers every file the code could read
    sandboxed = None
    if import_code and (module_path is not None or package is not None):
        sandboxed = ck.describe_code(name, module if module_path is not None else None, package,
                                     tree_pin if isinstance(tree_pin, str) else None, data)

    used = {k for k in KINDS if data.get(k)} | {a.get("criterion") for a in data.get("artifacts", [])
                                                 if isinstance(a, dict)}
    for kind in criteria:
        if kind not in used:
            ck.problem("proposal.criteria", f"criterion {kind!r} is listed but the manifest has no [[{kind}]] "
                                            f"operating point or artifact for it")
    for kind in sorted(k for k in used if k in KINDS and k not in criteria):
        ck.problem("proposal.criteria", f"the manifest has {kind} operating points, but {kind!r} is not in "
                                        f"proposal.criteria {list(criteria)}")

    def tier_ok(where: str, tier: Any, allow_none: bool = False) -> bool:
        if not isinstance(tier, str):
            return False
        if tier in tiers or (allow_none and tier == NO_CLAIM):
            return True
        valid = sorted(tiers) + ([NO_CLAIM] if allow_none else [])
        ck.problem(where, f"{tier!r} is not an accuracy tier of anchors/tiers.toml; valid: {valid}")
        return False

    def anchor_ok(where: str, anchor: Any) -> bool:
        if not isinstance(anchor, str):
            return False
        if anchor not in anchors:
            ck.problem(where, f"anchor {anchor!r} is not one of proposal.anchors {list(anchors)}")
            return False
        return anchor in known_anchors

    compression = _compression_claims(ck, data, name, tier_ok, anchor_ok)
    updates = _update_claims(ck, data, name, anchors, known_anchors, tier_ok, get_anchor)
    split = _split_claims(ck, data, name, anchors, tier_ok)
    comp_artifacts, update_artifacts = _artifacts(ck, data, name, tier_ok, anchor_ok, get_anchor)
    return Proposal(
        manifest=manifest, name=name, version=str(head.get("version", "")), contact=str(head.get("contact", "")),
        organization=str(head.get("organization", "")), description=str(head.get("description", "")),
        module=module_path, package=package, anchors=anchors, criteria=criteria, compression=compression,
        updates=updates, split=split, compression_artifacts=comp_artifacts, update_artifacts=update_artifacts,
        manifest_sha256=digest, problems=tuple(ck.problems),
        tree_sha256=sandboxed.tree_sha256 if sandboxed else "", isolation=sandboxed.isolation if sandboxed else "")


def _manifest_points(data: dict) -> list[dict]:
    """Every operating point of the manifest whose config the proposal's own code must accept, with the field
    its problem would name and the words the checker has always used for it."""
    out = []
    for key, kind, name_key, params_key, what in (
            ("compression", "compressor", "method", "config", "the {!r} config does not build"),
            ("updates", "update-codec", "codec", "params", "update codec {!r} does not accept these parameters"),
            ("split", "feature-codec", "codec", "params", "feature codec {!r} does not build with these parameters")):
        for i, e in _entries(data, key):
            name, config = e.get(name_key), e.get(params_key, {})
            if isinstance(name, str) and isinstance(config, dict):
                out.append({"where": f"{key}[{i}].{params_key}", "kind": kind, "name": name, "config": config,
                            "what": what.format(name)})
    return out


def _entries(data: dict, key: str) -> list[tuple[int, dict]]:
    items = data.get(key, [])
    return [(i, e) for i, e in enumerate(items if isinstance(items, list) else []) if isinstance(e, dict)]


def _compression_point(ck: _Checker, where: str, *args, **fields):
    """A ``CompressionPoint`` (claims on the point); a problem at ``where`` when it does not build."""
    from ..compress.plan import CompressionPoint
    from ..kit import PointError

    try:
        return CompressionPoint(*args, **fields)
    except PointError as exc:
        ck.problem(where, str(exc))
        return None


def _compression_claims(ck: _Checker, data: dict, name: str, tier_ok, anchor_ok) -> tuple:
    """The manifest's ``[[compression]]`` entries, parsed straight into ``CompressionPoint``s."""
    from ..compress import COMPRESSORS
    from ..compress.plan import build_config, load_plan

    reference_ids = {p.id for p in load_plan().points}
    out, seen = [], set()
    for i, e in _entries(data, "compression"):
        where = f"compression[{i}]"
        method, label, tier = e.get("method"), e.get("label"), e.get("claimed_tier")
        ok = anchor_ok(f"{where}.anchor", e.get("anchor")) & tier_ok(f"{where}.claimed_tier", tier, allow_none=True)
        if not isinstance(method, str) or not isinstance(label, str):
            continue
        if not ck.registered(f"{where}.method", COMPRESSORS, method):
            continue
        config = dict(e.get("config", {})) if isinstance(e.get("config"), dict) else {}
        built = []
        ok &= ck.builds(f"{where}.config", f"the {method!r} config does not build",
                        lambda: built.append(build_config(method, config, f"{where}.config")))
        ok &= ck.unique(f"{where}.label", "case id", f"{e.get('anchor')}-{method}-{label}", reference_ids, seen)
        if ok:
            point = _compression_point(ck, where, e["anchor"], method, built[0], label=label,
                                       run_tier=e.get("run_tier", "quick"),
                                       claimed_tier=None if tier == NO_CLAIM else tier,
                                       claimed_bytes=e.get("claimed_bytes"), proposal=name)
            if point is not None:
                out.append(point)
    return tuple(out)


def _update_point(ck: _Checker, where: str, cls, *args, **fields):
    """An ``UpdatePoint`` or ``UpdateArtifact`` (``cls``; claims on the point); a problem at ``where`` when it does
    not build."""
    from ..kit import PointError

    try:
        return cls(*args, **fields)
    except PointError as exc:
        ck.problem(where, str(exc))
        return None


def _update_claims(ck: _Checker, data: dict, name: str, anchors, known_anchors, tier_ok, get_anchor):
    """The manifest's ``[[updates]]`` entries, parsed straight into ``UpdatePoint``s: ``claimed_tier`` (one tier,
    or a table per pair kind) becomes the point's ``claimed_tier`` (the ``"*"`` claim) and ``pair_claims``."""
    from ..updates import UPDATE_CODECS, make_codec
    from ..updates.plan import UpdatePoint, load_plan

    entries = _entries(data, "updates")
    if entries:
        for a in anchors:
            if a in known_anchors and len(get_anchor(a).checkpoints) < 2:
                ck.problem("proposal.anchors", f"anchor {a!r} has no lineage (fewer than two checkpoints): update "
                                               f"codecs cannot run on it")
    reference_labels = {p.label for p in load_plan().points}
    out, seen = [], set()
    for i, e in _entries(data, "updates"):
        where = f"updates[{i}]"
        codec, label, claim = e.get("codec"), e.get("label"), e.get("claimed_tier")
        claims = {"*": claim} if isinstance(claim, str) else dict(claim) if isinstance(claim, dict) else {}
        ok = all([tier_ok(f"{where}.claimed_tier" + ("" if k == "*" and isinstance(claim, str) else f".{k}"), t,
                          allow_none=True) for k, t in claims.items()])
        if not isinstance(codec, str) or not isinstance(label, str):
            continue
        if not ck.registered(f"{where}.codec", UPDATE_CODECS, codec):
            continue
        params = dict(e.get("params", {})) if isinstance(e.get("params"), dict) else {}
        ok &= ck.builds(f"{where}.params", f"update codec {codec!r} does not accept these parameters",
                        lambda: make_codec(codec, params))
        ok &= ck.unique(f"{where}.label", "label", label, reference_labels, seen)
        head = data.get("proposal") if isinstance(data.get("proposal"), dict) else {}
        tier = {k: None if t == NO_CLAIM else t for k, t in claims.items()}
        if ok:
            point = _update_point(ck, where, UpdatePoint, codec, params, label=label, proposal=name,
                                  run_tier=e.get("run_tier", "quick"), claimed_tier=tier.pop("*", None),
                                  pair_claims=tier, anchors=tuple(anchors),
                                  description=f"proposal {name} {head.get('version', '')}")
            if point is not None:
                out.append(point)
    return tuple(out)


def _split_claims(ck: _Checker, data: dict, name: str, anchors, tier_ok) -> tuple:
    """The manifest's ``[[split]]`` entries, parsed straight into the split criterion's ``SplitPoint``s."""
    from ..kit import PointError
    from ..split.codecs import REGISTRY, make_codec
    from ..split.plan import SplitPoint, load_plan

    reference_ids = {p.label for p in load_plan().points}
    version = str(data["proposal"].get("version", "")) if isinstance(data.get("proposal"), dict) else ""
    out, seen = [], set()
    for i, e in _entries(data, "split"):
        where = f"split[{i}]"
        codec, label, claim = e.get("codec"), e.get("label"), e.get("claimed_tier")
        ok = tier_ok(f"{where}.claimed_tier", claim, allow_none=True)
        if not isinstance(codec, str) or not isinstance(label, str):
            continue
        if not ck.registered(f"{where}.codec", REGISTRY, codec):
            continue
        params = dict(e.get("params", {})) if isinstance(e.get("params"), dict) else {}
        built = []
        ok &= ck.builds(f"{where}.params", f"feature codec {codec!r} does not build with these parameters",
                        lambda: built.append(make_codec(codec, params)))
        ok &= ck.unique(f"{where}.label", "operating point id", label, reference_ids, seen)
        if ok:
            try:
                out.append(SplitPoint(label=label, family=codec, codec=codec, params=tuple(sorted(params.items())),
                                      claimed_tier=None if claim == NO_CLAIM else claim,
                                      lossless=bool(e.get("lossless", False)), run_tier=e.get("run_tier", "quick"),
                                      version=built[0].config.version, description=f"proposal {name} {version}",
                                      anchors=tuple(anchors), proposal=name))
            except PointError as exc:
                ck.problem(where, str(exc))
    return tuple(out)


def _artifacts(ck: _Checker, data: dict, name: str, tier_ok, anchor_ok, get_anchor):
    from ..compress import COMPRESSORS
    from ..compress.plan import build_config
    from .artifacts import METHOD, config_for

    comp, upd, seen = [], [], set()
    for i, e in _entries(data, "artifacts"):
        where = f"artifacts[{i}]"
        kind, label, tier = e.get("criterion"), e.get("label"), e.get("claimed_tier")
        ok = anchor_ok(f"{where}.anchor", e.get("anchor")) & tier_ok(f"{where}.claimed_tier", tier)
        files = [ck.submitted_file(f"{where}.files[{j}]", f) for j, f in enumerate(e.get("files", []))]
        ok = ok and bool(files) and all(f is not None for f in files)
        if ok and kind == "compression" and e.get("decoder") == "onnx":
            ok = ck.onnx_external_data(where, e)
        key = (kind, e.get("anchor"), label)
        if key in seen:
            ck.problem(f"{where}.label", f"label {label!r} is used twice for {kind} artifacts of {e.get('anchor')!r}")
            ok = False
        seen.add(key)
        if kind == "compression":
            decoder = e.get("decoder")
            config = dict(e.get("decoder_config", {})) if isinstance(e.get("decoder_config"), dict) else {}
            if isinstance(decoder, str) and decoder not in PLAIN_DECODERS:
                if decoder not in COMPRESSORS:
                    ck.problem(f"{where}.decoder", f"{decoder!r} is neither {' nor '.join(PLAIN_DECODERS)} nor a "
                                                   f"reference compressor{_close(decoder, COMPRESSORS.names())}")
                    ok = False
                else:
                    ok &= ck.builds(f"{where}.decoder_config", f"the {decoder!r} config does not build",
                                    lambda: build_config(decoder, config, f"{where}.decoder_config"))
            elif isinstance(decoder, str) and config:
                ck.problem(f"{where}.decoder_config", f"the {decoder!r} decoder takes no config")
                ok = False
            if ok and isinstance(label, str) and isinstance(decoder, str):
                point = _compression_point(ck, where, e["anchor"], METHOD, config_for(files, decoder, config),
                                           label=f"{name}-{label}", run_tier="quick", claimed_tier=tier,
                                           claimed_bytes=e.get("claimed_bytes"), proposal=name)
                if point is not None:
                    comp.append(point)
        elif kind == "updates":
            base, target = e.get("base"), e.get("target")
            if isinstance(e.get("anchor"), str) and ok:
                names = [c.name for c in get_anchor(e["anchor"]).checkpoints]
                for fld, ck_name in (("base", base), ("target", target)):
                    if ck_name not in names:
                        ck.problem(f"{where}.{fld}", f"anchor {e['anchor']!r} has no checkpoint {ck_name!r}; it has "
                                                     f"{names}")
                        ok = False
                if ok and names.index(base) >= names.index(target):
                    ck.problem(f"{where}.target", f"checkpoint {target!r} does not come after {base!r} in the lineage "
                                                  f"{names}")
                    ok = False
            if ok and isinstance(label, str):
                from ..updates.plan import UpdateArtifact

                point = _update_point(ck, where, UpdateArtifact, e["anchor"], base, target, files[0], label=label,
                                      proposal=name, claimed_tier=tier, claimed_bytes=e.get("claimed_bytes"))
                if point is not None:
                    upd.append(point)
    return tuple(comp), tuple(upd)
