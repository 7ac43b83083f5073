"""The three criteria's gates on the ASR anchor (issue 13 item 4): each now reads the task's metric (WER, lower
is better), and a bad input fails it -- a planted degraded ASR checkpoint, a wrong documented change, a
calibration utterance that is also a test utterance, a decoded model with the wrong output frames, a feature
codec worse than the anchor codec at the same WER.

The end-to-end cases use the real anchor on the 300 held-out-voice utterances (generated once per module
with espeak-ng, about 10 s); the rest use tiny hand-made inputs.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from nnconform.anchors import get_anchor
from nnconform.data import load_dataset
from nnconform.evaluate import Evaluator

ANCHOR = "espeak-convctc"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("asr-criteria-cache")


@pytest.fixture(scope="module")
def heldout(cache):
    return load_dataset("espeak-synth", "test", cache_dir=cache)


class _Session:
    """The part of a ConformanceSession the updates engine reads; ``planted`` replaces a checkpoint's weights."""

    def __init__(self, cache, dataset, planted: dict | None = None) -> None:
        self.evaluator = Evaluator(cache)
        self._dataset = dataset
        self.planted = planted or {}

    def anchor(self, name):
        return get_anchor(name)

    def dataset(self, anchor, split="test"):
        return self._dataset

    def model(self, name, checkpoint=None):
        anchor = get_anchor(name)
        model = anchor.build(checkpoint) if checkpoint else anchor.build()
        if checkpoint in self.planted:
            model.load_state_dict(self.planted[checkpoint])
        return model.eval()

    def reference(self, name, checkpoint=None):
        anchor = get_anchor(name)
        return self.evaluator.evaluate(self.model(name, checkpoint), self._dataset, anchor.preprocess_for(checkpoint))


def _degraded(checkpoint: str, scale: float = 0.3) -> dict:
    """The checkpoint's weights with seeded Gaussian noise of ``scale`` x each tensor's std on every weight."""
    state = get_anchor(ANCHOR).state_dict(checkpoint)
    gen = torch.Generator().manual_seed(0)
    return {k: (v + scale * v.std() * torch.randn(v.shape, generator=gen)) if v.is_floating_point() and v.ndim > 1
            else v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# updates: lineage accuracy and documented change read the checkpoint's WER


@needs_espeak
def test_lineage_accuracy_reads_wer_and_a_degraded_checkpoint_fails(cache, heldout):
    from nnconform.updates.plan import load_plan
    from nnconform.updates.runs import UpdateRuns

    good = UpdateRuns(_Session(cache, heldout), load_plan()).lineage_accuracy(ANCHOR, "epoch16", 3)
    rec = good.records[0]
    assert rec.passed, rec.message
    assert rec.expected == get_anchor(ANCHOR).checkpoint("epoch16").wer and "WER" in rec.message
    bad = UpdateRuns(_Session(cache, heldout, {"epoch16": _degraded("epoch16")}), load_plan()).lineage_accuracy(
        ANCHOR, "epoch16", 3)
    rec = bad.records[0]
    assert not rec.passed and rec.check_id == "updates.lineage_accuracy", rec.message
    assert rec.measured > rec.expected + get_anchor(ANCHOR).tolerance  # worse WER, named as such
    assert "WER" in rec.message and "vs documented" in rec.message


@needs_espeak
def test_checkpoint_comparison_on_wer_and_a_wrong_change_fails(cache, heldout):
    from nnconform.updates.plan import LineagePair, load_plan
    from nnconform.updates.runs import UpdateRuns

    pair = LineagePair(ANCHOR, "epoch8", "epoch16", "span")
    out = UpdateRuns(_Session(cache, heldout), load_plan()).comparison(pair)
    info, change = out.records
    assert info.check_id == "updates.comparison" and info.details["metric"] == "wer"
    assert info.measured < 0 and "WER" in info.message  # training lowered the WER
    assert change.check_id == "updates.documented_change" and change.passed, change.message
    # the target replaced by a degraded copy: the measured change no longer matches the manifest's
    planted = UpdateRuns(_Session(cache, heldout, {"epoch16": _degraded("epoch16")}), load_plan()).comparison(pair)
    bad = planted.records[1]
    assert bad.check_id == "updates.documented_change" and not bad.passed, bad.message


# ---------------------------------------------------------------------------------------------
# compression: calibration on speech, the probe output shape, the scenario-1 table


def _speech(name, split, waves, texts):
    from nnconform.speech.data import make_dataset

    return make_dataset(name, split, [torch.as_tensor(w, dtype=torch.int16) for w in waves], texts,
                        [f"u{i}" for i in range(len(texts))], "test fixture")


def test_calibration_overlap_check_on_speech_fails_a_shared_utterance():
    from nnconform.compress.calibration import CalibrationSpec
    from nnconform.compress.checks import check_calibration

    rng = np.random.default_rng(0)
    train = [rng.integers(-1000, 1000, 1600) for _ in range(4)]
    test = [rng.integers(-1000, 1000, 1600) for _ in range(3)]
    pool = _speech("s", "train", train, ["a b"] * 4)
    spec = CalibrationSpec("s", "train", (0, 1), "first two")
    ok = check_calibration(spec, pool, _speech("s", "test", test, ["a b"] * 3))
    assert ok.passed and ok.measured == 0, ok.message
    leaked = _speech("s", "test", [*test, train[1]], ["a b"] * 4)  # a training utterance also in the test set
    bad = check_calibration(spec, pool, leaked)
    assert not bad.passed and bad.measured == 1, bad.message


def test_asr_probe_shape_is_the_anchors_own_and_a_wrong_frame_count_fails():
    from nnconform.compress.checks import check_output
    from nnconform.compress.runner import AnchorUnderTest, _probe_shape
    from nnconform.tasks import get_task

    anchor = get_anchor(ANCHOR)
    model = anchor.build_architecture().eval()
    aut = AnchorUnderTest(ANCHOR, model, tuple(anchor.input_shape), anchor.num_classes, (), torch.zeros(1),
                          ("a",), task=get_task("asr", vocabulary=[str(i) for i in range(29)]))
    x = torch.randn(3, *anchor.input_shape)
    expected = _probe_shape(aut, x)
    assert expected == (3, 151, 29)
    assert check_output("s", torch.zeros(expected), expected).passed
    halved = torch.zeros(3, 75, 29)  # a decoded model that drops every other output frame
    rec = check_output("s", halved, expected)
    assert not rec.passed and "(3, 75, 29)" in rec.message


def _accuracy_record(anchor, method, label, config, nbytes, wer, delta_ci, best, *, task="asr"):
    from nnconform.records import CheckRecord, Status

    ref = 0.40
    metrics = {"acc": wer, "acc_ref": ref, "delta": wer - ref, "delta_ci95": list(delta_ci), "bytes": nbytes,
               "bytes_ref": 640_000, "params_ref": 155_933, "macs_ref": 1, "macs": 1, "params": 155_933,
               "compression_ratio": 640_000 / nbytes, "best_tier": best, "task": task,
               "metric_label": "WER" if task == "asr" else "top-1 accuracy", "higher_is_better": task != "asr"}
    return CheckRecord("compression.accuracy", f"{anchor}-{method}-{label}", Status.INFO, criterion="compression",
                       details={"anchor": anchor, "method": method, "label": label, "config": config,
                                "metrics": metrics})


def test_scenario1_table_from_results():
    from nnconform.compress.curves import case_rows
    from nnconform.report.scenario1 import qp_sweep, scenario1_tables

    recs = [_accuracy_record("asr-x", "nnc", "qp-20", {"qp": -20}, 80_000, 0.45, (0.03, 0.07), None),
            _accuracy_record("asr-x", "fp16", "", {}, 320_000, 0.40, (0.0, 0.0), "transparent"),
            _accuracy_record("asr-x", "nnc", "qp-38", {"qp": -38}, 150_000, 0.401, (-0.005, 0.007), "99%"),
            _accuracy_record("img", "fp16", "", {}, 320_000, 0.9, (0.0, 0.0), "transparent", task="classification")]
    rows = case_rows(recs)
    text = "\n".join(scenario1_tables(rows))
    assert "scenario 1: asr-x" in text and "scenario 1: img" not in text  # only ASR anchors
    assert "| 155933 | 640000 | 40.00% |" in text  # numParam, sizeAnc, werAnc
    assert "| fp16 | - | 320000 | 2.00x | 40.00% | +0.00 [+0.00, +0.00] | transparent |" in text
    assert "| nnc | qp-20 | 80000 | 8.00x | 45.00% | +5.00 [+3.00, +7.00] | none |" in text
    # TR 26.847 Table 5.2.14-1's shape: QP, size, WER; QPs ordered
    assert [r[:3] for r in qp_sweep([r for r in rows if r["anchor"] == "asr-x"])] == [
        [-38, 150_000, "40.10%"], [-20, 80_000, "45.00%"]]
    assert scenario1_tables([r for r in rows if r["anchor"] == "img"]) == []


# ---------------------------------------------------------------------------------------------
# split: sizes per second of audio, BD-rate on a lower-is-better metric


def test_sizes_per_second_of_audio_from_the_hop_length():
    from nnconform.split.checks import audio_seconds_per_input, per_second

    anchor = get_anchor(ANCHOR)
    seconds = audio_seconds_per_input(anchor)
    assert seconds == pytest.approx((301 - 1) * 160 / 16_000)  # 3 s: 301 frames 10 ms apart
    assert per_second({"fp32": 4 * 128 * 151}, seconds) == {"fp32": pytest.approx(4 * 128 * 151 / 3.0)}
    assert audio_seconds_per_input(get_anchor("fmnist-lenet5")) is None  # images: no audio axis


def test_bd_rate_on_wer_is_negative_for_the_cheaper_codec():
    from nnconform.split.bdrate import bd_rate
    from nnconform.split.checks import oriented_curve

    anchor = [(1000, 0.60), (2000, 0.50), (4000, 0.45), (8000, 0.43)]  # bits per sample, WER
    half = [(r / 2, w) for r, w in anchor]  # the same WER at half the bits
    double = [(r * 2, w) for r, w in anchor]
    assert bd_rate(oriented_curve(anchor), oriented_curve(half)).value == pytest.approx(-0.5)
    assert bd_rate(oriented_curve(anchor), oriented_curve(double)).value == pytest.approx(1.0)
    # taken on WER as if it were accuracy, the curve collapses: no BD-rate at all
    assert bd_rate(anchor, half).value is None


# ---------------------------------------------------------------------------------------------
# updates: a payload of a speech anchor carries its log-mel preprocessing


def test_update_payload_carries_log_mel_preprocessing_and_a_bad_table_is_refused():
    from nnconform.kit.errors import PayloadError
    from nnconform.speech.features import SpeechPreprocess
    from nnconform.updates.codec import apply_update, encode_update, make_codec
    from nnconform.updates.payload import pack_payload, unpack_payload

    anchor = get_anchor(ANCHOR)
    base, target = anchor.state_dict("epoch16"), anchor.state_dict("finetune")
    payload = encode_update(make_codec("zstd-delta"), base, target, preprocess=anchor.preprocess_for("finetune"))
    decoded = apply_update(base, payload)
    assert isinstance(decoded.preprocess, SpeechPreprocess) and decoded.preprocess == anchor.preprocess
    parsed = unpack_payload(payload)
    from dataclasses import replace

    bad = replace(parsed.header, preprocess={**parsed.header.preprocess, "hop_lenght": 160})  # a misspelt field
    with pytest.raises(PayloadError, match="not a valid Preprocess.*hop_lenght"):
        apply_update(base, pack_payload(bad, parsed.body))


def test_speech_sizes_scale_with_duration_not_as_a_square_image():
    from nnconform.split import SplitGraph, resolution_scaling

    anchor = get_anchor(ANCHOR)
    graph = SplitGraph.trace(anchor.build_architecture().eval(), tuple(anchor.input_shape))
    sizes = resolution_scaling(graph, [101, 301, 501])  # 1, 3 and 5 s of audio
    assert sizes["blocks"] == {"101": 128 * 51, "301": 128 * 151, "501": 128 * 251}  # stride-2 stem
    assert sizes["flatten"]["301"] == 40 * 301  # the catalogue's size at the anchor's own input
    assert sizes["head"]["501"] == 29 * 251
