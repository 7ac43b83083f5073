"""Joint against per-tensor coding of one multi-tensor cut, measured outside a conformance run.

The conformance suite codes jointly the multi-tensor cuts ``anchors/split.toml`` names (the detector's FPN cut
``smooth5``); this script measures any cut of any anchor the same way (``run_study`` + ``joint_records``), e.g. a
ResNet skip cut no run tier codes::

    .venv/bin/python benchmarks/split_joint.py --anchor fmnist-resnet8 --cut layer2.relu1 --tier quick
    .venv/bin/python benchmarks/split_joint.py --anchor fmnist-mosaic-det --cut smooth5 --tier quick --json out.json

The operating points are the plan's of the run tier (reference codecs only), the samples the run tier's count for
the anchor's dataset. Prints a table per point (bits per input and the task's metric, per tensor and joint) and
the BD-rate of joint vs per-tensor per codec family.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def measure(anchor_name: str, cut: str, tier: str, samples: int | None = None, batch: int = 100) -> dict:
    """The study of ``cut`` with the run tier's points; returns the joint records as plain dicts."""
    from nnconform.anchors import get_anchor
    from nnconform.data import load_dataset
    from nnconform.split.cuts import SplitGraph
    from nnconform.split.joint import joint_records
    from nnconform.split.plan import load_plan
    from nnconform.split.study import run_study

    plan = load_plan()
    anchor = get_anchor(anchor_name)
    model = anchor.build()
    dataset = load_dataset(anchor.dataset, "test")
    n = samples if samples is not None else plan.run(tier).samples_for(dataset.name)
    if n and len(dataset) > n:
        dataset = dataset.subset(range(n))
    graph = SplitGraph.trace(model, anchor.input_shape)
    points = [p for p in plan.points_for(tier) if p.applies_to(anchor_name)]
    start = time.perf_counter()
    study = run_study(anchor_name, graph, dataset.batches(anchor.preprocess, batch), coded={cut: points},
                      task=getattr(dataset, "task", None) or anchor.task, dataset=f"{dataset.name}/{dataset.split}")
    seconds = time.perf_counter() - start
    records = joint_records(anchor_name, cut, study)
    return {"anchor": anchor_name, "cut": cut, "tier": tier, "samples": len(study.labels), "seconds": seconds,
            "shapes": [list(s) for s in graph.cut(cut).shapes], "reference_metric": study.ref_top1,
            "records": [{"check_id": r.check_id, "subject": r.subject, "status": r.status.value,
                         "measured": r.measured, "message": r.message, "details": r.details} for r in records]}


def main(argv=None) -> int:
    """CLI: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--anchor", required=True)
    ap.add_argument("--cut", required=True)
    ap.add_argument("--tier", default="quick")
    ap.add_argument("--samples", type=int, default=None, help="default: the run tier's count for the dataset")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the records here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = measure(args.anchor, args.cut, args.tier, args.samples)
    gate_rec = out["records"][-1]
    label = gate_rec["details"]["metric_label"]
    print(f"{out['anchor']} / {out['cut']}: {len(out['shapes'])} tensors {out['shapes']}, {out['samples']} samples, "
          f"uncoded {label} {out['reference_metric']:.4f} ({out['seconds']:.0f} s)")
    print(f"{'point':18} {'bits/input per-tensor':>22} {'joint':>10} {'saving':>8} {label + ' per-tensor':>16} "
          f"{'joint':>8}")
    for r in gate_rec["details"]["rows"]:
        def f(v, fmt):
            return format(v, fmt) if v is not None else "error"
        print(f"{r['point']:18} {f(r['per_tensor_bits'], '22.0f')} {f(r['joint_bits'], '10.0f')} "
              f"{format(r['joint_saving'], '+8.1%') if 'joint_saving' in r else '':>8} "
              f"{f(r['per_tensor_metric'], '16.4f')} {f(r['joint_metric'], '8.4f')}")
    for rec in out["records"][:-1]:
        print(f"{rec['subject']}: {rec['message']}")
    print(f"{gate_rec['check_id']}: {gate_rec['status']}: {gate_rec['message']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)
    return 0 if gate_rec["status"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
