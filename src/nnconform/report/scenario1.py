"""3GPP TR 26.847 scenario 1 (delivery of a compressed speech-recognition model): the table per ASR anchor.

TR 26.847 tabulates, per anchor ASR model, its number of parameters (numParam), its size (sizeAnc) and
its word error rate (werAnc), then each compressed model's size and WER, and NNCodec's compressed size
against WER per quantization parameter (QP; Table 5.2.14-1's shape). These tables are built from the
compression criterion's rows (:func:`nnconform.compress.curves.case_rows`), so they show exactly the
cases the run evaluated; the compression section includes them (:func:`scenario1_tables`).

sizeAnc is the anchor's float32 weights as safetensors (the bytes every compression ratio divides);
numParam is the anchor's parameter count as measured on the model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from . import md_table

#: the task whose anchors get a scenario-1 table
ASR_TASK = "asr"


def _wer(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.2f}%"


def _delta(row: dict[str, Any]) -> str:
    """WER change in WER points with its 95% paired bootstrap interval."""
    if row.get("delta") is None:
        return ""
    ci = row.get("delta_ci95") or [None, None]
    text = f"{row['delta'] * 100:+.2f}"
    if ci[0] is not None:
        text += f" [{ci[0] * 100:+.2f}, {ci[1] * 100:+.2f}]"
    return text


def qp_of(row: dict[str, Any]) -> int | None:
    """The NNCodec QP of an ``nnc`` case (None for another method)."""
    if row.get("method") != "nnc":
        return None
    qp = (row.get("config") or {}).get("qp")
    return int(qp) if qp is not None else None


def asr_rows(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The evaluated cases of ASR anchors, by anchor (smoke sets left out: WER on them is no measurement)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("task") == ASR_TASK and not row.get("smoke"):
            out[row["anchor"]].append(row)
    return dict(out)


def anchor_line(rows: list[dict[str, Any]]) -> list[Any]:
    """``[numParam, sizeAnc (bytes), werAnc]`` of one anchor, from any of its rows (all carry the reference)."""
    first = rows[0]
    return [first.get("params_ref"), first.get("bytes_ref"), _wer(first.get("top1_ref"))]


def point_table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """One line per compressed point: method, point, size, ratio, WER, delta [95% CI] in WER points, tier met,
    claimed tier, status; ordered by size, largest first."""
    table = []
    for r in sorted(rows, key=lambda r: (-(r.get("bytes") or 0), r["method"], r["label"])):
        ratio = r.get("compression_ratio")
        table.append([r["method"], r["label"] or "-", r.get("bytes"), "" if ratio is None else f"{ratio:.2f}x",
                      _wer(r.get("top1")), _delta(r), r.get("best_tier") or "none", r.get("claimed_tier") or "-",
                      str(r.get("status", "")).upper()])
    return table


def qp_sweep(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """TR 26.847 Table 5.2.14-1's shape: QP, compressed size (bytes), WER; QPs from fine to coarse."""
    sweep = [(qp_of(r), r) for r in rows if qp_of(r) is not None]
    return [[qp, r.get("bytes"), _wer(r.get("top1")), _delta(r)] for qp, r in sorted(sweep, key=lambda t: t[0])]


def scenario1_tables(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Markdown lines: for each ASR anchor among ``rows`` (compression case rows), its scenario-1 table and its
    NNCodec QP sweep; nothing when the run evaluated no ASR anchor."""
    out: list[str] = []
    for anchor, anchor_rows in sorted(asr_rows(rows).items()):
        out += [f"#### TR 26.847 scenario 1: {anchor}", "",
                md_table(["numParam", "sizeAnc (bytes, fp32)", "werAnc"], [anchor_line(anchor_rows)]), "",
                md_table(["method", "point", "size (bytes)", "ratio", "WER", "delta WER points [95% CI]", "tier met",
                          "claimed", "status"], point_table(anchor_rows)), ""]
        sweep = qp_sweep(anchor_rows)
        if sweep:
            out += ["NNCodec QP sweep (TR 26.847 Table 5.2.14-1 shape):", "",
                    md_table(["QP", "compressed size (bytes)", "WER", "delta WER points [95% CI]"], sweep), ""]
        out += ["sizeAnc: the anchor's float32 weights as safetensors (the size every ratio divides); WER: total "
                "word errors / total reference words, greedy CTC, text normalized as the anchor's provenance "
                "states; delta: compressed - anchor, positive is worse, 95% paired bootstrap over utterances; "
                "tiers are WER margins (anchors/tiers.toml, task asr).", ""]
    return out
