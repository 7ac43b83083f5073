"""Split inference (issue 5): split points, head and tail, intermediate data, feature codecs.

For every anchor:

* cuts are discovered from the ``torch.fx`` graph: single-tensor cuts at block boundaries with
  module names (``layer2``, ``features.6``), and multi-tensor cuts inside residual blocks with
  their number of branches; the committed catalogue the case ids come from matches the trace;
* ``tail(head(x))`` is bit-identical to ``model(x)`` at every cut; heads and tails export to
  ONNX and run in onnxruntime within 1e-5 of torch;
* the intermediate data at every cut is documented (shapes, bytes as fp32/fp16/int8, zeros,
  entropy after 8-bit quantisation, channel statistics, head/tail MACs and parameters, sizes at
  several input resolutions), from one forward pass per batch;
* every feature-codec operating point (``anchors/split.toml``) codes each sample on its own;
  bits are lengths of real payloads that were decoded and run through the tail; accuracy is
  gated with the shared non-inferiority tiers, BD-rates are taken against the 8-bit anchor
  codec's curve, encode/decode/head/tail latencies are measured with pytest-benchmark;
* the split minimising end-to-end latency is chosen per device/server/link scenario, and the
  pairs meeting 3GPP TS 22.261's split image recognition figure are listed.

The checks live in :mod:`nnconform.split.checks`, the cases and the run's state in
:mod:`nnconform.split.runs`; this file parametrizes, calls, records and asserts. The cases run torch
on one thread (restored afterwards): per-image latencies are per-core figures, and a shared machine
does not stall in OpenMP barriers.
"""

from __future__ import annotations

import pytest
import torch

from nnconform import kit, proposal
from nnconform.anchors import get_anchor, list_anchors
from nnconform.split import checks, joint, node_table
from nnconform.split.catalogue import CatalogueEntry, entry
from nnconform.split.plan import load_plan
from nnconform.split.runs import SplitRuns, coded_cases, coded_cuts, first_sample, input_numel, torch_threads

pytestmark = pytest.mark.criterion("split")

PLAN = load_plan().with_proposals(proposal.split_points())
ANCHORS = list_anchors()


def _marks(run_tier: str):
    return [pytest.mark.tier(run_tier)] if run_tier != "quick" else []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.fixturenames
    run_tier = metafunc.config.getoption("--nnc-tier", "default")
    if "split_case" in names:
        params = [pytest.param(a, case, id=case.id, marks=_marks(case.run_tier))
                  for a in ANCHORS for case in coded_cases(PLAN, a, run_tier)]
        metafunc.parametrize(("anchor_name", "split_case"), params)
    elif "split_cut" in names:
        params = [pytest.param(a, cut, id=f"{a}-{cut}", marks=_marks(cut_tier))
                  for a in ANCHORS for cut, cut_tier in coded_cuts(PLAN, a, run_tier).items()]
        metafunc.parametrize(("anchor_name", "split_cut"), params)
    elif "split_multi_cut" in names:  # coded cuts that hand over several tensors: coded per tensor and jointly
        params = [pytest.param(a, cut, id=f"{a}-{cut}", marks=_marks(cut_tier))
                  for a in ANCHORS for cut, cut_tier in coded_cuts(PLAN, a, run_tier).items() if cut in _multi(a)]
        metafunc.parametrize(("anchor_name", "split_multi_cut"), params)


def _multi(anchor_name: str) -> tuple[str, ...]:
    """The anchor's multi-tensor cuts in the committed catalogue (none for an anchor it does not list)."""
    try:
        return entry(anchor_name).multi
    except kit.PlanError:
        return ()


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def split_runs(request: pytest.FixtureRequest, nnc_config) -> SplitRuns:
    """The criterion's state for the run (graphs, studies, latencies)."""
    return kit.criterion_state(request.config, "split", lambda: SplitRuns(PLAN, nnc_config.tier))


@pytest.fixture
def split_model(nnc_session, split_runs, load_or_skip):
    """``(model, graph, trained)`` of an anchor (random weights when the file is absent; a corrupt file fails the
    case with an ``anchor.weights_sha256`` FAIL record)."""
    return lambda anchor_name: load_or_skip(split_runs.model, nnc_session, anchor_name, subject=anchor_name)


@pytest.fixture
def split_study(nnc_session, split_runs, load_or_skip):
    """The anchor's study (skips with the exact message when weights or data are missing)."""
    return lambda anchor_name: load_or_skip(split_runs.study, nnc_session, anchor_name, subject=anchor_name)


def _input(anchor_name: str) -> torch.Tensor:
    return torch.randn((1, *get_anchor(anchor_name).input_shape), generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------
# 1. The catalogue, head and tail


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_split_catalogue(anchor_name, split_model, nnc_record):
    """Cuts are found in the traced graph (see :func:`nnconform.split.checks.check_catalogue`)."""
    model, graph, trained = split_model(anchor_name)
    rec = nnc_record(checks.check_catalogue(anchor_name, model, graph, PLAN.cuts.get(anchor_name, {}), trained=trained))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_split_catalogue_current(anchor_name, split_model, nnc_record):
    """The committed catalogue the case ids were collected from matches a fresh trace."""
    _, graph, _ = split_model(anchor_name)
    try:
        committed, missing = entry(anchor_name), ""
    except kit.PlanError as exc:
        committed, missing = None, str(exc)
    rec = nnc_record(checks.check_catalogue_current(anchor_name, committed, CatalogueEntry.from_graph(anchor_name, graph),
                                                    missing))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_split_head_tail_identity(anchor_name, split_model, split_runs, nnc_record):
    """``tail(head(x))`` is bit-identical to ``model(x)`` at every cut in the run tier's scope."""
    model, graph, trained = split_model(anchor_name)
    cuts = split_runs.cut_scope(graph, anchor_name, split_runs.run.identity)
    rec = nnc_record(checks.check_head_tail_identity(anchor_name, model, graph, cuts, _input(anchor_name),
                                                     trained=trained))
    assert rec.passed, rec.message


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_split_onnx(anchor_name, split_model, split_runs, nnc_record):
    """Heads and tails of every cut in the run tier's scope agree with torch in onnxruntime."""
    _, graph, trained = split_model(anchor_name)
    cuts = split_runs.cut_scope(graph, anchor_name, split_runs.run.onnx)
    rec = nnc_record(checks.check_onnx(anchor_name, graph, cuts, _input(anchor_name), trained=trained))
    assert rec.passed, rec.message


@pytest.mark.parametrize("published", list(PLAN.published.values()), ids=lambda p: p.name)
def test_split_published_sizes(published, nnc_record):
    """The catalogue reproduces published intermediate-data sizes (torchvision ResNet-50 at 224x224)."""
    rec = nnc_record(checks.check_published_sizes(published))
    assert rec.passed, rec.message


# ---------------------------------------------------------------------------------------------
# 2. Intermediate data


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_split_intermediate_data(anchor_name, split_runs, nnc_session, nnc_record, load_or_skip):
    """Documents what crosses every cut and checks the figures add up (without the anchor's weights or data, the
    structure is documented from the architecture)."""
    inputs = load_or_skip(split_runs.intermediate_inputs, nnc_session, anchor_name, subject=anchor_name)
    records = [nnc_record(r) for r in checks.intermediate_data_records(get_anchor(anchor_name), **inputs)]
    assert records[-1].passed, records[-1].message


# ---------------------------------------------------------------------------------------------
# 3. Feature codecs: rate and accuracy


def test_split_codec_accuracy(anchor_name, split_case, split_study, nnc_record):
    """The operating point codes every sample on its own (see :func:`nnconform.split.checks.codec_records`)."""
    study = split_study(anchor_name)
    records = [nnc_record(r) for r in checks.codec_records(anchor_name, split_case.cut, split_case.point, study)]
    failed = [r for r in records if not r.passed]
    if failed:
        pytest.fail("; ".join(r.message for r in failed), pytrace=False)


def test_split_bd_rate(anchor_name, split_cut, split_study, nnc_record):
    """BD-rate of every codec family against the anchor family's curve at this cut."""
    study = split_study(anchor_name)
    records = [nnc_record(r) for r in checks.bd_rate_records(anchor_name, split_cut, study, PLAN.anchor_family)]
    assert records[-1].passed, records[-1].message


def test_split_joint_coding(anchor_name, split_multi_cut, split_study, nnc_record):
    """A multi-tensor cut coded jointly (one payload per input) against per tensor: bits, the task's metric and the
    BD-rate per codec family (see :func:`nnconform.split.joint.joint_records`)."""
    study = split_study(anchor_name)
    records = [nnc_record(r) for r in joint.joint_records(anchor_name, split_multi_cut, study)]
    assert records[-1].passed, records[-1].message


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_split_node_table(anchor_name, split_model, split_runs, nnc_record):
    """TR 26.847 node table (branches, tensor shapes, bytes per input at every cut) and the input-size scaling
    table of the coded cuts, checked against the real tensors (no weights or data needed)."""
    _, graph, trained = split_model(anchor_name)
    anchor = get_anchor(anchor_name)
    sizes = PLAN.resolutions.get(anchor.dataset, (anchor.input_shape[-1],))
    coded = list(coded_cuts(PLAN, anchor_name, split_runs.run_tier))
    rec = nnc_record(node_table.check_node_table(anchor_name, graph, sizes, coded, trained=trained))
    assert rec.passed, rec.message


# ---------------------------------------------------------------------------------------------
# 4. Latency (pytest-benchmark), selection and the 3GPP figure


def _timed(benchmark, split_runs: SplitRuns, fn, *args):
    return benchmark.pedantic(fn, args=args, rounds=split_runs.run.timing_rounds, iterations=1, warmup_rounds=1)


@pytest.fixture
def split_sample(nnc_session, load_or_skip):
    """The anchor's first evaluation image, preprocessed (batch of one)."""

    def get(anchor_name: str) -> torch.Tensor:
        anchor = get_anchor(anchor_name)
        dataset = load_or_skip(nnc_session.dataset, anchor, subject=anchor_name)
        x, _ = next(dataset.subset([0]).batches(anchor.preprocess, 1))
        return x

    return get


@pytest.mark.parametrize("anchor_name", ANCHORS)
def test_split_model_latency(anchor_name, benchmark, split_runs, split_model, split_sample):
    """Whole-model latency of one image on this machine (the device-only and server-only bounds)."""
    model, _, _ = split_model(anchor_name)
    x = split_sample(anchor_name)
    benchmark.group = f"split {anchor_name}"
    with torch.inference_mode():
        y = _timed(benchmark, split_runs, model, x)
    anchor = get_anchor(anchor_name)
    if anchor.task == "classification":
        assert y.shape == (1, anchor.num_classes)
    elif anchor.task == "detection":  # [1, anchor points, class scores + 4 box coordinates]
        assert y.ndim == 3 and y.shape[0] == 1 and y.shape[-1] == anchor.num_classes + 4, tuple(y.shape)
    else:  # ASR: [1, frames, vocabulary]
        assert y.shape[0] == 1 and y.shape[-1] == anchor.num_classes, tuple(y.shape)


def test_split_head_latency(anchor_name, split_cut, benchmark, split_runs, split_model, split_sample):
    """Head latency of one image at this cut; the head hands over the catalogued shape."""
    _, graph, _ = split_model(anchor_name)
    x = split_sample(anchor_name)
    benchmark.group = f"split {anchor_name}/{split_cut}"
    with torch.inference_mode():
        y = _timed(benchmark, split_runs, graph.head(split_cut), x)
    assert tuple(tuple(t.shape) for t in first_sample(y)) == graph.cut(split_cut).shapes


def test_split_tail_latency(anchor_name, split_cut, benchmark, split_runs, split_model, split_sample):
    """Tail latency of one image at this cut; the tail returns the model's logits."""
    model, graph, _ = split_model(anchor_name)
    x = split_sample(anchor_name)
    benchmark.group = f"split {anchor_name}/{split_cut}"
    with torch.inference_mode():
        mid = graph.head(split_cut)(x)
        y = _timed(benchmark, split_runs, graph.tail(split_cut), *(mid if isinstance(mid, tuple) else (mid,)))
        assert torch.equal(y, model(x))


def test_split_encode_latency(anchor_name, split_case, benchmark, split_runs, split_model, split_sample):
    """Encode latency of one image's intermediate tensor with this operating point."""
    _, graph, _ = split_model(anchor_name)
    with torch.inference_mode():
        sent = first_sample(graph.head(split_case.cut)(split_sample(anchor_name)))
    codec = split_case.point.build()
    benchmark.group = f"split {anchor_name}/{split_case.cut} encode"
    payloads = _timed(benchmark, split_runs, lambda: [codec.encode(t) for t in sent])  # one per crossing tensor
    assert all(isinstance(p, bytes) for p in payloads) and payloads == [codec.encode(t) for t in sent]


def test_split_decode_latency(anchor_name, split_case, benchmark, split_runs, split_model, split_sample):
    """Decode latency of one image's payload with this operating point."""
    _, graph, _ = split_model(anchor_name)
    with torch.inference_mode():
        sent = first_sample(graph.head(split_case.cut)(split_sample(anchor_name)))
    codec = split_case.point.build()
    payloads = [codec.encode(t) for t in sent]
    benchmark.group = f"split {anchor_name}/{split_case.cut} decode"
    decoded = _timed(benchmark, split_runs, lambda: [codec.decode(p) for p in payloads])
    assert [(d.shape, d.dtype) for d in decoded] == [(t.shape, t.dtype) for t in sent]


@pytest.mark.parametrize(("anchor_name", "scenario"),
                         [pytest.param(a, s, id=f"{a}-{s.name}") for a in ANCHORS for s in PLAN.scenarios])
def test_split_selection(anchor_name, scenario, split_study, split_runs, nnc_session, nnc_record, load_or_skip):
    """Neurosurgeon-style selection on latencies this case measures (once per anchor), serially or under xdist."""
    study = split_study(anchor_name)
    timings = load_or_skip(split_runs.latency_table, nnc_session, anchor_name, subject=anchor_name)
    candidates = checks.candidates(study, timings, input_numel(get_anchor(anchor_name)))
    rec = nnc_record(checks.check_selection(anchor_name, scenario, study, candidates))
    assert rec.passed, rec.message


@pytest.mark.parametrize(("anchor_name", "kpi"),
                         [pytest.param(a, k, id=f"{a}-{k.name}") for a in ANCHORS for k in PLAN.kpis.values()])
def test_split_kpi(anchor_name, kpi, split_study, nnc_record):
    """Which coded (cut, codec) pairs meet 3GPP TS 22.261's split image recognition figure."""
    rec = nnc_record(checks.check_kpi(anchor_name, kpi, split_study(anchor_name)))
    assert rec.passed, rec.message
