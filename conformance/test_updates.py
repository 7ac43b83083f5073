"""Model updates (issue 4): comparing the checkpoints of a lineage, and coding the updates.

For each anchor lineage (the zoo's epochs plus the fine-tuned update; torchvision ResNet-50
IMAGENET1K_V1 -> V2, whose preprocessing changes with the weights):

* every checkpoint reproduces its documented top-1, and every pair's documented change is
  reproduced (paired test, bootstrap CI, agreement, per-class and per-layer changes);
* every update codec operating point (``anchors/updates.toml``) yields a payload that decodes,
  on its own base only, to exactly the state its header pins (bit-exact for lossless codecs);
* the model rebuilt from the update is non-inferior to the target checkpoint at the claimed
  accuracy tier; sizes are lengths of real payload bytes, ratios are to the full checkpoint;
* damaged payloads and wrong bases are refused; encode and decode are timed by pytest-benchmark.

The cases and their run tiers come from :mod:`nnconform.updates.cases`, the work from
:class:`nnconform.updates.runs.UpdateRuns`; this file parametrizes, records and asserts.
"""

from __future__ import annotations

import pytest

from nnconform import kit, proposal
from nnconform.records import CheckRecord, Status
from nnconform.updates import CodecUnavailable, apply_update, encode_update
from nnconform.updates.cases import (all_pairs, artifact_cases, checkpoint_cases, codec_cases, latest_pair_cases,
                                     nnc_lineage_cases, pair_cases)
from nnconform.updates.plan import lineages, load_plan
from nnconform.updates.runs import UpdateRuns

pytestmark = pytest.mark.criterion("updates")

PLAN = load_plan().with_proposals(proposal.update_points())
UPDATE_ARTIFACTS = proposal.update_artifacts()
LINEAGES = lineages()
PAIRS = all_pairs(LINEAGES)


def _params(cases):
    """``pytest.param`` per case; the quick run tier needs no mark (unmarked cases run in every tier)."""
    return [pytest.param(*c.args, id=c.id, marks=[] if c.run_tier == kit.RUN_TIERS[0] else [pytest.mark.tier(c.run_tier)])
            for c in cases]


@pytest.fixture(scope="session")
def updates(request, nnc_session) -> UpdateRuns:
    """The run's update payloads and case pipelines."""
    return kit.criterion_state(request.config, "updates", lambda: UpdateRuns(nnc_session, PLAN))


@pytest.fixture
def available(nnc_record, load_or_skip):
    """Call the engine; a missing weights file, dataset or codec package skips the case with its message."""
    def call(fn, *args, subject: str):
        try:
            return load_or_skip(fn, *args, subject=subject)
        except CodecUnavailable as exc:
            nnc_record(CheckRecord("input.available", subject, Status.SKIP, message=str(exc)))
            pytest.skip(str(exc))

    return call


@pytest.fixture
def run(available, nnc_record):
    """Run a case of the engine and record its records (a case that stops short skips with its reason)."""
    def call(fn, *args, subject: str):
        result = available(fn, *args, subject=subject)
        for rec in result.records:
            nnc_record(rec)
        if result.skip:
            pytest.skip(result.skip)
        return result

    return call


# ---------------------------------------------------------------------------------------------
# Comparing checkpoints


@pytest.mark.parametrize("anchor_name,checkpoint", _params(checkpoint_cases(PLAN, LINEAGES)))
def test_lineage_accuracy(anchor_name, checkpoint, updates, run):
    """Each checkpoint of a lineage reproduces the top-1 its manifest documents (within the anchor's tolerance;
    on the offline ImageNet sample set, a smoke check: the documented value lies in the 95% Wilson interval)."""
    result = run(updates.lineage_accuracy, anchor_name, checkpoint, LINEAGES[anchor_name].index(checkpoint),
                 subject=f"{anchor_name}/{checkpoint}")
    assert not result.failed, result.message


@pytest.mark.parametrize("anchor_name,pair", _params(pair_cases(PLAN, PAIRS)))
def test_checkpoint_comparison(anchor_name, pair, updates, run):
    """A pair's accuracy change (paired bootstrap CI, McNemar, agreement, per-class and per-layer changes) is
    measured, and the change the manifest documents is reproduced: within the anchor's tolerance, or, on a
    smoke set, inside the 95% interval of the measured change."""
    result = run(updates.comparison, pair, subject=pair.id)
    assert not result.failed, result.message


# ---------------------------------------------------------------------------------------------
# Coding updates


@pytest.mark.parametrize("anchor_name,pair,point", _params(codec_cases(PLAN, PAIRS, evaluates=False)))
def test_update_reconstruction(anchor_name, pair, point, updates, run):
    """The payload decodes, on its own base, to exactly the state its header pins (``apply_update`` refuses a
    state whose keys, shapes or dtypes differ from the base's); a lossless codec reproduces the target bit for
    bit; encoding the same update again gives the same bytes."""
    result = run(updates.reconstruction, pair, point, subject=f"{pair.id}/{point.label}")
    assert not result.failed, result.message


@pytest.mark.parametrize("anchor_name,pair,point", _params(codec_cases(PLAN, PAIRS, evaluates=True)))
def test_update_accuracy(anchor_name, pair, point, updates, run):
    """The model rebuilt from the update (with the preprocessing the payload carries) is non-inferior to the
    target checkpoint at the operating point's claimed accuracy tier."""
    result = run(updates.accuracy, pair, point, subject=f"{pair.id}/{point.label}")
    assert not result.failed, result.message


@pytest.mark.parametrize("anchor_name,point", _params(nnc_lineage_cases(PLAN, LINEAGES)))
def test_nnc_lineage(anchor_name, point, updates, run):
    """The whole lineage coded through NNC (base first, update tree kept across the updates, TCA on) decodes in
    order, each state bit-exact to the encoder's reconstruction, and refuses an update whose predecessor was not
    decoded; sizes per update and cumulative, against a fresh tree per update, are recorded (INFO)."""
    result = run(updates.nnc_lineage, anchor_name, point, subject=f"{anchor_name}/{point.label}/lineage")
    assert not result.failed, result.message


@pytest.mark.parametrize("anchor_name,pair,point", _params(latest_pair_cases(PLAN, PAIRS)))
def test_update_payload_safety(anchor_name, pair, point, updates, run):
    """Truncated, corrupted and wrong-version payloads, and the right payload on the wrong base, are refused
    with a clear error; none is turned into a model."""
    result = run(updates.payload_safety, pair, point, subject=f"{pair.id}/{point.label}")
    assert not result.failed, result.message


@pytest.mark.parametrize("anchor_name,pair,point", _params(latest_pair_cases(PLAN, PAIRS)))
def test_update_encode_time(anchor_name, pair, point, updates, available, benchmark):
    """Encode time of each operating point on the latest update (pytest-benchmark); the timed bytes must
    equal the bytes the other checks decoded (the deterministic-encoding record comes from the
    reconstruction case, which parallel runs keep)."""
    reference = available(updates.payload, pair, point, subject=f"{pair.id}/{point.label}")
    base, target = updates.states(pair)
    preprocess = updates.session.anchor(anchor_name).preprocess_for(pair.target)
    benchmark.group = f"update-encode {pair.id}"
    timed = benchmark.pedantic(encode_update, args=(point.make(), base, target), kwargs={"preprocess": preprocess},
                               rounds=updates.rounds(pair), warmup_rounds=0)
    assert timed == reference, f"{pair.id}/{point.label}: the timed encoding differs from the decoded payload"


@pytest.mark.parametrize("anchor_name,pair,point", _params(latest_pair_cases(PLAN, PAIRS)))
def test_update_decode_time(anchor_name, pair, point, updates, available, benchmark):
    """Decode time (including payload and hash verification) of each operating point (pytest-benchmark);
    the timed decode yields the state the header pins (``apply_update`` refuses any other)."""
    payload = available(updates.payload, pair, point, subject=f"{pair.id}/{point.label}")
    base, _ = updates.states(pair)
    benchmark.group = f"update-decode {pair.id}"
    decoded = benchmark.pedantic(apply_update, args=(base, payload), rounds=updates.rounds(pair), warmup_rounds=0)
    assert decoded.header.target_sha256, f"{pair.id}/{point.label}: the timed decode returned no pinned state"


# ---------------------------------------------------------------------------------------------
# Artifact-only submissions: update payloads with no code


if UPDATE_ARTIFACTS:  # defined only for runs with --nnc-proposal artifacts (no empty parameter set)
    @pytest.mark.parametrize("anchor_name,submitted,pair", _params(artifact_cases(PLAN, PAIRS, UPDATE_ARTIFACTS)))
    def test_submitted_update(anchor_name, submitted, pair, updates, run):
        """A submitted update payload (no code runs) is hash-checked and decoded by the reference decoders on
        the base checkpoint it names (a payload built on another base is refused), is no larger than the size
        claimed, and the model it rebuilds meets the claimed accuracy tier against the target checkpoint."""
        a = submitted
        result = run(updates.submitted, a, pair, subject=f"{a.anchor}/{a.base}->{a.target}/{a.proposal}/{a.label}")
        assert not result.failed, result.message
