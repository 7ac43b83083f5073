"""The model-update report section renders tables, plots and curve JSON from the criterion's records."""

from __future__ import annotations

import json

import numpy as np
import torch

from nnconform.records import CheckRecord, Status
from nnconform.report import ReportContext
from nnconform.report.updates import render_updates
from nnconform.updates.checks import check_update_accuracy, comparison_record
from nnconform.updates.compare import compare_predictions, weight_changes


def _records() -> list[CheckRecord]:
    recs = []
    for i, (ck, top1) in enumerate([("epoch1", 0.80), ("epoch2", 0.85), ("finetune", 0.86)]):
        recs.append(CheckRecord("updates.lineage_accuracy", f"a/{ck}", Status.PASS, measured=top1, criterion="updates",
                                details={"anchor": "a", "checkpoint": ck, "index": i, "top1": top1,
                                         "ci95": [top1 - 0.01, top1 + 0.01], "documented": top1, "smoke": False,
                                         "preprocess": {"resize": None}}))
    labels = np.repeat(np.arange(2), 500)
    pred_b, pred_t = labels.copy(), labels.copy()
    pred_b[:100] = 1
    cmp = compare_predictions("epoch2", "finetune", labels=labels, base_pred=pred_b, target_pred=pred_t,
                              classes=["x", "y"])
    rec = comparison_record("a-epoch2-finetune", cmp, weight_changes({"w": torch.zeros(3), "b": torch.ones(2)},
                                                                     {"w": torch.ones(3), "b": torch.ones(2)}))
    rec.details["kind"] = "latest"
    recs.append(rec)
    rng = np.random.default_rng(0)
    target = rng.random(1000) < 0.86
    for codec, label, nbytes, flips, claim in [("full", "full", 1000, 0, "transparent"),
                                               ("topk", "topk-0.01", 30, 5, "99%"),
                                               ("topk", "topk-0.1", 200, 1, None)]:
        recon = target.copy()
        recon[np.flatnonzero(target)[:flips]] = False
        recs.append(check_update_accuracy(f"a-epoch2-finetune/{label}", target_correct=target, recon_correct=recon,
                                          claim=claim, update_bytes=nbytes, full_bytes=1000, agreement=1 - flips / 1000,
                                          extra={"pair": "a-epoch2-finetune", "codec": codec, "label": label,
                                                 "top1": float(recon.mean()), "target_top1": float(target.mean())}))
    return recs


def test_section_renders_every_part(tmp_path):
    ctx = ReportContext(_records(), tmp_path, session=None)
    md = render_updates(ctx)
    assert "### Accuracy along each lineage" in md and "| epoch2 | 85.00% |" in md
    assert "### Checkpoint comparisons" in md and "| a-epoch2-finetune | latest |" in md
    assert "### Update codecs" in md and "| topk-0.01 | 30 | 0.0300 |" in md
    # rows are sorted by bytes; the unclaimed point says so
    assert md.index("| topk-0.01 |") < md.index("| topk-0.1 |") < md.index("| full | 1000 |")
    assert "| none |" in md
    for rel in ctx.artifacts.values():
        assert (tmp_path / rel).is_file(), rel
    curve = json.loads((tmp_path / "updates/curves/a-epoch2-finetune/topk.json").read_text())
    assert curve["results"]["bytes"] == [30, 200] and curve["name"] == "a-epoch2-finetune/topk"
    layers = json.loads((tmp_path / "updates/layers/a-epoch2-finetune.json").read_text())
    assert {l["name"] for l in layers["layers"]} == {"b", "w"}


def test_section_with_no_update_records_is_empty(tmp_path):
    assert render_updates(ReportContext([], tmp_path, session=None)) == ""
