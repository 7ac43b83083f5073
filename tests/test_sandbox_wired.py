"""Proposal code never runs in the gate's process (issue 11 items 1, 4 and 6): the checker describes a proposal
in the sandbox and registers proxies; every call of a proposal's method is a sandboxed process that hands back
data; each cheat of ``fixtures/proposals/cheat-*`` (the classes the sandbox stops) fails the gate with its own
check id and a message naming the cause, run as a user would run it (``pytest conformance/ --proposal``)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
import torch

from nnconform import kit
from nnconform.kit.methods import PROPOSAL_MODULE_PREFIX

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures" / "proposals"
EXPECTED = tomllib.loads((FIXTURES / "expected.toml").read_text())
#: the cheats the sandbox (not the checker) stops; tests/test_proposals.py runs every other example
SANDBOX_CHEATS = sorted(n for n, e in EXPECTED.items() if e.get("suite") == "test_sandbox_wired")


def test_the_checker_runs_no_proposal_code_in_its_own_process():
    """Describing a proposal whose module patches the gate's records on import leaves the gate untouched: the
    module never ran here, yet its method is registered (a proxy) with the manifest's config."""
    import nnconform.records as records
    from nnconform.proposal import load_proposal

    gate_before, init_before = records.gate, records.CheckRecord.__init__
    modules_before = set(sys.modules)
    p = load_proposal(FIXTURES / "cheat-wraps-gate")
    assert p.ok, p.problems
    assert records.gate is gate_before and records.CheckRecord.__init__ is init_before
    new = {m for m in set(sys.modules) - modules_before if m.startswith(PROPOSAL_MODULE_PREFIX)}
    assert not any("cheat" in m or m.endswith("_proposal") for m in new), new
    cls = kit.registry("compressor").get("cheat-zeros")
    assert cls.sandboxed is not None and cls.source_sha256 == f"tree:{p.tree_sha256}"
    assert p.isolation in ("bubblewrap", "subprocess") and p.to_dict()["code_isolation"]["mode"] == p.isolation
    failing = records.gate("x.y", "s", False, measured=1, expected=0)
    assert not failing.passed


def test_a_config_the_proposals_own_validation_refuses_is_a_manifest_problem(tmp_path):
    """The proposal's ``Config.__post_init__`` runs in the sandbox; its refusal names the manifest field."""
    import shutil

    from nnconform.proposal import load_proposal

    folder = tmp_path / "p"
    shutil.copytree(FIXTURES / "good-compressor", folder, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = folder / "proposal.toml"
    manifest.write_text(manifest.read_text().replace("config = { bits = 6 }", "config = { bits = 11 }"))
    p = load_proposal(folder)
    fields = {pr.field: pr.message for pr in p.problems}
    assert "compression[1].config" in fields, p.problems
    assert "the 'fixture-int-per-channel' config does not build" in fields["compression[1].config"]
    assert "bits=11" in fields["compression[1].config"]


def test_a_proxy_compressor_round_trips_through_two_processes():
    """compress (anchor weights + calibration) and decode (the artifact only) are separate sandboxed calls; the
    harness loads the returned tensors into the NaN template and gets the method's own outputs."""
    from nnconform.anchors import get_anchor
    from nnconform.compress import compressor_class
    from nnconform.compress.base import CalibrationSet, CompressionContext
    from nnconform.compress.serialize import poisoned_template
    from nnconform.proposal import load_proposal

    p = load_proposal(FIXTURES / "good-compressor")
    assert p.ok, p.problems
    anchor = get_anchor("fmnist-lenet5")
    model = anchor.build()
    images = torch.rand(8, *anchor.input_shape)
    cal = CalibrationSet("t", "train", tuple(range(8)), images, torch.zeros(8, dtype=torch.long), "fp", "")
    ctx = CompressionContext(anchor.name, tuple(anchor.input_shape), anchor.num_classes, cal, Path("/nonexistent"))
    cls = compressor_class("fixture-int-per-channel")
    method = cls(cls.Config(bits=8))
    calls = len(cls.sandboxed.calls)
    result = method.compress(model, ctx)
    assert result.module is None and result.probe_logits.shape == (8, 10)
    assert result.reported_bytes == result.artifact.nbytes
    decoded = method.decode(result.artifact, poisoned_template(model), ctx)
    with torch.inference_mode():
        out = decoded(images)
    assert torch.isfinite(out).all() and torch.allclose(out, result.probe_logits, atol=1e-5)
    assert [c["call"] for c in cls.sandboxed.calls[calls:]] == ["compress", "decode"]


def test_a_feature_codec_decodes_in_another_process():
    """encode_many and decode_many are one call each: the honest codec round trips, the cheat's kept tensors are
    not in the decoding process."""
    from nnconform.proposal import load_proposal
    from nnconform.sandbox import SandboxError
    from nnconform.split.codecs import make_codec

    assert load_proposal(FIXTURES / "good-feature-codec").ok
    assert load_proposal(FIXTURES / "cheat-feature-state").ok
    x = [torch.rand(4, 3, 3) for _ in range(3)]
    good = make_codec("fixture-sqrt-quant", {"bits": 8})
    back = good.decode_many(good.encode_many(x))
    assert all(b.shape == t.shape and (b - t).abs().max() < 0.05 for b, t in zip(back, x))
    cheat = make_codec("cheat-remember", {})
    payloads = cheat.encode_many(x)
    assert [len(p) for p in payloads] == [4, 4, 4]
    with pytest.raises(SandboxError) as info:
        cheat.decode_many(payloads)
    assert info.value.kind == "raised" and info.value.call == "features_decode"
    assert "proposal cheat-feature-state: features_decode: raised: LookupError: no tensor kept" in str(info.value)


@pytest.mark.parametrize("name", SANDBOX_CHEATS)
def test_sandbox_cheat_fails_the_gate(name, tmp_path):
    """``pytest conformance/ --proposal cheat-...`` exits 1 with a failing record of the expected check whose
    message names the proposal, the sandboxed call and the cause; every failing case is the proposal's own."""
    from tests.test_proposals import run_suite

    expected = EXPECTED[name]
    proc, results = run_suite(tmp_path, "--proposal", str(FIXTURES / name), "--nnc-proposal-only")
    output = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == expected["exit"] == 1, output
    assert results["proposals"][0]["code_isolation"]["mode"] in ("bubblewrap", "subprocess")
    assert results["environment"]["sandbox"]["isolation"] == results["proposals"][0]["code_isolation"]["mode"]
    failing = [r for r in results["records"] if r["status"] in ("fail", "error") and r["check_id"] == expected["check"]]
    assert failing, [(r["check_id"], r["status"], r["message"][:120]) for r in results["records"]]
    assert any(expected["message"] in r["message"] for r in failing), [r["message"] for r in failing]
    assert expected["message"] in proc.stdout, "the failure message must reach the terminal too"
    assert all(c["outcome"] in ("passed", "failed") for c in results["cases"]), results["cases"]
    if expected["check"] in ("compression.compress", "compression.decode"):  # the proposal's own traceback is kept
        sandbox = [r["details"].get("sandbox") or {} for r in failing]
        assert any("proposal.py" in s.get("traceback", "") and s.get("call") for s in sandbox), sandbox


def test_the_study_codes_a_batch_in_one_encode_and_one_shuffled_decode():
    """A batch is one ``encode_many`` (plus fresh copies for the determinism check) and one ``decode_many`` whose
    payloads come in a seeded order other than the encoding order; the decoded tensors are put back in place."""
    from dataclasses import dataclass

    from nnconform.split.codecs import FeatureCodec
    from nnconform.split.plan import SplitPoint
    from nnconform.split.study import CodedResult, _code_batch

    class Tagging(FeatureCodec):
        """The payload is the sample's index; decoding returns the sample it names (kept by the test)."""

        name = "tagging"

        @dataclass(frozen=True)
        class Config(kit.MethodConfig):
            """No parameters."""

        calls: list = []

        def encode_many(self, tensors):
            self.calls.append(("encode", len(tensors)))
            return [int(t[0, 0, 0]).to_bytes(2, "big") for t in tensors]

        def decode_many(self, payloads):
            self.calls.append(("decode", [int.from_bytes(p, "big") for p in payloads]))
            return [batch[int.from_bytes(p, "big")].clone() for p in payloads]

    batch = torch.arange(16, dtype=torch.float32)[:, None, None, None].expand(16, 2, 2, 2).contiguous()
    r = CodedResult("cut", SplitPoint(label="t", family="t", codec="tagging", lossless=True))
    codec = Tagging()
    _code_batch(r, codec, batch, lambda x: x.flatten(1)[:, :3], determinism_left=2)
    assert r.error is None, r.error
    assert codec.calls[0] == ("encode", 18)  # 16 samples and fresh copies of the first two
    order = codec.calls[1][1]
    assert codec.calls[1][0] == "decode" and sorted(order) == list(range(16)) and order != list(range(16))
    assert len(codec.calls) == 2 and r.max_abs_error == 0.0 and r.determinism_checked == 2
    assert torch.equal(r._chunks[0], batch.flatten(1)[:, :3])  # every decoded tensor back in its sample's place


def test_the_runs_data_folder_is_hidden_from_proposal_code_even_inside_a_bound_tree(tmp_path, monkeypatch):
    """A data folder that happens to lie inside a tree the sandbox binds (here the nnconform package itself) is
    readable by proposal code until the plugin hides it (``hide_paths``, from --nnc-data-dir and the run's other
    folders); hidden, the proposal's import fails to read it and the manifest is refused."""
    import shutil

    import nnconform
    from nnconform.proposal import load_proposal
    from nnconform.proposal import sandboxed

    secret_dir = Path(nnconform.__file__).parent / f"_hidden_probe_{tmp_path.name}"
    secret_dir.mkdir()
    try:
        (secret_dir / "t10k-labels.txt").write_text("the test labels")
        monkeypatch.setattr(sandboxed, "_HIDDEN", [])
        runs = {}
        for hidden in (False, True):
            folder = tmp_path / f"p-{hidden}"
            shutil.copytree(FIXTURES / "good-compressor", folder, ignore=shutil.ignore_patterns("__pycache__"))
            code = folder / "proposal.py"
            code.write_text(code.read_text() + f"\nopen({str(secret_dir / 't10k-labels.txt')!r}).read()\n")
            manifest = folder / "proposal.toml"
            manifest.write_text("\n".join(line for line in manifest.read_text().splitlines()
                                          if not line.startswith(("module_sha256", "tree_sha256"))))
            if hidden:
                sandboxed.hide_paths([secret_dir, None, "hub/id-not-a-path"])
            runs[hidden] = load_proposal(folder)
        assert runs[False].ok, runs[False].problems
        assert not runs[True].ok
        assert "t10k-labels.txt" in " ".join(pr.message for pr in runs[True].problems)
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)
