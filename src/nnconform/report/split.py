"""Report section of the split-inference criterion.

Per anchor: the intermediate-data table and a plot of size and head cost along the cuts; per
coded cut: the rate-accuracy table, its plot, CompressAI-style curve JSON
(``kit.RateCurve`` JSON: ``split/curves/<anchor>_<cut>/<family>.json``) and the BD-rate table; then the split choices
per scenario and the pairs meeting the 3GPP figure. Everything is read from the run's records.
"""

from __future__ import annotations

import re
from collections import defaultdict

from .. import kit
from . import SECTIONS, ReportContext, md_table

SUBDIR = "split"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _pct(x, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}%}"


def _si(n) -> str:
    if n is None:
        return ""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _intermediate(ctx: ReportContext, recs) -> list[str]:
    by_anchor = defaultdict(list)
    for r in recs:
        if r.check_id == "split.intermediate_data":
            by_anchor[r.subject.split("/", 1)[0]].append(r)
    out = []
    for anchor, rows in by_anchor.items():
        singles = [r for r in rows if r.details.get("kind") == "single"]
        multi = [r for r in rows if r.details.get("kind") == "multi"]
        d0 = singles[0].details if singles else {}
        resolutions = sorted({k for r in singles for k in r.details.get("resolution_numel", {})}, key=int)
        table = []
        for r in singles:
            d = r.details
            shape = "x".join(map(str, d["shapes"][0]))
            if "zero_fraction" in d:
                values = [_pct(d["zero_fraction"], 1), f"{d['entropy_bits']:.2f}",
                          f"{d['channel_mean']['mean']:.3g} [{d['channel_mean']['min']:.3g}, "
                          f"{d['channel_mean']['max']:.3g}]",
                          f"{d['channel_var']['mean']:.3g} [{d['channel_var']['min']:.3g}, {d['channel_var']['max']:.3g}]"]
            else:
                values = ["", "", "", ""]
            table.append([d["cut"], shape, f"{d['bytes']['fp32'] / 1024:.1f}", f"{d['bytes']['fp16'] / 1024:.1f}",
                          f"{d['bytes']['int8'] / 1024:.1f}", *values,
                          _si(d.get("head_macs")), _si(d.get("tail_macs")), _si(d.get("head_params")),
                          _si(d.get("tail_params"))]
                         + [f"{d['resolution_numel'][k] * 4 / 1024:.1f}" if k in d.get("resolution_numel", {}) else "n/a"
                            for k in resolutions])
        if "n_samples" in d0:
            note = (f"Statistics on {d0.get('n_samples')} samples of {d0.get('dataset')}"
                    + (" (smoke set)" if d0.get("smoke") else ""))
        else:
            why = str(d0.get("statistics_missing") or "").split(". ")[0]
            note = f"Structure only, from the architecture (no value statistics: {why})"
        out += [f"#### {anchor}: intermediate data per single cut", "",
                f"{note}; entropy in bits per element after 8-bit min-max quantisation of each sample; "
                "channel mean and variance as mean [min, max] over channels. MACs and parameters per sample.", "",
                md_table(["cut", "shape", "KiB fp32", "KiB fp16", "KiB int8", "zeros", "entropy", "channel mean",
                          "channel var", "head MACs", "tail MACs", "head params", "tail params"]
                         + [f"KiB fp32 @{k}px" for k in resolutions], table), ""]
        if multi:
            counts = defaultdict(int)
            for r in multi:
                counts[r.details["num_tensors"]] += 1
            out += [f"{len(multi)} multi-tensor cuts (inside blocks): "
                    + ", ".join(f"{n} with {k} tensors" for k, n in sorted(counts.items()))
                    + "; e.g. " + ", ".join(f"`{r.details['name']}` ({r.details['num_tensors']} tensors, "
                                            f"{r.details['bytes']['fp32'] / 1024:.1f} KiB)" for r in multi[:3]), ""]
        if singles:
            plt = _plt()
            fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(singles)), 3.6))
            names = [r.details["cut"] for r in singles]
            ax.bar(range(len(names)), [r.details["bytes"]["fp32"] / 1024 for r in singles], color="tab:blue")
            ax.set_yscale("log")
            ax.set_ylabel("KiB per sample (fp32)")
            ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
            total = [(r.details.get("head_macs") or 0) + (r.details.get("tail_macs") or 0) for r in singles]
            if all(total):
                ax2 = ax.twinx()
                ax2.plot(range(len(names)), [r.details["head_macs"] / t for r, t in zip(singles, total)],
                         color="tab:red", marker=".")
                ax2.set_ylabel("head share of MACs", color="tab:red")
                ax2.set_ylim(0, 1)
            ax.set_title(f"{anchor}: intermediate data and head cost per cut")
            fig.tight_layout()
            path = ctx.run_dir / SUBDIR / f"intermediate-{_safe(anchor)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110)
            plt.close(fig)
            rel = str(path.relative_to(ctx.run_dir))
            ctx.artifacts[f"split/intermediate/{anchor}"] = rel
            out += [f"![{anchor} intermediate data]({rel})", ""]
    return out


def _rate_accuracy(ctx: ReportContext, recs) -> list[str]:
    by_cut = defaultdict(list)
    for r in recs:
        if r.check_id in ("split.codec_accuracy", "split.codec_contract"):
            anchor, cut, _ = r.subject.split("/", 2)
            by_cut[(anchor, cut)].append(r)
    bd = defaultdict(list)
    for r in recs:
        if r.check_id == "split.bd_rate":
            anchor, cut, fam = r.subject.split("/", 2)
            bd[(anchor, cut)].append(r)
    out = []
    for (anchor, cut), rows in by_cut.items():
        table, curves = [], defaultdict(list)
        for r in rows:
            d = r.details
            point = d.get("point", {})
            if r.check_id == "split.codec_contract":
                table.append([point.get("label", r.subject), point.get("family"), "", "", "", "", "", r.status.value.upper(),
                              r.message])
                continue
            table.append([point["label"], d["family"], f"{d['bits_per_sample']:.0f}",
                          _pct(d["bits_per_sample"] / d["raw_bits"]), f"{d['top1']:.4f}",
                          "-" if d.get("agreement") is None else f"{d['agreement']:.4f}",
                          d.get("best_tier") or "none", r.status.value.upper(), point.get("claimed_tier") or ""])
            curves[d["family"]].append({"bits_per_sample": d["bits_per_sample"], "top1": d["top1"],
                                        "agreement": d["agreement"], "point": point["label"],
                                        "proposal": point.get("proposal") or ""})
        smoke = any(r.details.get("smoke") for r in rows)
        ref = next((r.details.get("ref_top1") for r in rows if "ref_top1" in r.details), None)
        # the anchor's task metric (top-1; WER for speech, lower is better)
        metric = next((r.details.get("metric_label") for r in rows if r.details.get("metric_label")), "top-1")
        out += [f"#### {anchor} / {cut}: rate and accuracy", "",
                f"Uncoded {metric} {ref:.4f} on {rows[0].details.get('n', '?')} samples"
                + (" (smoke set: accuracy not gated)" if smoke else "") + "." if ref is not None else "", "",
                md_table(["point", "family", "bits/sample", "of fp32", metric, "agreement", "best tier", "status",
                          "claim / error"], table), ""]
        rate_curves = [kit.RateCurve.from_rows(f"{anchor}/{cut}", fam, pts, ("bits_per_sample", "top1", "agreement",
                                                                             "point"),
                                               rate="bits_per_sample", description=f"{anchor} cut {cut}",
                                               meta={"proposal": pts[0]["proposal"], "reference_top1": ref})
                       for fam, pts in sorted(curves.items())]
        for c, path in zip(rate_curves, kit.write_curves(rate_curves, ctx.run_dir / SUBDIR / "curves")):
            ctx.artifacts[f"split/curves/{anchor}/{cut}/{c.method}"] = str(path.relative_to(ctx.run_dir))
        if rate_curves:
            path = kit.plot_curves(rate_curves, ctx.run_dir / SUBDIR / f"rate-accuracy-{_safe(anchor)}-{_safe(cut)}.png",
                                   x="bits_per_sample", y="top1", xlabel="bits per sample",
                                   ylabel=metric if metric == "top-1" else f"{metric} (lower is better)",
                                   title=f"{anchor} / {cut}", hlines=[(ref, "uncoded")] if ref is not None else ())
            rel = str(path.relative_to(ctx.run_dir))
            ctx.artifacts[f"split/rate-accuracy/{anchor}/{cut}"] = rel
            out += [f"![{anchor} {cut} rate-accuracy]({rel})", ""]
        if bd.get((anchor, cut)):
            anchor_fam = bd[(anchor, cut)][0].details.get("anchor_family")
            out += [f"BD-rate against `{anchor_fam}` (negative: fewer bits for the same {metric}):", "",
                    md_table(["family", f"BD-rate ({metric})", "BD-rate (agreement)"],
                             [[r.details["family"], _pct(r.details.get("bd_rate_top1"), 1) or "undefined",
                               _pct(r.details.get("bd_rate_agreement"), 1) or "undefined"]
                              for r in bd[(anchor, cut)]]), ""]
    return out


#: Above this many cuts, the node table shows the single cuts and the coded ones (results.json keeps every node).
NODE_TABLE_ROWS = 40


def _tensor_cells(t: dict) -> list:
    return [t["name"], "x".join(map(str, t["shape"])), t["dtype"], f"{t['bytes']:,}"]


def _node_tables(recs) -> list[str]:
    """TR 26.847 tables per anchor from its ``split.node_table`` record: every node (name, branches, each tensor's
    shape and bytes per input) and the input-size scaling of the coded cuts."""
    out = []
    for r in recs:
        if r.check_id != "split.node_table" or "nodes" not in r.details:
            continue
        d = r.details
        coded = set(d.get("scaling", {}))
        nodes = d["nodes"]
        shown = nodes if len(nodes) <= NODE_TABLE_ROWS else [n for n in nodes if n["branches"] == 1 or n["node"] in coded]
        rows = []
        for n in shown:
            if n["branches"] == 1:
                rows.append([n["node"], 1, *_tensor_cells(n["tensors"][0]), f"{n['bytes']:,}"])
                continue
            rows.append([n["node"], n["branches"], "", "", "", "", f"{n['bytes']:,}"])
            rows += [["", f"branch {k + 1}", *_tensor_cells(t), ""] for k, t in enumerate(n["tensors"])]
        shape = "x".join(map(str, d["input_shape"]))
        left = len(nodes) - len(shown)
        out += [f"#### {r.subject}: TR 26.847 node table", "",
                f"Every split point of the traced graph at input {shape}: the branches (tensors crossing it; a "
                "multi-tensor node lists each), shapes per input and bytes per input (numel x itemsize, checked "
                f"against the tensors the head hands over: {r.status.value.upper()})."
                + (f" {left} other multi-tensor nodes are in results.json (`split.node_table` details)." if left else ""),
                "", md_table(["node", "branches", "tensor", "shape", "dtype", "bytes", "bytes per input"], rows), ""]
        sizes = [str(x) for x in d.get("sizes", [])]
        if coded and sizes:
            unit = "px" if len(d["input_shape"]) == 3 and d["input_shape"][1] == d["input_shape"][2] else " frames"
            rows = []
            for cut, by_size in d["scaling"].items():
                n = next((x for x in nodes if x["node"] == cut), None)
                branches = n["branches"] if n else len(next(iter(by_size.values()), {}).get("tensors", []))
                name = n["tensors"][0]["name"] if n and branches == 1 else ""
                rows.append([cut, branches, name] + [f"{by_size[z]['bytes']:,}" if z in by_size else "n/a" for z in sizes])
                if branches > 1:
                    for k in range(branches):
                        rows.append(["", f"branch {k + 1}", (n["tensors"][k]["name"] if n else "")]
                                    + [f"{'x'.join(map(str, by_size[z]['tensors'][k]['shape']))}: "
                                       f"{by_size[z]['tensors'][k]['bytes']:,}" if z in by_size else "n/a"
                                       for z in sizes])
            per_branch = " (shape: bytes per branch)" if any(row[1] != 1 for row in rows if row[0]) else ""
            out += [f"Intermediate data per input at each input size (coded cuts; shapes by propagating a random input "
                    f"of each size, no data): bytes per input{per_branch}.",
                    "", md_table(["cut", "branches", "tensor"] + [f"@{z}{unit}" for z in sizes], rows), ""]
    return out


def _joint(ctx: ReportContext, recs) -> list[str]:
    """Per coded multi-tensor cut: bits per input and the task's metric per tensor and joint, the rate-accuracy plot
    of both modes, the BD-rate of joint against per-tensor coding per family."""
    bd = defaultdict(list)
    for r in recs:
        if r.check_id == "split.joint_bd_rate":
            anchor, cut, _ = r.subject.split("/", 2)
            bd[(anchor, cut)].append(r)
    out = []
    for r in recs:
        if r.check_id != "split.joint_coding" or "rows" not in r.details:
            continue
        anchor, cut = r.subject.split("/", 1)
        d = r.details
        metric = d.get("metric_label", "top-1")

        def num(v, f):
            return "error" if v is None else format(v, f)

        table = [[x["point"], x["family"], num(x["per_tensor_bits"], ",.0f"), num(x["joint_bits"], ",.0f"),
                  _pct(x.get("joint_saving"), 1), num(x["per_tensor_metric"], ".4f"), num(x["joint_metric"], ".4f")]
                 for x in d["rows"]]
        shapes = " + ".join("x".join(map(str, s)) for s in d.get("shapes", []))
        out += [f"#### {anchor} / {cut}: {d.get('tensors')} tensors coded per tensor and jointly", "",
                f"Per tensor: one payload per tensor, bits summed; joint: the input's tensors ({shapes}) in ONE payload "
                f"(one range / one stream / one frame). Bits per input are lengths of real payloads decoded and run "
                f"through the tail; uncoded {metric} {d.get('ref_metric', float('nan')):.4f} on {d.get('n')} samples; "
                f"{r.status.value.upper()}.", "",
                md_table(["point", "family", "bits/input per tensor", "bits/input joint", "joint vs per tensor",
                          f"{metric} per tensor", f"{metric} joint"], table), ""]
        curves = []
        for mode, bits, value in (("per-tensor", "per_tensor_bits", "per_tensor_metric"),
                                  ("joint", "joint_bits", "joint_metric")):
            by_family = defaultdict(list)
            for x in d["rows"]:
                if x[bits] is not None:
                    by_family[x["family"]].append({"bits_per_sample": x[bits], "metric": x[value], "point": x["point"]})
            curves += [kit.RateCurve.from_rows(f"{anchor}/{cut}/joint", f"{fam} ({mode})", pts,
                                               ("bits_per_sample", "metric", "point"), rate="bits_per_sample",
                                               description=f"{anchor} cut {cut}, {mode}")
                       for fam, pts in sorted(by_family.items()) if len(pts) >= 2]
        if curves:
            for c, path in zip(curves, kit.write_curves(curves, ctx.run_dir / SUBDIR / "curves")):
                ctx.artifacts[f"split/curves/{anchor}/{cut}/joint/{c.method}"] = str(path.relative_to(ctx.run_dir))
            path = kit.plot_curves(curves, ctx.run_dir / SUBDIR / f"joint-{_safe(anchor)}-{_safe(cut)}.png",
                                   x="bits_per_sample", y="metric", xlabel="bits per input", ylabel=metric,
                                   title=f"{anchor} / {cut}: joint vs per-tensor",
                                   hlines=[(d["ref_metric"], "uncoded")] if d.get("ref_metric") is not None else ())
            rel = str(path.relative_to(ctx.run_dir))
            ctx.artifacts[f"split/joint/{anchor}/{cut}"] = rel
            out += [f"![{anchor} {cut} joint vs per-tensor]({rel})", ""]
        if bd.get((anchor, cut)):
            out += [f"BD-rate of joint against per-tensor coding (PCHIP, on {metric}; negative: joint needs fewer bits "
                    "for the same accuracy):", "",
                    md_table(["family", "BD-rate", "points (per tensor / joint)"],
                             [[b.details["family"], _pct(b.measured, 1) or
                               f"undefined ({b.details['bd_rate'].get('reason', '')})",
                               f"{len(b.details['curve_per_tensor'])} / {len(b.details['curve_joint'])}"]
                              for b in bd[(anchor, cut)]]), ""]
    return out


def _selection(recs) -> list[str]:
    rows = [r for r in recs if r.check_id == "split.selection"]
    kpis = [r for r in recs if r.check_id == "split.kpi"]
    out = []
    if rows:
        table = []
        for r in rows:
            best = r.details.get("best") or {}
            runner_up = (r.details.get("ranked") or [None, None])[1:2]
            table.append([r.subject, best.get("candidate"), f"{best.get('total_ms', float('nan')):.2f}",
                          f"{best.get('device_ms', float('nan')):.2f}", f"{best.get('link_ms', float('nan')):.2f}",
                          f"{best.get('server_ms', float('nan')):.2f}", best.get("payload_bytes"),
                          runner_up[0]["candidate"] if runner_up and runner_up[0] else "", r.details.get("tier")])
        out += ["#### Split selection (end-to-end latency per image; times measured here, scaled by the profiles)", "",
                md_table(["anchor / scenario", "chosen", "total ms", "device ms", "link ms", "server ms",
                          "payload bytes", "runner-up", "tier"], table), ""]
    for r in kpis:
        pairs = r.details.get("pairs", [])
        ok = [f"{p['cut']}/{p['codec']}" for p in pairs if p["fits"] and p["keeps_tier"]]
        out += [f"**{r.subject}** ({r.details.get('source', '')}): {len(ok)} of {len(pairs)} coded pairs fit "
                f"and keep the tier" + (f": {', '.join(ok)}" if ok else "") + ".", ""]
    return out


@SECTIONS.register("split")
def split_section(ctx: ReportContext) -> str:
    """Markdown for the split criterion (plots and curve JSON under ``<run>/split/``)."""
    recs = ctx.records_of("split")
    lines = ["### Split inference: intermediate data, feature codecs, split selection", ""]
    lines += _intermediate(ctx, recs)
    lines += _node_tables(recs)
    lines += _rate_accuracy(ctx, recs)
    lines += _joint(ctx, recs)
    lines += _selection(recs)
    return "\n".join(lines)


def summary(ctx: ReportContext) -> str:
    """Executive summary: per anchor, cut and codec family, the smallest coded point that keeps the
    strictest tier any point of the family met (bits per sample, share of fp32, top-1 and its change
    against the uncoded model); then the rate-accuracy plots the section drew."""
    best: dict[tuple, object] = {}
    for r in ctx.records_of("split"):
        d = r.details
        if r.check_id != "split.codec_accuracy" or "bits_per_sample" not in d:
            continue
        anchor, cut, _ = r.subject.split("/", 2)
        key = (anchor, cut, d["family"])
        rank = (d.get("best_tier") is None, d["bits_per_sample"])
        if key not in best or rank < best[key][0]:
            best[key] = (rank, r)
    if not best:
        return ""
    table = []
    for (anchor, cut, fam), (_, r) in best.items():
        d = r.details
        ref = d.get("ref_top1")
        table.append([anchor, cut, fam, d["point"]["label"], f"{d['bits_per_sample']:.0f}",
                      _pct(d["bits_per_sample"] / d["raw_bits"]), f"{d['top1']:.4f}",
                      "" if ref is None else f"{d['top1'] - ref:+.2%}", d.get("best_tier") or "none",
                      r.status.value.upper()])
    plots = [f"![{key.removeprefix('split/rate-accuracy/')} rate-accuracy]({rel})"
             for key, rel in ctx.artifacts.items() if key.startswith("split/rate-accuracy/")]
    return "\n".join([md_table(["anchor", "cut", "family", "point", "bits/sample", "of fp32", "top-1",
                                "vs uncoded", "tier met", "status"], table), ""] + plots)


from . import SUMMARIES  # noqa: E402  (the summary registry; added beside the section)

SUMMARIES.register("split", summary)
