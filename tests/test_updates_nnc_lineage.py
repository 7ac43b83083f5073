"""Self-tests of NNC incremental coding along a lineage (src/nnconform/updates/lineage.py).

On LeNet-5's last three checkpoints (epoch7 -> epoch8 -> finetune, the base coded through NNC first):
keeping NNCodec's update tree (TCA) makes the later payloads smaller than with a fresh tree per update,
the payloads decode in order bit-exact to the encoder's reconstructions, and only in order.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nncodec")

from nnconform.anchors import get_anchor  # noqa: E402
from nnconform.kit import PayloadError  # noqa: E402
from nnconform.updates import apply_update  # noqa: E402
from nnconform.updates.checks import check_nnc_lineage_decode, nnc_lineage_size_record  # noqa: E402
from nnconform.updates.lineage import (LineageDecoder, LineageOrderError, code_lineage, state_equal,  # noqa: E402
                                       summary)
from nnconform.updates.nnc import NNCDeltaCodec  # noqa: E402
from nnconform.updates.payload import unpack_payload  # noqa: E402
from nnconform.hashing import state_dict_sha256  # noqa: E402
from nnconform.records import Status  # noqa: E402

CONFIG = NNCDeltaCodec.Config(qp=-32, tca=True)


@pytest.fixture(scope="module")
def lineage():
    """LeNet-5's last three checkpoints, coded with the tree kept and with a fresh tree per update."""
    anchor = get_anchor("fmnist-lenet5")
    names = [c.name for c in anchor.checkpoints][-3:]
    states = [anchor.state_dict(n) for n in names]
    _, incremental = code_lineage(states, CONFIG, keep_tree=True)
    _, independent = code_lineage(states, CONFIG, keep_tree=False)
    return names, states, incremental, independent


def test_later_incremental_payloads_are_smaller(lineage):
    """Measured (qp -32): 7,382 vs 7,624 B and 6,272 vs 6,386 B for the two updates; the base is the same coding."""
    _, _, inc, ind = lineage
    assert inc[0].body_bytes == ind[0].body_bytes
    for a, b in zip(inc[1:], ind[1:]):
        assert a.body_bytes < b.body_bytes, (a.step, a.body_bytes, b.body_bytes)
    sizes = summary(inc, ind)
    assert sizes["incremental"]["cumulative_bytes"][-1] == sum(s.nbytes for s in inc)
    assert sizes["incremental"]["cumulative_bytes"][-1] < sizes["independent"]["cumulative_bytes"][-1]


def test_fresh_tree_makes_tca_inert(lineage):
    """Without a kept tree TCA has nothing to adapt to: the stateless codec's bytes are the same with tca on or off
    (the claim in nnc.py's docstring); with the tree kept it changes them (previous test)."""
    _, states, inc, _ = lineage
    base, target = inc[0].state, {k: v.contiguous() for k, v in sorted(states[1].items())}
    on = NNCDeltaCodec(CONFIG).encode(base, target)
    off = NNCDeltaCodec(CONFIG.replace(tca=False)).encode(base, target)
    assert on == off


def test_decodes_bit_exact_in_order(lineage):
    """A decoder fed only the payloads holds, after each, exactly the encoder's reconstruction."""
    _, states, inc, ind = lineage
    for steps in (inc, ind):
        dec = LineageDecoder(states[0])
        for s in steps:
            assert state_equal(dec.decode(s.payload), s.state), s.step
    rec = check_nnc_lineage_decode("lenet5/3", states[0], inc)
    assert rec.status is Status.PASS, rec.message
    assert "step 1" in rec.details["out_of_order_refusal"]


def test_pins_name_the_decoded_predecessor(lineage):
    """Update k's base pin is the hash of the decoded state after update k-1 (not of the true checkpoint)."""
    _, states, inc, _ = lineage
    for prev, s in zip(inc, inc[1:]):
        header = unpack_payload(s.payload).header
        assert header.base_sha256 == state_dict_sha256(prev.state)
        assert header.base_sha256 != state_dict_sha256({k: v for k, v in sorted(states[prev.step].items())})
        assert header.config["step"] == s.step and header.config["keep_tree"] is True


def test_update_2_without_update_1_is_refused(lineage):
    _, states, inc, _ = lineage
    dec = LineageDecoder(states[0])
    with pytest.raises(LineageOrderError, match="step 0"):
        dec.decode(inc[1].payload)  # nothing decoded yet
    dec.decode(inc[0].payload)
    before = dec.state
    with pytest.raises(LineageOrderError, match=r"predecessor, step 1 .*decode steps 1\.\.1 first"):
        dec.decode(inc[2].payload)
    assert dec.step == 1 and dec.state is before  # left as it was
    dec.decode(inc[1].payload)
    dec.decode(inc[2].payload)
    with pytest.raises(LineageOrderError, match="already decoded"):
        dec.decode(inc[2].payload)


def test_mixed_codings_and_damage_are_refused(lineage):
    """An update of the fresh-tree coding on the kept-tree decoder, damaged bytes, and apply_update are refused."""
    _, states, inc, ind = lineage
    dec = LineageDecoder(states[0])
    dec.decode(inc[0].payload)
    with pytest.raises(PayloadError):
        dec.decode(inc[1].payload[:-1])
    dec.decode(inc[1].payload)
    with pytest.raises(Exception, match="keep_tree|applies to the decoded state"):
        dec.decode(ind[2].payload)
    with pytest.raises(PayloadError, match="nnc-lineage"):
        apply_update(inc[1].state, inc[2].payload)


def test_decode_check_fails_on_a_bad_lineage(lineage):
    """The gate fails when a payload does not reproduce the encoder's state, and when order is not enforced."""
    _, states, inc, _ = lineage
    wrong = [inc[0], type(inc[1])(1, inc[1].payload, inc[1].body_bytes,
                                  {k: v + 1 if v.is_floating_point() else v for k, v in inc[1].state.items()}), inc[2]]
    rec = check_nnc_lineage_decode("bad", states[0], wrong)
    assert rec.status is Status.FAIL and "differs from the encoder's reconstruction" in rec.message

    class Lenient(LineageDecoder):
        def decode(self, payload):
            try:
                return super().decode(payload)
            except LineageOrderError:
                return self.state

    rec = check_nnc_lineage_decode("lenient", states[0], inc, decoder_factory=Lenient)
    assert rec.status is Status.FAIL and "without update 1" in rec.message


def test_size_record(lineage):
    names, _, inc, ind = lineage
    rec = nnc_lineage_size_record("lenet5/3", names, summary(inc, ind))
    assert rec.status is Status.INFO and rec.measured < rec.expected
    assert rec.details["incremental"]["payload_bytes"] == [s.nbytes for s in inc]


def test_plan_table_refuses_a_point_that_is_not_nnc():
    """[nnc_lineage].points must name incremental nnc points of the plan; the error names the field and value."""
    from nnconform import kit
    from nnconform.updates.lineage import parse_lineage_plan
    from nnconform.updates.plan import load_plan

    points = load_plan().points
    ok = parse_lineage_plan(kit.Table({"points": ["nnc-qp32"], "quick_lineages": ["fmnist-lenet5"]}, "u.toml:nnc_lineage"),
                            points, {"fmnist-lenet5": ()})
    assert ok.points == ("nnc-qp32",)
    with pytest.raises(kit.PlanError, match=r"nnc_lineage: points\[0\]: 'topk-0\.01' is not an incremental 'nnc'"):
        parse_lineage_plan(kit.Table({"points": ["topk-0.01"]}, "u.toml:nnc_lineage"), points, {})
    with pytest.raises(kit.PlanError, match=r"quick_lineages\[0\]: 'nope'"):
        parse_lineage_plan(kit.Table({"quick_lineages": ["nope"]}, "u.toml:nnc_lineage"), points, {"fmnist-lenet5": ()})
