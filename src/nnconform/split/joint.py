"""Joint against per-tensor coding of a multi-tensor cut (FCM's multi-layer features: FPN levels, skip connections).

The study codes every operating point at a multi-tensor cut twice: per tensor (a payload per crossing tensor, a
sample's bits summed) and jointly (the sample's tensors in ONE payload, see the "Joint payloads" section of
:mod:`nnconform.split.codecs`). Both are real payloads that were decoded back and run through the tail. This module
turns the two into records: the gate that every point codes jointly, with a table of bits per input and the task's
metric per mode, then the BD-rate (monotone PCHIP, :func:`nnconform.split.bdrate.bd_rate`) of each family's joint
curve against its per-tensor curve, FCM-style on the task's metric (mAP, top-1: higher is better; WER negated).
"""

from __future__ import annotations

from .. import kit
from ..records import CheckRecord, Status, gate
from .bdrate import bd_rate

CRITERION = "split"

kit.register_check("split.joint_coding", "at a multi-tensor cut every operating point also codes each sample's "
                   "tensors as ONE joint payload that decodes to every tensor's shape and runs through the tail "
                   "(bits per input and the task's metric, joint and per tensor)", "pass-fail")
kit.register_check("split.joint_bd_rate", "BD-rate of joint coding against per-tensor coding of one codec family at a "
                   "multi-tensor cut (negative: joint needs fewer bits for the same accuracy)", "info")


def _rec(rec: CheckRecord) -> CheckRecord:
    rec.criterion = CRITERION
    return rec


def _metric_label(study) -> str:
    return "top-1" if study.task.name == "classification" else study.task.metric_label


def comparison_rows(study, cut: str) -> list[dict]:
    """Per operating point at ``cut``: bits per input and the task's metric per tensor and joint, the joint saving
    (a fraction of the per-tensor bits; negative: joint is smaller) and any error of either mode."""
    rows = []
    for (c, pid), joint in study.joint.items():
        if c != cut:
            continue
        per = study.result(cut, pid)
        row = {"point": pid, "family": joint.point.family, "tensors": study.graph.cut(cut).num_tensors,
               "per_tensor_bits": per.bits_per_sample if per.ok else None,
               "joint_bits": joint.bits_per_sample if joint.ok else None,
               "per_tensor_metric": per.top1 if per.ok else None, "joint_metric": joint.top1 if joint.ok else None,
               "per_tensor_error": per.error, "joint_error": joint.error, "joint_error_kind": joint.error_kind}
        if per.ok and joint.ok:
            row["joint_saving"] = joint.bits_per_sample / per.bits_per_sample - 1.0
        rows.append(row)
    return rows


def joint_records(anchor: str, cut: str, study) -> list[CheckRecord]:
    """``split.joint_bd_rate`` (INFO) per codec family with two or more points in both modes, then the
    ``split.joint_coding`` gate: every point coded jointly (a broken protocol FAILs, a codec that raised is an
    ERROR), with the per-point table in its details."""
    rows = comparison_rows(study, cut)
    label = _metric_label(study)
    # BD-rate integrates log-rate over a quality rising with rate: a lower-is-better metric (WER) is negated
    sign = 1.0 if study.task.higher_is_better else -1.0
    records = []
    for fam in sorted({r["family"] for r in rows}):
        per = study.curve(cut, fam)
        joint = study.curve(cut, fam, mode="joint")
        if len(per) < 2 or len(joint) < 2:
            continue  # one operating point is no curve
        result = bd_rate([(b, sign * m) for b, m in per], [(b, sign * m) for b, m in joint])
        value = f"{result.value:+.1%}" if result.value is not None else f"undefined ({result.reason})"
        records.append(_rec(CheckRecord(
            "split.joint_bd_rate", f"{anchor}/{cut}/{fam}", Status.INFO, measured=result.value,
            expected="vs per-tensor", message=f"BD-rate of joint vs per-tensor coding ({label}): {value}",
            details={"family": fam, "metric": study.task.metric, "metric_label": label,
                     "higher_is_better": study.task.higher_is_better, "bd_rate": result.to_dict(),
                     "curve_per_tensor": per, "curve_joint": joint, "n": len(study.labels), "smoke": study.smoke})))
    broken = [r for r in rows if r["joint_error"] is not None]
    details = {"rows": rows, "tensors": study.graph.cut(cut).num_tensors,
               "shapes": [list(s) for s in study.graph.cut(cut).shapes], "metric_label": label,
               "ref_metric": study.ref_top1, "n": len(study.labels), "dataset": study.dataset, "smoke": study.smoke}
    if any(r["joint_error_kind"] == "exception" for r in broken) and \
            not any(r["joint_error_kind"] == "contract" for r in broken):
        first = next(r for r in broken if r["joint_error_kind"] == "exception")
        return records + [_rec(CheckRecord(
            "split.joint_coding", f"{anchor}/{cut}", Status.ERROR, measured=len(rows) - len(broken), expected=len(rows),
            message=f"{len(broken)} of {len(rows)} points failed to code jointly; {first['point']}: "
                    f"{first['joint_error']}", details=details,
            traceback=study.joint_result(cut, first["point"]).traceback))]
    saved = [r["joint_saving"] for r in rows if "joint_saving" in r]
    return records + [_rec(gate(
        "split.joint_coding", f"{anchor}/{cut}", not broken, measured=len(rows) - len(broken), expected=len(rows),
        message=("; ".join(f"{r['point']}: {r['joint_error']}" for r in broken[:3]) if broken else
                 f"{len(rows)} points coded jointly ({details['tensors']} tensors in one payload per input); "
                 f"joint bits vs per-tensor {min(saved):+.1%} .. {max(saved):+.1%}" if saved else
                 f"{len(rows)} points coded jointly"),
        details=details))]
