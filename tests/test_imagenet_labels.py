"""ImageNet sources built from the 20 foolbox samples: every layout gives the smoke set's labels and the
same EfficientNet-Lite0 logits (18/20); folders that cannot be labelled fail, naming the folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from nnconform.data import DatasetLoadError, load_imagenet_samples
from nnconform.imagenet import balanced_subset, imagenet_classes, load_imagenet_val

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _samples():
    smoke = load_imagenet_samples()
    folder = Path(smoke.source)
    files = sorted(folder.glob("imagenet_*_*.jpg"), key=lambda p: int(p.stem.split("_")[1]))
    return smoke, [(p, int(p.stem.split("_")[2])) for p in files]


def make_folder(root: Path, naming: str, all_classes: bool = False) -> Path:
    """``root/val/<class>/ILSVRC2012_val_<n>.JPEG``: the samples' own bytes, class folders by index or wnid."""
    _, samples = _samples()
    wnids = imagenet_classes().wnids
    name = (lambda c: str(c)) if naming == "index" else (lambda c: wnids[c])
    val = root / "val"
    if all_classes:
        for c in range(1000):
            (val / name(c)).mkdir(parents=True, exist_ok=True)
    for i, (path, label) in enumerate(samples):
        target = val / name(label) / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return root


def make_parquet(folder: Path, label_kind: str, shards: int = 2) -> Path:
    """Parquet shards with an ``image`` (bytes, path) and a ``label`` column (index or wnid)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, samples = _samples()
    folder.mkdir(parents=True)
    wnids = imagenet_classes().wnids
    per = (len(samples) + shards - 1) // shards
    for s in range(shards):
        part = samples[s * per:(s + 1) * per]
        images = [{"bytes": p.read_bytes(), "path": p.name} for p, _ in part]
        labels = [lab if label_kind == "index" else wnids[lab] for _, lab in part]
        pq.write_table(pa.table({"image": images, "label": labels}), folder / f"val-{s:05d}-of-{shards:05d}.parquet")
    return folder


@pytest.fixture(scope="module")
def lite0():
    from nnconform.anchors import get_anchor

    anchor = get_anchor("efficientnet-lite0")
    return anchor, anchor.build()


@pytest.fixture(scope="module")
def smoke_logits(lite0):
    from nnconform.evaluate import forward_logits

    anchor, model = lite0
    return forward_logits(model, load_imagenet_samples(), anchor.preprocess)


def _check_same_as_smoke(source, tmp_path, lite0, smoke_logits, **kwargs):
    from nnconform.evaluate import forward_logits

    anchor, model = lite0
    smoke, _ = _samples()
    ds = load_imagenet_val(str(source), cache_dir=tmp_path / "cache", workers=0, **kwargs)
    assert ds.labels.tolist() == smoke.labels.tolist()
    logits = forward_logits(model, ds, anchor.preprocess)
    assert torch.equal(logits, smoke_logits)
    assert int((logits.argmax(1) == ds.labels).sum()) == 18
    return ds


@pytest.mark.parametrize("naming,all_classes", [("index", True), ("index", False), ("wnid", False)],
                         ids=["index-1000-folders", "index-partial", "wnid-partial"])
def test_imagefolder_labels_and_result(tmp_path, lite0, smoke_logits, naming, all_classes):
    """Class-index folders (all 1000, mostly empty, or only the samples' classes) and wnid folders."""
    root = make_folder(tmp_path / "imagenet", naming, all_classes)
    ds = _check_same_as_smoke(root, tmp_path, lite0, smoke_logits)
    assert ds.source == str(root / "val") and ds.split == "val"


@pytest.mark.parametrize("label_kind", ["index", "wnid"])
def test_parquet_shards_labels_and_result(tmp_path, lite0, smoke_logits, label_kind):
    _check_same_as_smoke(make_parquet(tmp_path / "pq", label_kind), tmp_path, lite0, smoke_logits)


def test_val_folder_given_directly_and_parent_with_train(tmp_path):
    """``val/`` itself loads; a parent with train/ and val/ loads val, never train."""
    root = make_folder(tmp_path / "imagenet", "wnid")
    train = root / "train" / imagenet_classes().wnids[0]
    train.mkdir(parents=True)
    shutil.copyfile(next((root / "val").rglob("*.JPEG")), train / "n01440764_1.JPEG")
    for source in (root, root / "val"):
        ds = load_imagenet_val(str(source), cache_dir=tmp_path / "cache", workers=0)
        assert len(ds) == 20 and ds.source == str(root / "val")


def test_train_only_folder_is_refused(tmp_path):
    root = make_folder(tmp_path / "imagenet", "wnid")
    (root / "val").rename(root / "train")
    with pytest.raises(DatasetLoadError, match="holds train/ but no val/"):
        load_imagenet_val(str(root), cache_dir=tmp_path / "cache", workers=0)


@pytest.mark.parametrize("bad", ["cats", "1000", "n99999999"])
def test_unmappable_class_folder_fails_naming_it(tmp_path, bad):
    root = make_folder(tmp_path / "imagenet", "index" if bad.isdigit() else "wnid")
    some = next((root / "val").iterdir())
    some.rename(some.parent / bad)
    with pytest.raises(DatasetLoadError, match=bad) as info:
        load_imagenet_val(str(root), cache_dir=tmp_path / "cache", workers=0)
    assert str(root / "val") in str(info.value)


def test_one_class_folder_loads(tmp_path):
    """A single class folder keeps its true index (it raised a raw ValueError before)."""
    root = make_folder(tmp_path / "imagenet", "wnid")
    for d in list((root / "val").iterdir())[1:]:
        shutil.rmtree(d)
    ds = load_imagenet_val(str(root), cache_dir=tmp_path / "cache", workers=0)
    only = next((root / "val").iterdir()).name
    assert set(ds.labels.tolist()) == {imagenet_classes().wnids.index(only)}


def test_parquet_with_unmappable_labels_fails(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, samples = _samples()
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"image": [{"bytes": samples[0][0].read_bytes(), "path": "a.jpg"}], "label": ["cat"]}),
                   tmp_path / "pq" / "x.parquet")
    with pytest.raises(DatasetLoadError, match="'cat'"):
        load_imagenet_val(str(tmp_path / "pq"), cache_dir=tmp_path / "cache", workers=0)


def test_class_list_known_pairs():
    classes = imagenet_classes()
    assert len(classes.wnids) == 1000 and list(classes.wnids) == sorted(classes.wnids)
    assert (classes.wnids[0], classes.names[0]) == ("n01440764", "tench")
    assert (classes.wnids[207], classes.names[207]) == ("n02099601", "golden retriever")
    assert classes.wnids[999] == "n15075141"


def test_balanced_subset_is_fixed_and_balanced():
    labels = [i % 7 for i in range(70)] + [0] * 30  # class 0 has 40 images, the others 10
    chosen = balanced_subset(labels, 21)
    assert chosen == sorted(chosen) and balanced_subset(labels, 21) == chosen
    counts = [sum(1 for i in chosen if labels[i] == c) for c in range(7)]
    assert counts == [3] * 7
    assert len(balanced_subset(labels, 1000)) == 100
    with pytest.raises(ValueError, match="positive"):
        balanced_subset(labels, 0)


def test_subset_has_its_own_fingerprint(tmp_path):
    root = make_folder(tmp_path / "imagenet", "wnid")
    full = load_imagenet_val(str(root), cache_dir=tmp_path / "cache", workers=0)
    sub = load_imagenet_val(str(root), cache_dir=tmp_path / "cache", workers=0, subset=5)
    assert len(sub) == 5 and sub.fingerprint != full.fingerprint and sub.notes
    assert sub.labels.tolist() == [full.labels[i].item() for i in balanced_subset(full.labels.tolist(), 5)]
