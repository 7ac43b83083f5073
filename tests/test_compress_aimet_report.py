"""The compression report's AIMET parts: MAC-axis curves, target vs achieved, CLE/AdaRound/encodings notes."""

from __future__ import annotations

from nnconform.compress.curves import case_rows, quant_notes, rate_curves, target_table, zoo_table
from nnconform.records import CheckRecord, Status


def _record(method, label, config, macs, top1=0.9, metadata=None, achieved=None):
    metrics = {"acc": top1, "acc_ref": 0.91, "bytes": 1000 - macs // 10, "bytes_ref": 4000, "params": 10,
               "params_ref": 20, "macs": macs, "macs_ref": 1000, "compression_ratio": 4.0, "delta": top1 - 0.91}
    details = {"anchor": "a", "method": method, "label": label, "config": config, "metrics": metrics,
               "method_metadata": metadata or {}, "achieved_ratio": achieved}
    return CheckRecord("compression.accuracy", f"a/{method}/{label}", Status.INFO, details=details)


def test_mac_targeting_points_get_a_mac_axis_and_fine_tuned_points_their_own_series():
    recs = [_record("aimet-ssvd", "0.75", {"target_ratio": 0.75, "cost_metric": "mac"}, 740, achieved=0.74),
            _record("aimet-ssvd", "0.6", {"target_ratio": 0.6, "cost_metric": "mac"}, 700, achieved=0.70),
            _record("aimet-ssvd", "0.6+ft", {"target_ratio": 0.6, "cost_metric": "mac", "finetune_epochs": 5}, 600,
                    top1=0.905, achieved=0.6)]
    rows = case_rows(recs)
    curves = {c.method: c for c in rate_curves(rows, rate="mac_ratio")}
    assert set(curves) == {"aimet-ssvd", "aimet-ssvd + fine-tuned"}
    assert curves["aimet-ssvd"].results["mac_ratio"] == [0.7, 0.74]
    table = target_table(rows)
    assert [r[3:6] for r in table] == [["0.75", "0.740", "as compressed"], ["0.6", "0.700", "as compressed"],
                                       ["0.6", "0.600", "5 epochs"]]


def test_quant_notes_say_where_cle_is_inert_and_which_adaround_ran():
    recipe = {"recipe": "aimet-default", "iterations": 15000, "aimet_default_iterations": 15000, "samples": 2000}
    reduced = {"recipe": "reduced", "iterations": 200, "aimet_default_iterations": 15000, "samples": 256}
    meta = {"cle_summary": "CLE inert (conv-ReLU6-conv pairs are not scaled since aimet-torch 2.4): ...",
            "encodings_bytes": 900, "encodings_share": 0.2, "encodings_counted": False}
    rows = case_rows([
        _record("aimet-quant", "w8a8", {"param_bw": 8, "output_bw": 8}, 1000, metadata=meta),
        _record("aimet-quant", "w4a8-adaround-reduced", {"param_bw": 4, "output_bw": 8}, 1000, top1=0.5,
                metadata={**meta, "adaround": reduced}),
        _record("aimet-quant", "w4a8-adaround", {"param_bw": 4, "output_bw": 8}, 1000, top1=0.9,
                metadata={**meta, "adaround": recipe})])
    notes = quant_notes(rows)
    assert notes[0][2].startswith("CLE inert") and "not counted" in notes[0][4] and "20%" in notes[0][4]
    assert notes[1][3].startswith("reduced: 200 iterations") and notes[2][3].startswith("aimet-default: 15000")
    zoo = zoo_table(rows)
    assert zoo[0][3].startswith("90.00%") and "reduced" not in zoo[0][3]  # the recipe point stands for W4A8
