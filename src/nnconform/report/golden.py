"""Golden results: the quick tier's reference figures, committed, and a check that a run reproduces them.

A golden file pins, per check record of a run (timing records left out), its status, its measured value
and the fingerprints its details carry (artifact and decoded-model sha256, logits sha256, payload bytes,
bits per sample). A fresh run that moves any of them, or records a case the file lacks, is a difference;
a deliberate change regenerates the file in the same commit::

    python -m nnconform.report golden --update reports/latest      # write tests/golden/quick.json
    python -m nnconform.report golden --check reports/latest       # exit 1 on any difference

``make test`` checks it at the end of the run (``--nnc-golden``), so CI on a fresh machine is the
cross-machine check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

GOLDEN_VERSION = 1
#: records whose values are timings (they move run to run); their *status* is still pinned
TIMING_MARKERS = ("latency", "_time", "selection")
#: records whose measured value is the seconds a step took (compress, decode; None on a cache hit)
TIMING_CHECKS = frozenset({"compression.compress", "compression.decode"})
#: detail keys that are fingerprints or exact sizes
PINNED_DETAILS = ("decoded_sha256", "artifact_sha256", "logits_sha256", "payload_sha256", "target_sha256",
                  "bits_per_sample", "payload_bytes_min", "payload_bytes_max", "bytes", "update_bytes", "files")


class GoldenError(ValueError):
    """A golden file or a run's results cannot be read; the message names the path."""


def _is_timing(check_id: str) -> bool:
    return check_id in TIMING_CHECKS or any(marker in check_id for marker in TIMING_MARKERS)


def figures(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The pinned figures of a run's ``results.json``: ``{"check_id|subject": {status, measured, details...}}``.

    A record recorded twice for one (check id, subject) keeps every occurrence, in order.
    """
    out: dict[str, dict[str, Any]] = {}
    for rec in results.get("records", []):
        key = f"{rec['check_id']}|{rec['subject']}"
        entry: dict[str, Any] = {"status": rec["status"]}
        if not _is_timing(rec["check_id"]):
            entry["measured"] = rec.get("measured")
            details = rec.get("details") or {}
            pinned = {k: details[k] for k in PINNED_DETAILS if k in details}
            if pinned:
                entry["details"] = pinned
        n, unique = 1, key
        while unique in out:
            n += 1
            unique = f"{key}#{n}"
        out[unique] = entry
    return dict(sorted(out.items()))


def differences(golden: Mapping[str, Any], results: Mapping[str, Any]) -> list[str]:
    """Every way a run's figures differ from a golden file's (empty: the run reproduces it)."""
    want, got = golden.get("figures", {}), figures(results)
    out = []
    for key in sorted(set(want) | set(got)):
        if key not in got:
            out.append(f"{key}: in the golden file, not recorded by this run")
        elif key not in want:
            out.append(f"{key}: recorded by this run, not in the golden file ({got[key]['status']})")
        elif want[key] != got[key]:
            moved = [f"{k} {want[key].get(k)!r} -> {got[key].get(k)!r}" for k in ("status", "measured", "details")
                     if want[key].get(k) != got[key].get(k)]
            out.append(f"{key}: " + "; ".join(moved))
    return out


def make_golden(results: Mapping[str, Any], *, tier: str = "quick") -> dict[str, Any]:
    """The golden file's content for a run's results."""
    return {"version": GOLDEN_VERSION, "tier": tier,
            "note": "quick-tier reference figures; regenerate with `python -m nnconform.report golden --update RUN`",
            "figures": figures(results)}


def read_results(path: str | Path) -> dict[str, Any]:
    """A run's results (``results.json`` or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GoldenError(f"{path}: no such file (give a run folder or its results.json)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GoldenError(f"{path}: not a results.json: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise GoldenError(f"{path}: has no 'records' list")
    return data


def read_golden(path: str | Path) -> dict[str, Any]:
    """A golden file, with its version checked."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GoldenError(f"{path}: no golden file (write one with `python -m nnconform.report golden --update RUN`)") \
            from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GoldenError(f"{path}: not a golden file: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != GOLDEN_VERSION or not isinstance(data.get("figures"), dict):
        raise GoldenError(f"{path}: not a golden file of version {GOLDEN_VERSION}")
    return data


def write_golden(path: str | Path, results: Mapping[str, Any], *, tier: str = "quick") -> Path:
    """Write the golden file for ``results``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(make_golden(results, tier=tier), indent=1, sort_keys=True, allow_nan=False) + "\n")
    return path


def main(argv: Iterable[str] | None = None) -> int:
    """``golden --update RUN`` / ``golden --check RUN`` (exit 0: same, 1: differences, 2: unusable input)."""
    import argparse
    import sys

    from ..paths import source_checkout

    default = (source_checkout() or Path.cwd()) / "tests" / "golden" / "quick.json"
    parser = argparse.ArgumentParser(prog="python -m nnconform.report golden", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run's folder or its results.json")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--update", action="store_true", help="write the golden file from the run")
    mode.add_argument("--check", action="store_true", help="compare the run with the golden file")
    parser.add_argument("--file", default=str(default), help="the golden file (default: %(default)s)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        results = read_results(args.run)
        if args.update:
            path = write_golden(args.file, results, tier=results.get("config", {}).get("tier", "quick"))
            print(f"wrote {path}: {len(figures(results))} pinned records")
            return 0
        diffs = differences(read_golden(args.file), results)
    except GoldenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in diffs:
        print(line)
    print(f"{len(diffs)} difference(s) from {args.file}" if diffs else f"the run reproduces {args.file}")
    return 1 if diffs else 0
