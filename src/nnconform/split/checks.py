"""The checks of the split-inference criterion; each returns a :class:`CheckRecord` (or a list of them).

The conformance file calls these on the anchors; the self-tests call them on bad inputs to show that
each gate can fail. Every check id the criterion records is registered here (the report explains
each from this catalogue).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from .. import kit
from ..gates import best_tier_met, load_tiers, non_inferiority
from ..records import CheckRecord, Status, gate
from ..suspicious_gain import flag, suspicious_gain
from .bdrate import bd_rate, upper_envelope
from .catalogue import UPDATE_COMMAND, CatalogueEntry
from .cuts import SplitGraph
from .selection import Candidate, bounds, end_to_end, select_split

CRITERION = "split"

kit.register_check("split.catalogue", "cuts found in the traced graph have unique module or node names, at least one "
                   "hands over a single tensor, and every cut split.toml names exists and hands over tensors only", "pass-fail")
kit.register_check("split.catalogue_current", "the committed cut catalogue (anchors/split-catalogue.toml) matches a "
                   "fresh trace of the anchor's architecture", "equal")
kit.register_check("split.head_tail_identity", "tail(head(x)) is bit-identical to model(x) at every cut in scope",
                   "equal")
kit.register_check("split.onnx", "heads and tails export to ONNX and run in onnxruntime within 1e-5 of torch",
                   "lower")
kit.register_check("split.published_sizes", "the catalogue reproduces published intermediate-data sizes exactly",
                   "equal")
kit.register_check("split.intermediate_data", "what crosses one cut: shape, bytes as fp32/fp16/int8, zeros, "
                   "entropy, channel statistics, head/tail cost", "info")
kit.register_check("split.intermediate_data_consistency", "head + tail MACs and parameters equal the model's, "
                   "sizes match the catalogue and grow with input resolution", "pass-fail")
kit.register_check("split.codec_contract", "the feature codec codes every sample to bytes and decodes a finite "
                   "float32 tensor of the right shape, deterministically", "pass-fail")
kit.register_check("split.codec_lossless", "a lossless operating point reproduces the uncoded model's logits bit "
                   "for bit", "equal")
kit.register_check("split.codec_accuracy", "top-1 of the coded split model; a claimed accuracy tier is met "
                   "(paired non-inferiority against the uncoded model)", "higher")
kit.register_check("split.bd_rate", "BD-rate of a codec family against the anchor family's curve at one cut "
                   "(negative: fewer bits for the same accuracy)", "info")
kit.register_check("split.bd_rate_anchor_curve", "the anchor family's rate-accuracy curve has two or more usable "
                   "points at the cut", "higher")
kit.register_check("split.selection", "the chosen (cut, codec) pair has the lowest end-to-end latency among those "
                   "meeting the scenario's accuracy tier (brute-force recomputation)", "equal")
kit.register_check("split.kpi", "at least one coded (cut, codec) pair meets the published payload/rate/latency "
                   "figure while keeping its accuracy tier", "higher")


def _record(rec: CheckRecord) -> CheckRecord:
    rec.criterion = CRITERION
    return rec


def _call_tail(tail, mid):
    return tail(*mid) if isinstance(mid, tuple) else tail(mid)


# ---------------------------------------------------------------------------------------------
# The catalogue, head and tail


def check_catalogue(anchor: str, model: torch.nn.Module, graph: SplitGraph,
                    plan_cuts: Mapping[str, Sequence[str]], *, trained: bool) -> CheckRecord:
    """Cuts are found in the traced graph: names are unique module paths (or the fx name of a function called in
    ``forward``), at least one cut hands over a single tensor, and every cut ``split.toml`` names exists and hands
    over tensors only (a multi-tensor cut is coded per tensor)."""
    problems = []
    names = [c.name for c in graph.cuts]
    if len(set(names)) != len(names):
        problems.append(f"duplicate cut names: {sorted({n for n in names if names.count(n) > 1})}")
    if not graph.single_cuts:
        problems.append("no cut hands over exactly one tensor")
    modules = dict(model.named_modules())
    node_names = graph.node_names  # an ONNX anchor's cuts are named after its graph's nodes (onnxgraph.splitgraph)
    for c in graph.cuts:
        base = c.name.split("@")[0]
        if base not in modules and base not in node_names:
            problems.append(f"cut {c.name!r} is neither a module of the model nor a node of its graph")
    for run_tier, listed in plan_cuts.items():
        for n in listed:
            if n not in names:
                problems.append(f"split.toml cuts.{anchor}.{run_tier} names {n!r}, which is not in the catalogue")
            elif graph.cut(n).other_values:  # tensors are coded (each one of a multi-tensor cut); nothing else
                problems.append(f"split.toml cuts.{anchor}.{run_tier} names {n!r}, a cut that also hands over "
                                f"non-tensor values {list(graph.cut(n).other_values)}")
    multi = [c for c in graph.cuts if not c.single]
    return _record(gate(
        "split.catalogue", anchor, not problems, measured=len(graph.cuts), expected=">= 1 single cut",
        message="; ".join(problems) or f"{len(graph.single_cuts)} single cuts, {len(multi)} multi-tensor cuts "
                                       f"(up to {max((c.num_tensors for c in multi), default=1)} tensors)",
        details={"cuts": [c.to_dict() for c in graph.cuts], "trained_weights": trained}))


def check_catalogue_current(anchor: str, committed: CatalogueEntry | None, traced: CatalogueEntry,
                            missing: str = "") -> CheckRecord:
    """The committed catalogue entry (what collection derived the case ids from) equals a fresh trace."""
    problems = [missing] if committed is None else committed.differences(traced)
    return _record(gate(
        "split.catalogue_current", anchor, not problems, measured=len(traced.single),
        expected=None if committed is None else len(committed.single), tolerance="exact",
        message=(f"stale catalogue: {'; '.join(problems)}; rewrite it with `{UPDATE_COMMAND} {anchor}`" if problems
                 else f"{len(traced.single)} single and {len(traced.multi)} multi-tensor cuts as committed"),
        details={"problems": problems}))


def check_head_tail_identity(anchor: str, model: torch.nn.Module, graph: SplitGraph, cuts: Sequence[str],
                             x: torch.Tensor, *, trained: bool) -> CheckRecord:
    """``tail(head(x))`` is bit-identical to ``model(x)`` at every cut of ``cuts``."""
    mismatches: dict[str, Any] = {}
    with torch.inference_mode():
        ref = model(x)
        for name in cuts:
            head, tail = graph.split(name)
            y = _call_tail(tail, head(x))
            if not torch.equal(y, ref):
                mismatches[name] = float((y - ref).abs().max()) if y.shape == ref.shape else f"shape {list(y.shape)}"
    return _record(gate(
        "split.head_tail_identity", anchor, not mismatches, measured=len(cuts) - len(mismatches),
        expected=len(cuts), tolerance="bit-identical",
        message=(f"tail(head(x)) differs from model(x) at {len(mismatches)} of {len(cuts)} cuts: "
                 f"{dict(list(mismatches.items())[:5])}") if mismatches else
                f"bit-identical at all {len(cuts)} cuts",
        details={"cuts": list(cuts), "mismatches": mismatches, "trained_weights": trained}))


def check_onnx(anchor: str, graph: SplitGraph, cuts: Sequence[str], x: torch.Tensor, *, trained: bool) -> CheckRecord:
    """Head and tail of every cut of ``cuts`` export to ONNX and run in onnxruntime within 1e-5 of torch (relative
    to the output's largest magnitude when above 1)."""
    from .onnx_check import onnx_roundtrip

    if hasattr(graph, "verify_optimized"):  # an ONNX anchor: its heads and tails already run in onnxruntime
        return _check_onnx_graph(anchor, graph, cuts, x, trained=trained)
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
    return _record(gate(
        "split.onnx", anchor, not problems, measured=worst, expected=0.0, tolerance="1e-5 x max(1, |y|max)",
        message="; ".join(problems[:5]) or f"{len(cuts)} heads and tails agree (largest difference {worst:.3g})",
        details={"cuts": measured, "problems": problems, "trained_weights": trained}))


def _check_onnx_graph(anchor: str, graph, cuts: Sequence[str], x: torch.Tensor, *, trained: bool) -> CheckRecord:
    """``split.onnx`` of an ONNX anchor: at every cut, head and tail cut from the graph (onnx.utils.Extractor) and run
    with every onnxruntime optimisation on give the whole graph's output (same optimisations) within 1e-6 x
    max(1, |y|max): fusions on either side of a cut may move float rounding, nothing more."""
    problems, measured = [], {}
    for name in cuts:
        try:
            check = graph.verify_optimized(name, x)
        except Exception as exc:  # one cut's failure is that cut's problem
            problems.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        measured[name] = {"max_abs_error": check.max_abs_error, "tolerance": check.tolerance}
        if not check.passed:
            problems.append(f"{name}: tail(head(x)) differs from the graph by {check.max_abs_error:.3g} "
                            f"(tolerance {check.tolerance:.3g})")
    worst = max((v["max_abs_error"] for v in measured.values()), default=None)
    return _record(gate(
        "split.onnx", anchor, not problems, measured=worst, expected=0.0, tolerance="1e-6 x max(1, |y|max)",
        message="; ".join(problems[:5]) or f"{len(cuts)} ONNX heads and tails (optimised) give the graph's output "
                                           f"(largest difference {worst:.3g})",
        details={"cuts": measured, "problems": problems, "trained_weights": trained, "onnx_anchor": True}))


def check_published_sizes(published) -> CheckRecord:
    """The catalogue reproduces published intermediate-data sizes (no weights needed)."""
    graph = SplitGraph.trace(published.build_architecture().eval(), published.input_shape)
    measured = {cut: graph.cut(cut).numel * 4 / 1024 for cut in published.fp32_kib}
    wrong = {c: (measured[c], kib) for c, kib in published.fp32_kib.items() if measured[c] != kib}
    return _record(gate(
        "split.published_sizes", published.name, not wrong, measured=measured, expected=dict(published.fp32_kib),
        tolerance="exact", message=f"differs at {wrong} (measured, published)" if wrong else
        "fp32 KiB per cut: " + ", ".join(f"{c} {v:g}" for c, v in measured.items()),
        details={"source": published.source, "input_shape": list(published.input_shape)}))


# ---------------------------------------------------------------------------------------------
# Intermediate data


def _describe(st) -> str:
    shape = "x".join(map(str, st.shapes[0]))
    return (f"{shape}: {st.kib_as('fp32'):.1f} KiB fp32 / {st.kib_as('fp16'):.1f} fp16 / {st.kib_as('int8'):.1f} int8, "
            f"{st.zero_fraction:.1%} zeros, {st.entropy_bits:.2f} bits/element after 8-bit quantisation")


def audio_seconds_per_input(anchor) -> float | None:
    """Seconds of audio one input of a speech anchor holds: its ``input_shape``'s last axis counts feature frames,
    ``hop_length`` samples apart at ``sample_rate`` (``center=True``: L samples give L // hop + 1 frames, so F
    frames span (F - 1) * hop samples); None for an anchor whose preprocessing has no hop (images)."""
    pre = getattr(anchor, "preprocess", None)
    hop, rate = getattr(pre, "hop_length", None), getattr(pre, "sample_rate", None)
    if not hop or not rate:
        return None
    return (int(anchor.input_shape[-1]) - 1) * hop / rate


def per_second(byte_sizes: dict[str, float], seconds: float | None) -> dict[str, float] | None:
    """Bytes per input turned into bytes per second of audio (None when the input is not audio)."""
    if not seconds:
        return None
    return {k: v / seconds for k, v in byte_sizes.items()}


def _describe_rate(rate: dict[str, float] | None, seconds: float | None) -> str:
    if rate is None:
        return ""
    return (f"; per second of audio ({seconds:g} s per input): {rate['fp32'] / 1024:.1f} KiB fp32 / "
            f"{rate['fp16'] / 1024:.1f} fp16 / {rate['int8'] / 1024:.1f} int8 "
            f"({rate['fp32'] * 8 / 1000:.0f} kbit/s fp32)")


def intermediate_data_records(anchor, graph: SplitGraph, profiles, scaling, stats, *, total_macs: int,
                              total_params: int, study=None, missing: str | None = None) -> list[CheckRecord]:
    """One INFO record per cut documenting what crosses it, then the consistency gate: head + tail MACs and
    parameters equal the model's, the sizes at the anchor's own resolution equal the catalogue's, and sizes grow
    with input resolution (``missing`` says why value statistics are absent)."""
    native = str(anchor.input_shape[-1])
    problems, records = [], []
    seconds = audio_seconds_per_input(anchor)  # speech: sizes per second of audio besides per input
    for cut in graph.cuts:
        p = profiles.get(cut.name)
        if p is None:
            problems.append(f"{cut.name}: no head/tail profile")
            continue
        if p.head_macs + p.tail_macs != total_macs:
            problems.append(f"{cut.name}: head {p.head_macs} + tail {p.tail_macs} MACs != model {total_macs}")
        if p.head_params + p.tail_params - p.shared_params != total_params:  # shared weights are sent to both sides
            problems.append(f"{cut.name}: head {p.head_params} + tail {p.tail_params} - shared {p.shared_params} "
                            f"params != model {total_params}")
        sizes = scaling.get(cut.name, {})
        if native in sizes and sizes[native] != cut.numel:
            problems.append(f"{cut.name}: {sizes[native]} elements at {native}px, catalogue says {cut.numel}")
        ordered = [sizes[r] for r in sorted(sizes, key=int)]
        if any(b < a for a, b in zip(ordered, ordered[1:])):
            problems.append(f"{cut.name}: size shrinks as resolution grows: {sizes}")
        if cut.name in stats:
            st = stats[cut.name]
            rate = per_second({k: st.kib_as(k) * 1024 for k in ("fp32", "fp16", "int8")}, seconds)
            records.append(_record(CheckRecord(
                "split.intermediate_data", f"{anchor.name}/{cut.name}", Status.INFO, measured=st.kib_as("fp32"),
                message=_describe(st) + _describe_rate(rate, seconds),
                details={**st.to_dict(), "dataset": study.dataset, "smoke": study.smoke,
                         "audio_seconds_per_input": seconds, "bytes_per_audio_second": rate})))
        else:
            what = (f"{cut.num_tensors} tensors {[list(s) for s in cut.shapes]}" if not cut.single
                    else "x".join(map(str, cut.shapes[0])))
            rate = per_second({"fp32": 4 * cut.numel, "fp16": 2 * cut.numel, "int8": cut.numel}, seconds)
            records.append(_record(CheckRecord(
                "split.intermediate_data", f"{anchor.name}/{cut.name}", Status.INFO, measured=cut.numel * 4 / 1024,
                message=f"{'multi-tensor cut: ' if not cut.single else ''}{what}, {cut.numel * 4 / 1024:.1f} KiB fp32"
                        + _describe_rate(rate, seconds)
                        + ("" if missing is None or not cut.single else "; value statistics need the anchor's "
                                                                         "weights and data"),
                details={**cut.to_dict(), "cut": cut.name,
                         "bytes": {"fp32": 4 * cut.numel, "fp16": 2 * cut.numel, "int8": cut.numel},
                         "head_macs": p.head_macs, "tail_macs": p.tail_macs, "head_params": p.head_params,
                         "tail_params": p.tail_params, "shared_params": p.shared_params, "resolution_numel": sizes,
                         "statistics_missing": missing,
                         "audio_seconds_per_input": seconds, "bytes_per_audio_second": rate})))
    first = graph.single_cuts[0].name if graph.single_cuts else None
    if anchor.dataset.startswith("imagenet") and len(scaling.get(first, {})) < 2:
        problems.append(f"sizes documented at {len(scaling.get(first, {}))} resolution(s); "
                        "ImageNet anchors need at least two ([resolutions] in split.toml)")
    basis = (f"on {next(iter(stats.values())).n_samples} samples" if stats else
             f"from the architecture only ({(missing or '').split('. ')[0]})")
    records.append(_record(gate(
        "split.intermediate_data_consistency", anchor.name, not problems, measured=len(graph.cuts) - len(problems),
        expected=len(graph.cuts), message="; ".join(problems[:5]) or
        f"{len(graph.cuts)} cuts documented {basis}; MACs, parameters and sizes consistent",
        details={"model_macs": total_macs, "model_params": total_params, "statistics_missing": missing})))
    return records


# ---------------------------------------------------------------------------------------------
# Feature codecs: rate and accuracy


def codec_records(anchor: str, cut: str, point, study) -> list[CheckRecord]:
    """The operating point's records at one cut: ``split.codec_contract`` FAIL/ERROR when the codec broke the
    protocol or raised; else ``split.codec_lossless`` for a lossless point, and ``split.codec_accuracy`` (gated
    when the point claims an accuracy tier and the samples are not a smoke set, INFO otherwise)."""
    r = study.result(cut, point.label)
    subject = f"{anchor}/{cut}/{point.label}"
    if not r.ok:
        return [_record(CheckRecord(
            "split.codec_contract", subject, Status.FAIL if r.error_kind == "contract" else Status.ERROR,
            message=r.error, traceback=r.traceback, details={"point": point.to_dict()}))]
    comparison = study.task.paired(study.ref_scores, r.scores)
    details = {**r.to_dict(), "point": point.to_dict(), "ref_top1": study.ref_top1,
               "raw_bits": 32 * study.graph.cut(cut).numel, "best_tier": best_tier_met(comparison),
               "comparison": comparison.to_dict(), "dataset": study.dataset, "smoke": study.smoke,
               "metric_label": "top-1" if study.task.name == "classification" else study.task.metric_label,
               "higher_is_better": study.task.higher_is_better}
    classifier = study.task.name == "classification"
    summary = (f"{r.bits_per_sample:.0f} bits/sample ({r.bits_per_sample / details['raw_bits']:.2%} of fp32), "
               f"{'top-1' if classifier else study.task.metric_label} {r.top1:.4f} vs {study.ref_top1:.4f}"
               + (f", agreement {r.agreement:.4f}" if classifier else ""))
    # significantly better than the uncoded model: flagged in details and message, never a verdict by itself
    lo, hi = comparison.delta_ci95
    summary = flag(details, summary, suspicious_gain((lo, hi) if comparison.higher_is_better else (-hi, -lo),
                                                     comparison.metric_ref, point.claimed_tier, study.task.name))
    records = []
    if point.lossless:
        same = torch.equal(r.logits, study.ref_logits)
        records.append(_record(gate(
            "split.codec_lossless", subject, same, measured=r.max_abs_error, expected=0.0, tolerance="bit-identical",
            message=("logits bit-identical to the uncoded model" if same else
                     "a lossless point changed the logits") + f"; {summary}", details=details)))
    if point.claimed_tier and not study.smoke:
        result = non_inferiority(study.ref_scores, r.scores, point.claimed_tier, study.task)
        records.append(_record(gate(
            "split.codec_accuracy", subject, result.passed, measured=r.top1, expected=study.ref_top1,
            tolerance=point.claimed_tier, message=f"{result.reason}; {summary}", details=details)))
    else:
        why = (f"SMOKE SET ({len(study.labels)} images): accuracy not gated" if study.smoke else
               f"no claim; best tier met: {details['best_tier'] or 'none'}")
        records.append(_record(CheckRecord(
            "split.codec_accuracy", subject, Status.INFO, measured=r.top1, expected=study.ref_top1,
            message=f"{why}; {summary}", details=details)))
    return records


def _pct(value, reason: str) -> str:
    return f"{value:+.1%}" if value is not None else f"undefined ({reason})"


def oriented_curve(curve: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(rate, -metric) of a lower-is-better metric's curve (WER): BD-rate's quality axis must rise with quality,
    so a codec that needs fewer bits for the same WER still gets a negative BD-rate."""
    return [(rate, -value) for rate, value in curve]


def bd_rate_records(anchor: str, cut: str, study, anchor_family: str) -> list[CheckRecord]:
    """BD-rate (monotone PCHIP fit) of every codec family against the anchor family's curve at this cut, on top-1
    and on agreement with the uncoded model (INFO), then the gate that the anchor curve has two or more usable
    points."""
    families = sorted({r.point.family for (c, _), r in study.coded.items() if c == cut})
    classifier = study.task.name == "classification"
    # BD-rate integrates rate over a quality that rises with rate: a lower-is-better metric (WER) is negated
    quality = oriented_curve if not study.task.higher_is_better else (lambda curve: curve)
    label = "top-1" if classifier else study.task.metric_label
    anchor_acc = study.curve(cut, anchor_family)
    # agreement with the uncoded model is a classifier's figure; other tasks gate on their metric's curve
    anchor_agr = study.curve(cut, anchor_family, metric="agreement") if classifier else quality(anchor_acc)
    table, single_point, records = {}, [], []
    for fam in families:
        if fam == anchor_family:
            continue
        if len(study.curve(cut, fam)) < 2:
            single_point.append(fam)  # one operating point is no curve: no BD-rate to take
            continue
        acc = bd_rate(quality(anchor_acc), quality(study.curve(cut, fam)))
        agr = bd_rate(anchor_agr, study.curve(cut, fam, metric="agreement")) if classifier else None
        table[fam] = {"bd_rate_top1": acc.value, "bd_rate_agreement": agr.value if agr else None,
                      "top1": acc.to_dict(), "agreement": agr.to_dict() if agr else None, "metric": study.task.metric}
        records.append(_record(CheckRecord(
            "split.bd_rate", f"{anchor}/{cut}/{fam}", Status.INFO, measured=acc.value, expected=f"vs {anchor_family}",
            message=f"BD-rate vs {anchor_family}: {label} {_pct(acc.value, acc.reason)}"
                    + (f", agreement {_pct(agr.value, agr.reason)}" if agr else ""),
            details={"family": fam, "anchor_family": anchor_family, **table[fam],
                     "curve_top1": study.curve(cut, fam),
                     "curve_agreement": study.curve(cut, fam, metric="agreement") if classifier else None,
                     "smoke": study.smoke})))
    usable = len(upper_envelope(anchor_agr))
    records.append(_record(gate(
        "split.bd_rate_anchor_curve", f"{anchor}/{cut}", usable >= 2, measured=usable, expected=">= 2",
        message=f"anchor curve ({anchor_family}) has {usable} usable points of {len(anchor_agr)}; "
                f"BD-rates for {len(table)} families" + (f" ({', '.join(single_point)}: one point each, no curve)"
                                                          if single_point else ""),
        details={"anchor_curve_top1": anchor_acc, "anchor_curve_agreement": anchor_agr, "table": table,
                 "single_point_families": single_point})))
    return records


# ---------------------------------------------------------------------------------------------
# Selection and the 3GPP figure


def candidates(study, timings: Mapping[str, float], input_numel: int) -> list[Candidate]:
    """Every coded (cut, codec) pair with its measured times (``timings``: ``<cut>/head``, ``<cut>/tail``,
    ``<cut>/<point>/encode``, ``<cut>/<point>/decode``, ``model``), plus the device-only and server-only
    bounds. A KeyError names a missing timing."""
    tiers = list(load_tiers())
    out = []
    for (cut, pid), r in sorted(study.coded.items()):
        if not r.ok:
            continue
        keys = [f"{cut}/head", f"{cut}/tail", f"{cut}/{pid}/encode", f"{cut}/{pid}/decode"]
        absent = [k for k in keys if k not in timings]
        if absent:
            raise KeyError(f"{study.anchor}: no timings for {absent}")
        met = frozenset(name for name in tiers
                        if non_inferiority(study.ref_scores, r.scores, name, study.task).passed)
        t = [timings[k] for k in keys]
        out.append(Candidate(cut, pid, r.bytes_per_sample, t[0], t[2], t[3], t[1], met, r.top1))
    return out + bounds(timings["model"], input_numel, tiers, study.ref_top1)


def check_selection(anchor: str, scenario, study, cands: Sequence[Candidate]) -> CheckRecord:
    """Neurosurgeon-style selection: the (cut, codec) pair with the lowest end-to-end latency (device head +
    encode, link transfer, server decode + tail) among those meeting the scenario's accuracy tier, checked against
    a brute-force recomputation from the per-sample results."""
    tier = scenario.accuracy_tier
    sel = select_split(cands, scenario.device, scenario.server, scenario.link, tier)
    admissible = []
    for c in cands:
        if c.cut.startswith("("):
            admissible.append(c)
            continue
        r = study.result(c.cut, c.codec)
        if non_inferiority(study.ref_scores, r.scores, tier, study.task).passed:
            admissible.append(c)
    fastest = min(end_to_end(c, scenario.device, scenario.server, scenario.link).total_s for c in admissible)
    ok = sel.best is not None and math.isclose(sel.best.total_s, fastest, rel_tol=1e-12) \
        and sel.best.candidate in admissible
    best = sel.best.to_dict() if sel.best else None
    return _record(gate(
        "split.selection", f"{anchor}/{scenario.name}", ok, measured=best and best["total_ms"],
        expected=1e3 * fastest, tolerance=tier,
        message=(f"{sel.best.candidate.label}: {best['total_ms']:.2f} ms (device {best['device_ms']:.2f}, link "
                 f"{best['link_ms']:.2f}, server {best['server_ms']:.2f}) on {scenario.device.name}/"
                 f"{scenario.link.name}/{scenario.server.name} within {tier}") if sel.best else
                "no candidate meets the tier",
        details={**sel.to_dict(), "scenario": {"device": scenario.device.__dict__, "server": scenario.server.__dict__,
                                               "link": scenario.link.__dict__}, "smoke": study.smoke}))


def check_kpi(anchor: str, kpi, study) -> CheckRecord:
    """Which coded (cut, codec) pairs meet a published payload / rate / latency figure (3GPP TS 22.261's split
    image recognition: 0.27 MByte at 144 Mbit/s, 15 ms): at least one must, while keeping the KPI's accuracy
    tier."""
    rows, qualifying = [], []
    for (cut, pid), r in sorted(study.coded.items()):
        if not r.ok:
            continue
        fits = kpi.met_by(max(r.payload_bytes))
        keeps = non_inferiority(study.ref_scores, r.scores, kpi.accuracy_tier, study.task).passed
        rows.append({"cut": cut, "codec": pid, "max_payload_bytes": max(r.payload_bytes),
                     "transfer_ms": kpi.transfer_ms(max(r.payload_bytes)), "fits": fits, "keeps_tier": keeps})
        if fits and keeps:
            qualifying.append(f"{cut}/{pid}")
    return _record(gate(
        "split.kpi", f"{anchor}/{kpi.name}", bool(qualifying), measured=len(qualifying), expected=">= 1",
        tolerance=kpi.accuracy_tier,
        message=(f"{len(qualifying)} of {len(rows)} pairs fit {kpi.payload_bytes / 1e6:g} MB / "
                 f"{kpi.max_latency_ms:g} ms at {kpi.uplink_mbps:g} Mbit/s within {kpi.accuracy_tier}"
                 + (f", e.g. {', '.join(qualifying[:3])}" if qualifying else "")
                 + (" (SMOKE SET)" if study.smoke else "")),
        details={"source": kpi.source, "pairs": rows, "smoke": study.smoke}))


from . import joint, node_table  # noqa: E402,F401  (their check ids are registered with the criterion's)
