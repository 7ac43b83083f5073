"""Split inference (issue 5): split points, head and tail, intermediate data, feature codecs.

For every anchor:

* cuts are discovered from the ``torch.fx`` graph: single-tensor cuts at block boundaries with
  module names (``layer2``, ``features.6``), and multi-tensor cuts inside residual blocks with
  their number of branches;
* ``tail(head(x))`` is bit-identical to ``model(x)`` at every cut; heads and tails export to
  ONNX and run in onnxruntime within 1e-5 of torch;
* the intermediate data at every cut is documented (shapes, bytes as fp32/fp16/int8, zeros,
  entropy after 8-bit quantisation, channel statistics, head/tail MACs and parameters, sizes at
  several input resolutions), from one forward pass per batch;
* every feature-codec operating point (``anchors/split.toml``) codes each sample on its own;
  bits are lengths of real payloads that were decoded and run through the tail; accuracy is
  gated with the shared non-inferiority tiers, BD-rates are taken against the 8-bit anchor
  codec's curve, encode/decode/head/tail latencies are measured with pytest-benchmark;
* the split minimising end-to-end latency is chosen per device/server/link scenario, and the
  pairs meeting 3GPP TS 22.261's split image recognition figure are listed.

The cases run torch on one thread (restored afterwards): per-image latencies are per-core
figures, and a shared machine does not stall in OpenMP barriers.
"""

from __future__ import annotations

import math

import pytest
import torch

from nnconform import proposal
from nnconform.anchors import WeightsIntegrityError, WeightsUnavailable, get_anchor, list_anchors, select_anchors
from nnconform.data import DatasetUnavailable
from nnconform.gates import best_tier_met, load_tiers, non_inferiority
from nnconform.profile import count_macs, count_params
from nnconform.records import CheckRecord, Status, gate
from nnconform.split import (SplitGraph, bd_rate, load_split_manifest, profile_cuts, resolution_scaling, select_split,
                             upper_envelope)
from nnconform.split.onnx_check import onnx_roundtrip
from nnconform.split.runner import SplitRunner, coded_cases, coded_cuts, torch_threads
from nnconform.split.selection import Candidate, bounds, end_to_end
from nnconform.stats import paired_comparison

pytestmark = pytest.mark.criterion("split")

MANIFEST = load_split_manifest().with_points(proposal.split_points())
ANCHORS = list_anchors()
RUNNER_KEY = pytest.StashKey[SplitRunner]()


# ---------------------------------------------------------------------------------------------
# Parametrisation: cases depend on the suite tier (the full tier codes every single cut)


def _tier_marks(tier: str):
    return [pytest.mark.tier(tier)] if tier != "quick" else []


def _catalogue_graph(anchor_name: str) -> SplitGraph:
    anchor = get_anchor(anchor_name)
    return SplitGraph.trace(anchor.build_architecture(), anchor.input_shape)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.fixturenames
    if "split_case" not in names and "split_cut" not in names:
        return
    tier = metafunc.config.getoption("--nnc-tier", "default")
    try:
        from nnconform.plugin import SESSION_KEY

        selected = set(select_anchors(metafunc.config.stash[SESSION_KEY].config.anchors))
    except KeyError:
        selected = set()
    params = []
    for anchor_name in ANCHORS:
        needs_graph = tier == "full" or anchor_name not in MANIFEST.cuts
        graph = _catalogue_graph(anchor_name) if needs_graph and anchor_name in selected else None
        if needs_graph and graph is None:
            continue  # not selected: its full-tier catalogue is not traced just to be deselected
        if "split_case" in names:
            for case in coded_cases(MANIFEST, anchor_name, tier, graph):
                params.append(pytest.param(anchor_name, case, id=case.id, marks=_tier_marks(case.tier)))
        else:
            for cut, cut_tier in coded_cuts(MANIFEST, anchor_name, tier, graph).items():
                params.append(pytest.param(anchor_name, cut, id=f"{anchor_name}-{cut}", marks=_tier_marks(cut_tier)))
    metafunc.parametrize(("anchor_name", "split_case" if "split_case" in names else "split_cut"), params)


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def split_runner(request: pytest.FixtureRequest, nnc_config) -> SplitRunner:
    """The criterion's session state (graphs, studies, timings)."""
    if RUNNER_KEY not in request.config.stash:
        request.config.stash[RUNNER_KEY] = SplitRunner(MANIFEST, nnc_config.tier)
    return request.config.stash[RUNNER_KEY]


@pytest.fixture
def split_model(nnc_session, split_runner):
    """``(model, graph, trained)`` of an anchor: its verified weights when present, else the
    architecture with random weights (cuts, shapes, identity and ONNX need no trained weights)."""

    def get(anchor_name: str):
        anchor = get_anchor(anchor_name)
        try:
            model, trained = nnc_session.model(anchor_name), True
        except (WeightsUnavailable, WeightsIntegrityError):
            torch.manual_seed(0)
            model, trained = anchor.build_architecture().eval(), False
        graph = split_runner.graph(anchor_name, model, anchor.input_shape, trained=trained)
        return model, graph, trained

    return get


@pytest.fixture
def split_study(nnc_session, split_runner, load_or_skip):
    """The anchor's study (skips with the exact message when weights or data are missing)."""
    return lambda anchor_name: load_or_skip(split_runner.study, nnc_session, anchor_name, subject=anchor_name)


def _run_head(graph, cut, x):
    with torch.inference_mode():
        return graph.head(cut)(x)


def _call_tail(tail, mid):
    return tail(*mid) if isinstance(mid, tuple) else tail(mid)


def _scope(split_runner: SplitRunner, graph: SplitGraph, anchor_name: str, which: str) -> list[str]:
    if which == "all":
        return [c.name for c in graph.cuts]
    if which == "single":
        return [c.name for c in graph.single_cuts]
    return list(coded_cuts(MANIFEST, anchor_name, split_runner.tier, graph))


def _input(anchor_name: str, batch: int = 1) -> torch.Tensor:
    shape = get_anchor(anchor_name).input_shape
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------
# 1. The catalogue, head and tail


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_split_catalogue(anchor_name, split_model, nnc_record):
    """Cuts are found in the traced graph: names are unique module paths (or the fx name of a
    function called in ``forward``), at least one cut hands over a single tensor, and every cut
    ``split.toml`` names for this anchor exists and is a single cut."""
    model, graph, trained = split_model(anchor_name)
    problems = []
    names = [c.name for c in graph.cuts]
    if len(set(names)) != len(names):
        problems.append(f"duplicate cut names: {sorted({n for n in names if names.count(n) > 1})}")
    if not graph.single_cuts:
        problems.append("no cut hands over exactly one tensor")
    modules = dict(model.named_modules())
    fx_names = {n.name for n in graph.gm.graph.nodes}
    for c in graph.cuts:
        base = c.name.split("@")[0]
        if base not in modules and base not in fx_names:
            problems.append(f"cut {c.name!r} is neither a module of the model nor a node of its graph")
    for tier, listed in MANIFEST.cuts.get(anchor_name, {}).items():
        for n in listed:
            if n not in names:
                problems.append(f"split.toml cuts.{anchor_name}.{tier} names {n!r}, which is not in the catalogue")
            elif not graph.cut(n).single:
                problems.append(f"split.toml cuts.{anchor_name}.{tier} names {n!r}, a multi-tensor cut")
    multi = [c for c in graph.cuts if not c.single]
    rec = nnc_record(gate(
        "split.catalogue", anchor_name, not problems, measured=len(graph.cuts), expected=">= 1 single cut",
        message="; ".join(problems) or f"{len(graph.single_cuts)} single cuts, {len(multi)} multi-tensor cuts "
                                       f"(up to {max((c.num_tensors for c in multi), default=1)} tensors)",
        details={"cuts": [c.to_dict() for c in graph.cuts], "trained_weights": trained},
    ))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_split_head_tail_identity(anchor_name, split_model, split_runner, nnc_record):
    """``tail(head(x))`` is bit-identical to ``model(x)`` at every cut in the tier's scope
    (every catalogued cut, multi-tensor cuts included)."""
    model, graph, trained = split_model(anchor_name)
    x = _input(anchor_name)
    cuts = _scope(split_runner, graph, anchor_name, split_runner.run.identity)
    mismatches = {}
    with torch.inference_mode():
        ref = model(x)
        for name in cuts:
            head, tail = graph.split(name)
            y = _call_tail(tail, head(x))
            if not torch.equal(y, ref):
                mismatches[name] = float((y - ref).abs().max()) if y.shape == ref.shape else f"shape {list(y.shape)}"
    rec = nnc_record(gate(
        "split.head_tail_identity", anchor_name, not mismatches, measured=len(cuts) - len(mismatches),
        expected=len(cuts), tolerance="bit-identical",
        message=(f"tail(head(x)) differs from model(x) at {len(mismatches)} of {len(cuts)} cuts: "
                 f"{dict(list(mismatches.items())[:5])}") if mismatches else
                f"bit-identical at all {len(cuts)} cuts",
        details={"cuts": cuts, "mismatches": mismatches, "trained_weights": trained},
    ))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_split_onnx(anchor_name, split_model, split_runner, nnc_record):
    """Head and tail of every cut in the tier's scope export to ONNX and run in onnxruntime
    within 1e-5 of torch (relative to the output's largest magnitude when above 1)."""
    model, graph, trained = split_model(anchor_name)
    x = _input(anchor_name)
    cuts = _scope(split_runner, graph, anchor_name, split_runner.run.onnx)
    problems, measured = [], {}
    for name in cuts:
        try:
            head, tail = graph.split(name)
            with torch.inference_mode():
                mid = head(x)
            mids = mid if isinstance(mid, tuple) else (mid,)
            h, t = onnx_roundtrip(head, (x,)), onnx_roundtrip(tail, mids)
        except Exception as exc:  # one cut's export failure is that cut's problem
            problems.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        measured[name] = {"head_max_abs_error": h.max_abs_error, "tail_max_abs_error": t.max_abs_error,
                          "head_onnx_bytes": h.onnx_bytes, "tail_onnx_bytes": t.onnx_bytes}
        for part, cmp in (("head", h), ("tail", t)):
            if not cmp.passed:
                problems.append(f"{name} {part}: onnxruntime differs by {cmp.max_abs_error:.3g} "
                                f"(tolerance {cmp.tolerance:.3g})")
    worst = max((max(v["head_max_abs_error"], v["tail_max_abs_error"]) for v in measured.values()), default=None)
    rec = nnc_record(gate(
        "split.onnx", anchor_name, not problems, measured=worst, expected=0.0, tolerance="1e-5 x max(1, |y|max)",
        message="; ".join(problems[:5]) or f"{len(cuts)} heads and tails agree (largest difference {worst:.3g})",
        details={"cuts": measured, "problems": problems, "trained_weights": trained},
    ))
    assert rec.passed, rec.message


@pytest.mark.parametrize("published", list(MANIFEST.published.values()), ids=lambda p: p.name)
def test_split_published_sizes(published, nnc_record):
    """The catalogue reproduces published intermediate-data sizes (torchvision ResNet-50 at
    224x224: 3136, 1568, 784 and 392 KiB in float32 after layer1..layer4; no weights needed)."""
    graph = SplitGraph.trace(published.build_architecture().eval(), published.input_shape)
    measured = {cut: graph.cut(cut).numel * 4 / 1024 for cut in published.fp32_kib}
    wrong = {c: (measured[c], kib) for c, kib in published.fp32_kib.items() if measured[c] != kib}
    rec = nnc_record(gate(
        "split.published_sizes", published.name, not wrong, measured=measured, expected=dict(published.fp32_kib),
        tolerance="exact", message=f"differs at {wrong} (measured, published)" if wrong else
        "fp32 KiB per cut: " + ", ".join(f"{c} {v:g}" for c, v in measured.items()),
        details={"source": published.source, "input_shape": list(published.input_shape)},
    ))
    assert rec.passed, rec.message


# ---------------------------------------------------------------------------------------------
# 2. Intermediate data


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_split_intermediate_data(anchor_name, split_runner, split_model, nnc_session, nnc_record, load_or_skip):
    """Documents what crosses every cut, and checks the figures add up: head + tail MACs equal
    the model's (``nnconform.profile``), head + tail parameters equal the model's, the sizes at
    the anchor's own resolution equal the catalogue's, and sizes grow with input resolution.
    Without the anchor's weights or data, the structure (sizes, MACs, parameters, scaling) is
    still documented from the architecture; the value statistics are then left out."""
    anchor = get_anchor(anchor_name)
    try:
        study, missing = split_runner.study(nnc_session, anchor_name), None
    except (WeightsUnavailable, DatasetUnavailable) as exc:
        study, missing = None, str(exc)
    if study is not None:
        graph, profiles, scaling, stats = study.graph, study.profiles, study.resolution_numel, study.stats
        model = nnc_session.model(anchor_name)
    else:
        model, graph, _ = split_model(anchor_name)
        resolutions = MANIFEST.resolutions.get(anchor.dataset, (anchor.input_shape[-1],))
        profiles, scaling, stats = profile_cuts(graph), resolution_scaling(graph, resolutions), {}
    total_macs, total_params = count_macs(model, anchor.input_shape), count_params(model)
    native = str(anchor.input_shape[-1])
    problems = []
    for cut in graph.cuts:
        p = profiles.get(cut.name)
        if p is None:
            problems.append(f"{cut.name}: no head/tail profile")
            continue
        if p.head_macs + p.tail_macs != total_macs:
            problems.append(f"{cut.name}: head {p.head_macs} + tail {p.tail_macs} MACs != model {total_macs}")
        if p.head_params + p.tail_params != total_params:
            problems.append(f"{cut.name}: head {p.head_params} + tail {p.tail_params} params != model {total_params}")
        sizes = scaling.get(cut.name, {})
        if native in sizes and sizes[native] != cut.numel:
            problems.append(f"{cut.name}: {sizes[native]} elements at {native}px, catalogue says {cut.numel}")
        ordered = [sizes[r] for r in sorted(sizes, key=int)]
        if any(b < a for a, b in zip(ordered, ordered[1:])):
            problems.append(f"{cut.name}: size shrinks as resolution grows: {sizes}")
        if cut.name in stats:
            st = stats[cut.name]
            nnc_record(CheckRecord("split.intermediate_data", f"{anchor_name}/{cut.name}", Status.INFO,
                                   measured=st.kib_as("fp32"), message=_describe(st),
                                   details={**st.to_dict(), "dataset": study.dataset, "smoke": study.smoke}))
        else:
            what = (f"{cut.num_tensors} tensors {[list(s) for s in cut.shapes]}" if not cut.single
                    else "x".join(map(str, cut.shapes[0])))
            nnc_record(CheckRecord(
                "split.intermediate_data", f"{anchor_name}/{cut.name}", Status.INFO, measured=cut.numel * 4 / 1024,
                message=f"{'multi-tensor cut: ' if not cut.single else ''}{what}, {cut.numel * 4 / 1024:.1f} KiB fp32"
                        + ("" if missing is None or not cut.single else "; value statistics need the anchor's "
                                                                         "weights and data"),
                details={**cut.to_dict(), "cut": cut.name,
                         "bytes": {"fp32": 4 * cut.numel, "fp16": 2 * cut.numel, "int8": cut.numel},
                         "head_macs": p.head_macs, "tail_macs": p.tail_macs, "head_params": p.head_params,
                         "tail_params": p.tail_params, "resolution_numel": sizes, "statistics_missing": missing}))
    if anchor.dataset.startswith("imagenet") and len(scaling.get(graph.single_cuts[0].name, {})) < 2:
        problems.append(f"sizes documented at {len(scaling.get(graph.single_cuts[0].name, {}))} resolution(s); "
                        "ImageNet anchors need at least two ([resolutions] in split.toml)")
    basis = (f"on {next(iter(stats.values())).n_samples} samples" if stats else
             f"from the architecture only ({(missing or '').split('. ')[0]})")
    rec = nnc_record(gate(
        "split.intermediate_data_consistency", anchor_name, not problems, measured=len(graph.cuts) - len(problems),
        expected=len(graph.cuts), message="; ".join(problems[:5]) or
        f"{len(graph.cuts)} cuts documented {basis}; MACs, parameters and sizes consistent",
        details={"model_macs": total_macs, "model_params": total_params, "statistics_missing": missing},
    ))
    assert rec.passed, rec.message


def _describe(st) -> str:
    shape = "x".join(map(str, st.shapes[0]))
    return (f"{shape}: {st.kib_as('fp32'):.1f} KiB fp32 / {st.kib_as('fp16'):.1f} fp16 / {st.kib_as('int8'):.1f} int8, "
            f"{st.zero_fraction:.1%} zeros, {st.entropy_bits:.2f} bits/element after 8-bit quantisation")


# ---------------------------------------------------------------------------------------------
# 3. Feature codecs: rate and accuracy


def test_split_codec_accuracy(anchor_name, split_case, split_study, nnc_record):
    """The operating point codes every sample on its own and the payload decodes to a finite
    float32 tensor of the right shape; encoding is deterministic; a lossless point reproduces
    the model's logits bit for bit; a point that claims an accuracy tier meets it (paired
    non-inferiority on the anchor's evaluation samples)."""
    study = split_study(anchor_name)
    case = split_case
    r = study.result(case.cut, case.point.id)
    subject = f"{anchor_name}/{case.cut}/{case.point.id}"
    if not r.ok:
        rec = nnc_record(CheckRecord(
            "split.codec_contract", subject, Status.FAIL if r.error_kind == "contract" else Status.ERROR,
            message=r.error, traceback=r.traceback, details={"point": case.point.to_dict()}))
        pytest.fail(rec.message, pytrace=False)
    comparison = paired_comparison(study.ref_correct, r.correct)
    details = {**r.to_dict(), "point": case.point.to_dict(), "ref_top1": study.ref_top1,
               "raw_bits": 32 * study.graph.cut(case.cut).numel, "best_tier": best_tier_met(comparison),
               "comparison": comparison.to_dict(), "dataset": study.dataset, "smoke": study.smoke}
    summary = (f"{r.bits_per_sample:.0f} bits/sample ({r.bits_per_sample / details['raw_bits']:.2%} of fp32), "
               f"top-1 {r.top1:.4f} vs {study.ref_top1:.4f}, agreement {r.agreement:.4f}")
    records = []
    if case.point.lossless:
        same = torch.equal(r.logits, study.ref_logits)
        records.append(nnc_record(gate(
            "split.codec_lossless", subject, same, measured=r.max_abs_error, expected=0.0, tolerance="bit-identical",
            message=("logits bit-identical to the uncoded model" if same else
                     "a lossless point changed the logits") + f"; {summary}", details=details)))
    if case.point.claim and not study.smoke:
        result = non_inferiority(study.ref_correct, r.correct, case.point.claim)
        records.append(nnc_record(gate(
            "split.codec_accuracy", subject, result.passed, measured=r.top1, expected=study.ref_top1,
            tolerance=case.point.claim, message=f"{result.reason}; {summary}", details=details)))
    else:
        why = (f"SMOKE SET ({len(study.labels)} images): accuracy not gated" if study.smoke else
               f"no claim; best tier met: {details['best_tier'] or 'none'}")
        records.append(nnc_record(CheckRecord(
            "split.codec_accuracy", subject, Status.INFO, measured=r.top1, expected=study.ref_top1,
            message=f"{why}; {summary}", details=details)))
    failed = [rec for rec in records if not rec.passed]
    assert not failed, "; ".join(rec.message for rec in failed)


def test_split_bd_rate(anchor_name, split_cut, split_study, nnc_record):
    """BD-rate (monotone PCHIP fit) of every codec family against the anchor family's curve
    (uniform per-tensor quantisation, 8 bits down) at this cut, on top-1 accuracy and on
    agreement with the uncoded model. The anchor curve itself must have two or more usable points."""
    study = split_study(anchor_name)
    anchor_fam = MANIFEST.anchor_family
    families = sorted({r.point.family for (c, _), r in study.coded.items() if c == split_cut})
    anchor_acc = study.curve(split_cut, anchor_fam)
    anchor_agr = study.curve(split_cut, anchor_fam, metric="agreement")
    table, single_point = {}, []
    for fam in families:
        if fam == anchor_fam:
            continue
        if len(study.curve(split_cut, fam)) < 2:
            single_point.append(fam)  # one operating point is no curve: no BD-rate to take
            continue
        acc = bd_rate(anchor_acc, study.curve(split_cut, fam))
        agr = bd_rate(anchor_agr, study.curve(split_cut, fam, metric="agreement"))
        table[fam] = {"bd_rate_top1": acc.value, "bd_rate_agreement": agr.value,
                      "top1": acc.to_dict(), "agreement": agr.to_dict()}
        nnc_record(CheckRecord(
            "split.bd_rate", f"{anchor_name}/{split_cut}/{fam}", Status.INFO, measured=acc.value,
            expected=f"vs {anchor_fam}",
            message=f"BD-rate vs {anchor_fam}: top-1 {_pct(acc.value, acc.reason)}, "
                    f"agreement {_pct(agr.value, agr.reason)}",
            details={"family": fam, "anchor_family": anchor_fam, **table[fam],
                     "curve_top1": study.curve(split_cut, fam),
                     "curve_agreement": study.curve(split_cut, fam, metric="agreement"),
                     "smoke": study.smoke}))
    usable = len(upper_envelope(anchor_agr))
    rec = nnc_record(gate(
        "split.bd_rate_anchor_curve", f"{anchor_name}/{split_cut}", usable >= 2, measured=usable, expected=">= 2",
        message=f"anchor curve ({anchor_fam}) has {usable} usable points of {len(anchor_agr)}; "
                f"BD-rates for {len(table)} families" + (f" ({', '.join(single_point)}: one point each, no curve)"
                                                          if single_point else ""),
        details={"anchor_curve_top1": anchor_acc, "anchor_curve_agreement": anchor_agr, "table": table,
                 "single_point_families": single_point}))
    assert rec.passed, rec.message


def _pct(value, reason: str) -> str:
    return f"{value:+.1%}" if value is not None else f"undefined ({reason})"


# ---------------------------------------------------------------------------------------------
# 4. Latency (pytest-benchmark), selection and the 3GPP figure


def _timed(benchmark, split_runner: SplitRunner, key: str, fn, *args):
    rounds = split_runner.run.timing_rounds
    out = benchmark.pedantic(fn, args=args, rounds=rounds, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        split_runner.timings[key] = float(stats.stats.median)
    return out


@pytest.fixture
def split_sample(nnc_session, load_or_skip, split_model):
    """The anchor's first evaluation image, preprocessed (batch of one)."""

    def get(anchor_name: str) -> torch.Tensor:
        anchor = get_anchor(anchor_name)
        dataset = load_or_skip(nnc_session.dataset, anchor, subject=anchor_name)
        x, _ = next(dataset.subset([0]).batches(anchor.preprocess, 1))
        return x

    return get


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_split_model_latency(anchor_name, benchmark, split_runner, split_model, split_sample):
    """Whole-model latency of one image on this machine (the device-only and server-only bounds)."""
    model, graph, _ = split_model(anchor_name)
    x = split_sample(anchor_name)
    benchmark.group = f"split {anchor_name}"
    with torch.inference_mode():
        y = _timed(benchmark, split_runner, f"{anchor_name}/model", model, x)
    assert y.shape == (1, get_anchor(anchor_name).num_classes)


def test_split_head_latency(anchor_name, split_cut, benchmark, split_runner, split_model, split_sample):
    """Head latency of one image at this cut; the head hands over the catalogued shape."""
    _, graph, _ = split_model(anchor_name)
    head = graph.head(split_cut)
    x = split_sample(anchor_name)
    benchmark.group = f"split {anchor_name}/{split_cut}"
    with torch.inference_mode():
        y = _timed(benchmark, split_runner, f"{anchor_name}/{split_cut}/head", head, x)
    assert tuple(y.shape[1:]) == graph.cut(split_cut).shapes[0]


def test_split_tail_latency(anchor_name, split_cut, benchmark, split_runner, split_model, split_sample):
    """Tail latency of one image at this cut; the tail returns the model's logits."""
    model, graph, _ = split_model(anchor_name)
    x = split_sample(anchor_name)
    mid = _run_head(graph, split_cut, x)
    tail = graph.tail(split_cut)
    benchmark.group = f"split {anchor_name}/{split_cut}"
    with torch.inference_mode():
        y = _timed(benchmark, split_runner, f"{anchor_name}/{split_cut}/tail", tail, mid)
        assert torch.equal(y, model(x))


def test_split_encode_latency(anchor_name, split_case, benchmark, split_runner, split_model, split_sample):
    """Encode latency of one image's intermediate tensor with this operating point."""
    _, graph, _ = split_model(anchor_name)
    feature = _run_head(graph, split_case.cut, split_sample(anchor_name))[0]
    codec = split_case.point.build()
    benchmark.group = f"split {anchor_name}/{split_case.cut} encode"
    payload = _timed(benchmark, split_runner, f"{anchor_name}/{split_case.cut}/{split_case.point.id}/encode",
                     codec.encode, feature)
    assert isinstance(payload, bytes) and payload == codec.encode(feature)


def test_split_decode_latency(anchor_name, split_case, benchmark, split_runner, split_model, split_sample):
    """Decode latency of one image's payload with this operating point."""
    _, graph, _ = split_model(anchor_name)
    feature = _run_head(graph, split_case.cut, split_sample(anchor_name))[0]
    codec = split_case.point.build()
    payload = codec.encode(feature)
    benchmark.group = f"split {anchor_name}/{split_case.cut} decode"
    decoded = _timed(benchmark, split_runner, f"{anchor_name}/{split_case.cut}/{split_case.point.id}/decode",
                     codec.decode, payload)
    assert decoded.shape == feature.shape and decoded.dtype == feature.dtype


def _candidates(anchor_name: str, study, split_runner: SplitRunner) -> tuple[list[Candidate], list[str]]:
    t = split_runner.timings
    tiers = list(load_tiers())
    missing, out = [], []
    for (cut, pid), r in sorted(study.coded.items()):
        if not r.ok:
            continue
        keys = [f"{anchor_name}/{cut}/head", f"{anchor_name}/{cut}/tail",
                f"{anchor_name}/{cut}/{pid}/encode", f"{anchor_name}/{cut}/{pid}/decode"]
        absent = [k for k in keys if k not in t]
        if absent:
            missing += absent
            continue
        met = frozenset(name for name in tiers if non_inferiority(study.ref_correct, r.correct, name).passed)
        out.append(Candidate(cut, pid, r.bytes_per_sample, t[keys[0]], t[keys[2]], t[keys[3]], t[keys[1]], met, r.top1))
    if f"{anchor_name}/model" not in t:
        missing.append(f"{anchor_name}/model")
    else:
        out += bounds(t[f"{anchor_name}/model"], math.prod(get_anchor(anchor_name).input_shape), tiers, study.ref_top1)
    return out, missing


SCENARIOS = [pytest.param(a, s, id=f"{a}-{s.name}") for a in ANCHORS for s in MANIFEST.scenarios]


@pytest.mark.parametrize(("anchor_name", "scenario"), SCENARIOS)
def test_split_selection(anchor_name, scenario, split_study, split_runner, nnc_record):
    """Neurosurgeon-style selection: the (cut, codec) pair with the lowest end-to-end latency
    (device head + encode, link transfer, server decode + tail; times measured here by the
    latency cases, scaled by the profiles) among those meeting the scenario's accuracy tier.
    The choice is checked against a brute-force recomputation from the per-sample results."""
    study = split_study(anchor_name)
    candidates, missing = _candidates(anchor_name, study, split_runner)
    if missing:
        pytest.skip(f"no timings for {missing[:4]}{' ...' if len(missing) > 4 else ''}: run the split latency "
                    "cases in the same session (not with --benchmark-skip/--benchmark-disable or under xdist)")
    sel = select_split(candidates, scenario.device, scenario.server, scenario.link, scenario.tier)
    admissible = []
    for c in candidates:
        if c.cut.startswith("("):
            admissible.append(c)
            continue
        r = study.result(c.cut, c.codec)
        if non_inferiority(study.ref_correct, r.correct, scenario.tier).passed:
            admissible.append(c)
    fastest = min(end_to_end(c, scenario.device, scenario.server, scenario.link).total_s for c in admissible)
    ok = sel.best is not None and math.isclose(sel.best.total_s, fastest, rel_tol=1e-12) \
        and sel.best.candidate in admissible
    best = sel.best.to_dict() if sel.best else None
    rec = nnc_record(gate(
        "split.selection", f"{anchor_name}/{scenario.name}", ok, measured=best and best["total_ms"],
        expected=1e3 * fastest, tolerance=scenario.tier,
        message=(f"{sel.best.candidate.label}: {best['total_ms']:.2f} ms (device {best['device_ms']:.2f}, link "
                 f"{best['link_ms']:.2f}, server {best['server_ms']:.2f}) on {scenario.device.name}/"
                 f"{scenario.link.name}/{scenario.server.name} within {scenario.tier}") if sel.best else
                "no candidate meets the tier",
        details={**sel.to_dict(), "scenario": {"device": scenario.device.__dict__, "server": scenario.server.__dict__,
                                               "link": scenario.link.__dict__}, "smoke": study.smoke}))
    assert rec.passed, rec.message


KPIS = [pytest.param(a, k, id=f"{a}-{k.name}") for a in ANCHORS for k in MANIFEST.kpis.values()]


@pytest.mark.parametrize(("anchor_name", "kpi"), KPIS)
def test_split_kpi(anchor_name, kpi, split_study, nnc_record):
    """Which coded (cut, codec) pairs meet 3GPP TS 22.261's split image recognition figure
    (0.27 MByte at 144 Mbit/s, 15 ms): at least one must, while keeping the KPI's accuracy tier."""
    study = split_study(anchor_name)
    rows, qualifying = [], []
    for (cut, pid), r in sorted(study.coded.items()):
        if not r.ok:
            continue
        fits = kpi.met_by(max(r.payload_bytes))
        keeps = non_inferiority(study.ref_correct, r.correct, kpi.tier).passed
        rows.append({"cut": cut, "codec": pid, "max_payload_bytes": max(r.payload_bytes),
                     "transfer_ms": kpi.transfer_ms(max(r.payload_bytes)), "fits": fits, "keeps_tier": keeps})
        if fits and keeps:
            qualifying.append(f"{cut}/{pid}")
    rec = nnc_record(gate(
        "split.kpi", f"{anchor_name}/{kpi.name}", bool(qualifying), measured=len(qualifying), expected=">= 1",
        tolerance=kpi.tier,
        message=(f"{len(qualifying)} of {len(rows)} pairs fit {kpi.payload_bytes / 1e6:g} MB / "
                 f"{kpi.max_latency_ms:g} ms at {kpi.uplink_mbps:g} Mbit/s within {kpi.tier}"
                 + (f", e.g. {', '.join(qualifying[:3])}" if qualifying else "")
                 + (" (SMOKE SET)" if study.smoke else "")),
        details={"source": kpi.source, "pairs": rows, "smoke": study.smoke}))
    assert rec.passed, rec.message
