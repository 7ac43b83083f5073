"""A run's ``results.json`` read for the reference pages: the latest measured figures of each method."""

from __future__ import annotations

import json
from pathlib import Path


def read_results(path: str | Path) -> dict:
    """The parsed ``results.json``; a ValueError naming the file when it is not a run's results."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable results.json ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ValueError(f"{path}: no 'records' list; give a run's results.json")
    return data


#: the committed snapshot of a run's measured figures the pages are generated from (``--results`` rewrites it)
MEASURED = "measured.json"
_MEASURED_CHECKS = ("compression.accuracy", "updates.accuracy", "split.codec_accuracy")


def measured_snapshot(results: dict) -> dict:
    """The part of a run's results the pages show (run id, datasets, the accuracy records of every method), so the
    committed pages can be regenerated, and checked, without the run."""
    keep = {"metrics", "bytes", "bits_per_sample"}
    records = [{"check_id": r["check_id"], "subject": r["subject"], "status": r["status"],
                "measured": r.get("measured"), "expected": r.get("expected"),
                "details": {k: v for k, v in (r.get("details") or {}).items() if k in keep}}
               for r in results.get("records", []) if r.get("check_id") in _MEASURED_CHECKS]
    records.sort(key=lambda r: (r["check_id"], r["subject"]))
    return {"run_id": results.get("run_id", "?"), "datasets": results.get("datasets", {}), "records": records}


def _labels(kind: str) -> dict[str, str]:
    """Operating-point label -> method name, for the criteria whose record subjects carry only the label."""
    if kind == "update-codec":
        from ..updates.plan import load_plan

        return {p.label: p.codec for p in load_plan().points}
    from ..split.plan import load_plan

    return {p.label: p.codec for p in load_plan().points}


def method_results(results: dict, kind: str, name: str) -> list[list]:
    """Rows (subject, status, figures) of the records that measure method ``name`` of ``kind``."""
    rows = []
    records = results.get("records", [])
    if kind == "compressor":
        for r in records:
            parts = r["subject"].split("/")
            if r["check_id"] == "compression.accuracy" and len(parts) >= 2 and parts[1] == name:
                m = (r.get("details") or {}).get("metrics") or {}
                rows.append([r["subject"], r["status"], m.get("bytes"), m.get("compression_ratio"),
                             m.get("macs"), m.get("acc_ref"), m.get("acc"), m.get("best_tier")])
        return sorted(rows, key=lambda row: row[0])
    labels = _labels(kind)
    check = "updates.accuracy" if kind == "update-codec" else "split.codec_accuracy"
    for r in records:
        label = r["subject"].rsplit("/", 1)[-1]
        if r["check_id"] == check and labels.get(label) == name:
            d = r.get("details") or {}
            size = d.get("bytes") if kind == "update-codec" else d.get("bits_per_sample")
            rows.append([r["subject"], r["status"], size, r.get("measured"), r.get("expected")])
    return sorted(rows, key=lambda row: row[0])


RESULT_HEADERS = {
    "compressor": ["case", "status", "bytes", "ratio", "MACs", "anchor top-1", "top-1", "best tier"],
    "update-codec": ["case", "status", "payload bytes", "top-1", "expected"],
    "feature-codec": ["case", "status", "bits per sample", "top-1", "expected"],
}


def methods_in_records(records: list[dict]) -> list[tuple[str, str]]:
    """``(kind, method)`` of every method a run's records measured (sorted): compression subjects name the
    method; update and split subjects end in an operating-point label, looked up in the committed plans."""
    found = set()
    try:
        labels = {"update-codec": _labels("update-codec"), "feature-codec": _labels("feature-codec")}
    except Exception:  # a plan that does not load is reported by its own criterion; no links then
        labels = {"update-codec": {}, "feature-codec": {}}
    for r in records:
        check, parts = r.get("check_id", ""), r.get("subject", "").split("/")
        if check == "compression.accuracy" and len(parts) >= 2:
            found.add(("compressor", parts[1]))
        elif check == "updates.accuracy" and parts[-1] in labels["update-codec"]:
            found.add(("update-codec", labels["update-codec"][parts[-1]]))
        elif check == "split.codec_accuracy" and parts[-1] in labels["feature-codec"]:
            found.add(("feature-codec", labels["feature-codec"][parts[-1]]))
    return sorted(found)
