"""The submission checker: the schema is valid, the example manifests pass, and every kind of problem
is reported with its file and field, all at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jsonschema
import pytest
import torch

from nnconform.compress.base import ArtifactError, CompressionContext
from nnconform.compress.plan import load_plan
from nnconform.hashing import sha256_bytes
from nnconform.proposal import load_proposal, proposal_schema, resolve_manifest
from nnconform.proposal.__main__ import main as cli
from nnconform.proposal.artifacts import SubmittedArtifact, config_for
from nnconform.proposal.manifest import SubmittedFile
from nnconform.records import Status

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "proposals"
HEAD = """
schema_version = 1
[proposal]
name = "t-proposal"
version = "1"
contact = "A Person <a@example.org>"
anchors = ["fmnist-lenet5"]
"""


def write(tmp_path: Path, body: str, head: str = HEAD) -> Path:
    path = tmp_path / "proposal.toml"
    path.write_text(textwrap.dedent(head) + textwrap.dedent(body))
    return path


def fields(path: Path) -> dict[str, str]:
    return {p.field: p.message for p in load_proposal(path).problems}


def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(proposal_schema())


@pytest.mark.parametrize("name", ["good-compressor", "good-update-codec", "good-feature-codec", "good-artifacts"])
def test_good_examples_pass_the_checker(name):
    p = load_proposal(FIXTURES / name)
    assert p.ok, p.problems
    assert p.contact and p.version and p.anchors == ("fmnist-lenet5",)


def test_all_problems_are_listed_at_once():
    p = load_proposal(FIXTURES / "bad-missing-field")
    assert len(p.problems) >= 6
    assert all(x.file.endswith("bad-missing-field/proposal.toml") for x in p.problems)
    rec = p.problems[0].record(p.name)
    assert rec.status == Status.FAIL and rec.check_id == "proposal.manifest" and p.problems[0].field in rec.subject


def test_resolve_manifest(tmp_path):
    (tmp_path / "proposal.toml").write_text("")
    (tmp_path / "mine.py").write_text("")
    assert resolve_manifest(tmp_path) == tmp_path / "proposal.toml"
    assert resolve_manifest(tmp_path / "mine.py") == tmp_path / "proposal.toml"
    (tmp_path / "mine.toml").write_text("")
    assert resolve_manifest(tmp_path / "mine.py") == tmp_path / "mine.toml"


def test_unreadable_and_malformed_manifests(tmp_path):
    assert "no such file" in load_proposal(tmp_path / "absent.toml").problems[0].message
    bad = tmp_path / "proposal.toml"
    bad.write_text("schema_version = 1\n[proposal\n")
    (problem,) = load_proposal(bad).problems
    assert problem.field == "" and "not valid TOML" in problem.message


def test_schema_problems_name_their_fields(tmp_path):
    path = write(tmp_path, """
        criteria = ["compression", "pruning"]
        [[artifacts]]
        criterion = "compression"
        anchor = "fmnist-lenet5"
        label = "x"
        decoder = "safetensors"
        files = [{ path = "w.safetensors", sha256 = "abc" }]
        claimed_tier = "99%"
        """)
    found = fields(path)
    assert "proposal.criteria[1]" in found
    assert any(f.startswith("artifacts[0]") for f in found), found


def test_criteria_and_sections_must_agree(tmp_path):
    path = write(tmp_path, """
        criteria = ["compression", "split"]
        module = "code.py"
        [[updates]]
        codec = "quant"
        label = "mine"
        claimed_tier = "99%"
        """)
    (tmp_path / "code.py").write_text("")
    found = fields(path)
    assert "proposal.criteria" in found
    msgs = [p.message for p in load_proposal(path).problems if p.field == "proposal.criteria"]
    assert any("'split' is listed" in m for m in msgs) and any("updates operating points" in m for m in msgs)


def test_code_sections_need_code_and_broken_code_is_reported(tmp_path):
    path = write(tmp_path, """
        criteria = ["compression"]
        [[compression]]
        anchor = "fmnist-lenet5"
        method = "fp16"
        label = "mine"
        claimed_tier = "99%"
        """)
    assert "gives no `module`" in fields(path)["proposal"]
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    path = write(tmp_path, """
        criteria = ["compression"]
        module = "broken.py"
        [[compression]]
        anchor = "fmnist-lenet5"
        method = "fp16"
        label = "mine"
        claimed_tier = "99%"
        """)
    assert "RuntimeError: boom at import" in fields(path)["proposal.module"]


def test_semantic_problems(tmp_path):
    taken = next(p for p in load_plan().points if p.anchor == "fmnist-lenet5" and p.label)
    (tmp_path / "code.py").write_text("")
    path = write(tmp_path, f"""
        criteria = ["compression", "updates"]
        module = "code.py"
        [[compression]]
        anchor = "fmnist-resnet8"
        method = "fp16"
        label = "a"
        claimed_tier = "99%"
        [[compression]]
        anchor = "fmnist-lenet5"
        method = "fp16"
        label = "b"
        config = {{ bits = 3 }}
        claimed_tier = "99%"
        [[compression]]
        anchor = "fmnist-lenet5"
        method = "{taken.method}"
        label = "{taken.label}"
        claimed_tier = "99%"
        [[updates]]
        codec = "quant"
        label = "q"
        params = {{ bits = 11 }}
        claimed_tier = {{ latest = "99%", newest = "99%" }}
        [[artifacts]]
        criterion = "updates"
        anchor = "fmnist-lenet5"
        label = "u"
        base = "finetune"
        target = "epoch99"
        files = [{{ path = "missing.update", sha256 = "{'0' * 64}" }}]
        claimed_tier = "99%"
        """)
    found = fields(path)
    assert "not one of proposal.anchors" in found["compression[0].anchor"]
    assert "unknown key(s) 'bits'" in found["compression[1].config"]
    assert "already taken" in found["compression[2].label"]
    assert "bits" in found["updates[0].params"]
    assert any(f.startswith("updates[0].claimed_tier") for f in found), found
    assert "no such file" in found["artifacts[0].files[0].path"]


def test_compression_configs_are_type_checked_and_claims_stay_on_the_point(tmp_path):
    """A proposal's config values are checked like the plan's (``"no"`` is not a boolean), a claim inside the config
    is refused, and a valid entry becomes a ``CompressionPoint`` carrying its claims."""
    (tmp_path / "code.py").write_text("")
    path = write(tmp_path, """
        criteria = ["compression"]
        module = "code.py"
        [[compression]]
        anchor = "fmnist-lenet5"
        method = "nnc"
        label = "a"
        config = { use_dq = "no" }
        claimed_tier = "99%"
        [[compression]]
        anchor = "fmnist-lenet5"
        method = "nnc"
        label = "b"
        config = { claimed_tier = "99%" }
        claimed_tier = "99%"
        [[compression]]
        anchor = "fmnist-lenet5"
        method = "nnc"
        label = "c"
        config = { qp = -30 }
        claimed_tier = "99.9%"
        claimed_bytes = 50000
        """)
    found = fields(path)
    assert "compression[0].config.use_dq: expected true or false, got 'no'" in found["compression[0].config"]
    assert "unknown key(s) 'claimed_tier'" in found["compression[1].config"]
    (point,) = load_proposal(path).compression
    assert (point.id, point.claimed_tier, point.claimed_bytes, point.proposal) == \
        ("fmnist-lenet5-nnc-c", "99.9%", 50000, load_proposal(path).name)
    assert point.config.qp == -30 and "claimed_tier" not in point.config.to_dict()


def test_update_artifact_checkpoints(tmp_path):
    payload = tmp_path / "u.update"
    payload.write_bytes(b"x")
    path = write(tmp_path, f"""
        criteria = ["updates"]
        [[artifacts]]
        criterion = "updates"
        anchor = "fmnist-lenet5"
        label = "u"
        base = "finetune"
        target = "epoch2"
        files = [{{ path = "u.update", sha256 = "{sha256_bytes(b'x')}" }}]
        claimed_tier = "99%"
        [[artifacts]]
        criterion = "updates"
        anchor = "fmnist-lenet5"
        label = "v"
        base = "epoch0"
        target = "epoch2"
        files = [{{ path = "u.update", sha256 = "{sha256_bytes(b'x')}" }}]
        claimed_tier = "99%"
        """)
    found = fields(path)
    assert "does not come after" in found["artifacts[0].target"]
    assert "no checkpoint 'epoch0'" in found["artifacts[1].base"]


def test_update_points_and_artifacts_are_parsed_straight_into_the_criterions_points():
    """``[[updates]]`` entries become ``UpdatePoint``s (the ``"*"`` claim on ``claimed_tier``, the others in
    ``pair_claims``) and update ``[[artifacts]]`` become ``UpdateArtifact`` points with their claims."""
    from nnconform import kit
    from nnconform.updates.plan import UpdateArtifact, UpdatePoint

    p = load_proposal(FIXTURES / "good-update-codec")
    assert all(isinstance(u, UpdatePoint) for u in p.updates)
    points = {u.label: u for u in p.updates}
    assert (points["pc-delta-8"].claimed_tier, dict(points["pc-delta-8"].pair_claims)) == ("99%", {})
    four = points["pc-delta-4"]
    assert (four.claimed_tier, dict(four.pair_claims), four.run_tier) == (None, {"latest": "99%"}, "quick")
    assert four.claim_for("latest") == "99%" and four.claim_for("span") is None
    assert (four.proposal, four.anchors, dict(four.params)) == (p.name, ("fmnist-lenet5",), {"bits": 4})
    assert four.make().config == kit.make("update-codec", "fixture-delta-per-channel", {"bits": 4}).config
    art = load_proposal(FIXTURES / "good-artifacts").update_artifacts[0]
    assert isinstance(art, UpdateArtifact) and isinstance(art, kit.OperatingPoint)
    assert (art.claimed_tier, art.claimed_bytes, art.base, art.target, art.label) == \
        ("99%", 43040, "epoch8", "finetune", "quant8")
    assert art.id == "fixture-artifacts-fmnist-lenet5-epoch8-finetune-quant8"


def test_cli_exit_codes(capsys):
    assert cli(["check", str(FIXTURES / "good-artifacts")]) == 0
    assert cli(["check", str(FIXTURES / "bad-missing-field"), str(FIXTURES / "good-artifacts")]) == 1
    out = capsys.readouterr().out
    assert "error: " in out and "proposal.contact: missing required field" in out and "ok: " in out


# -- the artifact-only decoders ---------------------------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _ctx(tmp_path):
    from nnconform.compress.base import CalibrationSet

    x = torch.zeros(2, 1, 28, 28)
    calib = CalibrationSet("d", "train", (0, 1), x, torch.zeros(2, dtype=torch.long), "f")
    return CompressionContext("tiny", (1, 28, 28), 10, calib, tmp_path)


def _submit(tmp_path, name: str, data: bytes, decoder: str, sha: str | None = None):
    path = tmp_path / name
    path.write_bytes(data)
    config = config_for([SubmittedFile(path, sha or sha256_bytes(data))], decoder, {})
    handler = SubmittedArtifact(config)
    return handler, config, handler.compress(None, _ctx(tmp_path))


def test_onnx_and_safetensors_submissions_decode(tmp_path):
    import io

    from safetensors.torch import save

    torch.manual_seed(0)
    model = _Tiny().eval()
    x = torch.randn(3, 1, 28, 28)
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}},
                      dynamo=False)
    handler, config, result = _submit(tmp_path, "model.onnx", buf.getvalue(), "onnx")
    decoded = handler.decode(result.artifact, _Tiny(), _ctx(tmp_path))
    assert torch.allclose(decoded(x), model(x), atol=1e-4)
    state = {k: v.half() for k, v in model.state_dict().items()}
    handler, config, result = _submit(tmp_path, "w.safetensors", save(state), "safetensors")
    template = _Tiny()
    with torch.no_grad():
        for p in template.parameters():
            p.fill_(float("nan"))
    decoded = handler.decode(result.artifact, template, _ctx(tmp_path))
    assert torch.allclose(decoded(x), model(x), atol=1e-2) and result.reported_bytes == len(save(state))


def test_submissions_refuse_wrong_hashes_and_incomplete_weights(tmp_path):
    from safetensors.torch import save

    with pytest.raises(ArtifactError, match="sha256 is .* the manifest pins"):
        _submit(tmp_path, "w.safetensors", b"abc", "safetensors", sha="0" * 64)
    state = _Tiny().state_dict()
    state.pop("fc.bias")
    handler, config, result = _submit(tmp_path, "w.safetensors", save(state), "safetensors")
    with pytest.raises(ArtifactError, match="missing \\['fc.bias'\\]"):
        handler.decode(result.artifact, _Tiny(), _ctx(tmp_path))
    handler, config, result = _submit(tmp_path, "w.safetensors", b"not safetensors", "safetensors")
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        handler.decode(result.artifact, _Tiny(), _ctx(tmp_path))


def test_a_pinned_module_that_changed_is_not_imported(tmp_path):
    """A module whose hash is not the pin never runs; the pinned one runs (in the sandbox: it cannot write beside
    itself, so it says it ran by raising, which the checker reports)."""
    code = tmp_path / "code.py"
    code.write_text("raise RuntimeError('the module ran')\n")
    path = write(tmp_path, f"""
        criteria = ["compression"]
        module = "code.py"
        module_sha256 = "{'1' * 64}"
        [[compression]]
        anchor = "fmnist-lenet5"
        method = "fp16"
        label = "mine"
        claimed_tier = "99%"
        """)
    found = fields(path)
    assert "not the reviewed code" in found["proposal.module_sha256"]
    assert "the module ran" not in " ".join(found.values()), "code whose hash differs from the pin must not run"
    path.write_text(path.read_text().replace("1" * 64, sha256_bytes(code.read_bytes())))
    found = fields(path)
    assert "proposal.module_sha256" not in found
    assert "RuntimeError: the module ran" in found["proposal.module"]
    assert "in the sandbox" in found["proposal.module"]


def test_split_entries_become_split_points_and_bad_params_are_named(tmp_path):
    """A proposal's [[split]] entries are parsed straight into the split criterion's points; a codec config that
    does not build (an unknown field, a string for an integer) is a problem naming the entry's params."""
    from nnconform.split.plan import SplitPoint

    good = load_proposal(FIXTURES / "good-feature-codec")
    assert all(isinstance(p, SplitPoint) for p in good.split)
    assert [(p.label, p.claimed_tier, p.run_tier, p.proposal) for p in good.split] == [
        ("sqrt-8", "99%", "quick", "fixture-sqrt-quant"), ("sqrt-6", "99%", "quick", "fixture-sqrt-quant"),
        ("sqrt-4", None, "quick", "fixture-sqrt-quant")]
    path = write(tmp_path, """
        criteria = ["split"]
        [[split]]
        codec = "uniform"
        label = "u-a"
        params = { bitz = 4 }
        claimed_tier = "99%"
        [[split]]
        codec = "uniform"
        label = "u-b"
        params = { bits = "4" }
        claimed_tier = "none"
        [[split]]
        codec = "unifrom"
        label = "u-c"
        claimed_tier = "none"
    """, HEAD.replace('anchors = ["fmnist-lenet5"]', 'anchors = ["fmnist-lenet5"]\npackage = "nnconform"'))
    found = fields(path)
    assert "unknown config field(s) ['bitz']" in found["split[0].params"]
    assert "bits must be an integer in 1..16, got '4'" in found["split[1].params"]
    assert "did you mean 'uniform'" in found["split[2].codec"]
