"""Files of a proposal stay in its folder, and the whole folder is pinned (issue 11, items 2 and 3).

A manifest path leaving the folder (``..``, absolute, a symbolic link out, a link loop) is refused by
the checker without reading, hashing or even stat-ing the target; ONNX external data must be listed and
confined; ``tree_sha256`` covers every file of the folder, so a file added beside a pinned module is
refused before any code is imported.
"""

from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path

import pytest

from nnconform.hashing import sha256_bytes
from nnconform.proposal import load_proposal
from nnconform.proposal import check as check_module
from nnconform.proposal.tree import (PathEscape, TreeError, confine, copy_tree, onnx_external_data_problems,
                                     tree_entries, tree_sha256)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "proposals"
HEAD = """
schema_version = 1
[proposal]
name = "t-paths"
version = "1"
contact = "A Person <a@example.org>"
anchors = ["fmnist-lenet5"]
criteria = ["compression"]
"""
SECRET = b"host secret that the checker must never hash\n"


def artifact_manifest(folder: Path, *files: tuple[str, str], decoder: str = "safetensors") -> Path:
    listed = ", ".join(f'{{ path = "{p}", sha256 = "{s}" }}' for p, s in files)
    body = f"""
    [[artifacts]]
    criterion = "compression"
    anchor = "fmnist-lenet5"
    label = "x"
    decoder = "{decoder}"
    files = [{listed}]
    claimed_tier = "99%"
    """
    path = folder / "proposal.toml"
    path.write_text(textwrap.dedent(HEAD) + textwrap.dedent(body))
    return path


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """A proposal folder ``p/`` beside a host file ``secret.bin``; every sha256_file call is recorded."""
    folder = tmp_path / "p"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    hashed: list[Path] = []
    real = check_module.sha256_file

    def spy(path):
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(check_module, "sha256_file", spy)
    return folder, secret, hashed


def assert_refused_unread(manifest: Path, secret: Path, hashed: list[Path], field: str, words: str):
    problems = load_proposal(manifest, import_code=False).problems
    by_field = {p.field: p.message for p in problems}
    assert field in by_field, problems
    assert words in by_field[field], by_field[field]
    digest = sha256_bytes(SECRET)
    assert not any(digest in p.message for p in problems), "the checker printed the hash of a host file"
    assert secret.resolve() not in [h.resolve() for h in hashed], "the checker hashed a file outside the folder"


def test_dotdot_path_is_refused_unread(layout):
    folder, secret, hashed = layout
    manifest = artifact_manifest(folder, ("../secret.bin", sha256_bytes(SECRET)))
    assert_refused_unread(manifest, secret, hashed, "artifacts[0].files[0].path", "climbs out with '..'")


def test_absolute_path_is_refused_unread(layout):
    folder, secret, hashed = layout
    manifest = artifact_manifest(folder, (str(secret), "0" * 64))
    assert_refused_unread(manifest, secret, hashed, "artifacts[0].files[0].path", "is an absolute path")


def test_symlink_out_is_refused_unread(layout):
    folder, secret, hashed = layout
    (folder / "w.safetensors").symlink_to(secret)
    (folder / "rel.safetensors").symlink_to("../secret.bin")
    manifest = artifact_manifest(folder, ("w.safetensors", "0" * 64), ("rel.safetensors", "0" * 64))
    assert_refused_unread(manifest, secret, hashed, "artifacts[0].files[0].path", "to an absolute path")
    assert_refused_unread(manifest, secret, hashed, "artifacts[0].files[1].path", "leads out of the proposal folder")


def test_symlink_loop_is_refused(layout):
    folder, secret, hashed = layout
    (folder / "a").symlink_to("b")
    (folder / "b").symlink_to("a")
    manifest = artifact_manifest(folder, ("a", "0" * 64))
    assert_refused_unread(manifest, secret, hashed, "artifacts[0].files[0].path", "symbolic link loop")


def test_module_outside_the_folder_is_never_imported(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    manifest = folder / "proposal.toml"
    manifest.write_text(textwrap.dedent(HEAD).replace('criteria = ["compression"]', 'criteria = ["compression"]\n'
                                                      'module = "../evil.py"'))
    problems = {p.field: p.message for p in load_proposal(manifest).problems}
    assert "climbs out" in problems["proposal.module"], problems
    assert not marker.exists(), "a module outside the proposal folder was imported"


def test_a_link_inside_the_folder_is_followed_inside(layout):
    folder, secret, hashed = layout
    (folder / "data").mkdir()
    (folder / "data" / "w.bin").write_bytes(b"ok")
    (folder / "alias.bin").symlink_to("data/w.bin")
    assert confine(folder, "alias.bin") == (folder / "data" / "w.bin").resolve()


def test_confine_sees_through_a_lexically_harmless_link_chain(tmp_path):
    # deep/up -> .. is inside, but deep/up/../x is the folder's parent: lexical checks would miss it
    folder = tmp_path / "p"
    (folder / "deep").mkdir(parents=True)
    (folder / "deep" / "up").symlink_to("..")
    (folder / "f").symlink_to("deep/up/../secret.bin")
    with pytest.raises(PathEscape, match="leads out"):
        confine(folder, "f")


def test_confine_never_looks_outside_the_folder(tmp_path, monkeypatch):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "out").symlink_to("../elsewhere/deeper/file")
    looked: list[str] = []
    real_readlink, real_is_symlink = os.readlink, Path.is_symlink
    monkeypatch.setattr(os, "readlink", lambda p, *a, **k: looked.append(str(p)) or real_readlink(p, *a, **k))
    monkeypatch.setattr(Path, "is_symlink", lambda self: looked.append(str(self)) or real_is_symlink(self))
    for rel in ("out", "../x", "/etc/passwd", "C:/x", "a\\..\\x", ""):
        with pytest.raises(PathEscape):
            confine(folder, rel)
    root = str(folder.resolve())
    assert looked and all(p == root or p.startswith(root + os.sep) for p in looked), looked


# -- the tree pin ----------------------------------------------------------------------------------

def make_folder(path: Path) -> Path:
    (path / "pkg").mkdir(parents=True)
    (path / "proposal.py").write_text("X = 1\n")
    (path / "pkg" / "table.bin").write_bytes(b"\x00\x01")
    (path / "proposal.toml").write_text("# manifest: holds the pin, so it is not under it\n")
    return path


def test_tree_hash_covers_every_file_and_nothing_else(tmp_path):
    folder = make_folder(tmp_path / "p")
    pin = tree_sha256(folder)
    assert [e.path for e in tree_entries(folder)] == ["pkg/table.bin", "proposal.py"]
    # not under the pin: the manifest itself and bytecode caches
    (folder / "proposal.toml").write_text("# edited\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "proposal.cpython-311.pyc").write_bytes(b"junk")
    assert tree_sha256(folder) == pin
    changes = {
        "content": lambda: (folder / "pkg" / "table.bin").write_bytes(b"\x00\x02"),
        "added file": lambda: (folder / "extra.pkl").write_bytes(b"\x80\x04N."),
        "mode": lambda: os.chmod(folder / "proposal.py", 0o755),
        "renamed": lambda: (folder / "proposal.py").rename(folder / "other.py"),
    }
    for what, change in changes.items():
        fresh = make_folder(tmp_path / what.replace(" ", "-"))
        before = tree_sha256(fresh)
        folder = fresh
        change()
        assert tree_sha256(fresh) != before, f"a {what} change kept the tree hash"


def test_tree_hash_refuses_links_out_loops_and_special_files(tmp_path):
    folder = make_folder(tmp_path / "p")
    (folder / "inside").symlink_to("proposal.py")
    assert [e.kind for e in tree_entries(folder) if e.path == "inside"] == ["link"]
    for name, target in (("out", "../../etc/passwd"), ("abs", "/etc/passwd"), ("loop", "l")):
        bad = make_folder(tmp_path / name)
        (bad / "l").symlink_to(target)
        with pytest.raises(TreeError):
            tree_sha256(bad)
    fifo = make_folder(tmp_path / "fifo")
    os.mkfifo(fifo / "pipe")
    with pytest.raises(TreeError, match="not a regular file"):
        tree_sha256(fifo)


def test_copy_keeps_the_hash(tmp_path):
    folder = make_folder(tmp_path / "p")
    (folder / "inside").symlink_to("proposal.py")
    assert copy_tree(folder, tmp_path / "copy") == tree_sha256(folder)
    assert not (tmp_path / "copy" / "proposal.toml").exists()


def test_a_pickle_beside_a_tree_pinned_module_is_refused_before_import(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    # the module runs in the sandbox (a read-only copy of the folder): it says it ran by raising
    (folder / "proposal.py").write_text("raise RuntimeError('the module ran')\n")
    pin = tree_sha256(folder)
    (folder / "proposal.toml").write_text(textwrap.dedent(HEAD).replace(
        'criteria = ["compression"]', f'criteria = []\nmodule = "proposal.py"\ntree_sha256 = "{pin}"'))
    problems = {p.field: p.message for p in load_proposal(folder).problems}
    assert "proposal.tree_sha256" not in problems and "the module ran" in problems["proposal.module"]
    (folder / "table.pkl").write_bytes(b"\x80\x04}\x94.")  # any file beside the module changes the pin
    problems = {p.field: p.message for p in load_proposal(folder).problems}
    assert "hashes to" in problems["proposal.tree_sha256"] and pin in problems["proposal.tree_sha256"]
    assert "the module ran" not in " ".join(problems.values()), "code of a folder that fails its tree pin ran"


def test_cheat_fixtures_are_refused_by_the_checker():
    """The committed cheat fixtures of this part fail the checker, each at its own field."""
    expect = {"cheat-path-escape": ("artifacts[0].files[0].path", "climbs out"),
              "cheat-symlink-out": ("artifacts[0].files[0].path", "out of the proposal folder"),
              "cheat-onnx-external-data": ("artifacts[0].files", "not listed"),
              "cheat-pickle-beside-pin": ("proposal.tree_sha256", "not the reviewed files")}
    for name, (field, words) in expect.items():
        problems = {p.field: p.message for p in load_proposal(FIXTURES / name).problems}
        assert field in problems and words in problems[field], (name, problems)


# -- ONNX external data ------------------------------------------------------------------------------

def onnx_with_external_data(folder: Path, location: str = "w.bin") -> Path:
    """A one-MatMul ONNX graph whose weight lives in an external file ``location``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])], [weight])
    model = helper.make_model(graph)
    path = folder / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    if location != "w.bin":
        model = onnx.load(str(path), load_external_data=False)
        for kv in model.graph.initializer[0].external_data:
            if kv.key == "location":
                kv.value = location
        path.write_bytes(model.SerializeToString())
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_onnx_external_data_listed_and_confined_passes(tmp_path):
    onnx_with_external_data(tmp_path)
    assert onnx_external_data_problems(tmp_path, "m.onnx", ["m.onnx", "w.bin"]) == []
    manifest = artifact_manifest(tmp_path, ("m.onnx", sha(tmp_path / "m.onnx")), ("w.bin", sha(tmp_path / "w.bin")),
                                 decoder="onnx")
    assert not [p for p in load_proposal(manifest, import_code=False).problems if p.field.endswith(".files")]


def test_onnx_external_data_unlisted_is_refused(tmp_path):
    onnx_with_external_data(tmp_path)
    manifest = artifact_manifest(tmp_path, ("m.onnx", sha(tmp_path / "m.onnx")), decoder="onnx")
    problems = {p.field: p.message for p in load_proposal(manifest, import_code=False).problems}
    assert "'W' keeps its data in 'w.bin', which is not listed" in problems["artifacts[0].files"], problems


@pytest.mark.parametrize("location", ["../w.bin", "/tmp/w.bin"])
def test_onnx_external_data_outside_is_refused(tmp_path, location):
    folder = tmp_path / "p"
    folder.mkdir()
    onnx_with_external_data(folder, location)
    problems = onnx_external_data_problems(folder, "m.onnx", ["m.onnx", location])
    assert problems and all("external data" in p for p in problems), problems
