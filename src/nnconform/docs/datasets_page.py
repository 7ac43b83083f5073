"""``datasets.md``: every public dataset the anchors use, where it comes from and how it is fingerprinted.

What a dataset *is* (its description and licence) is stated here once; everything the code pins (the
Debian folder, the hub id, the IDX sha256, the sizes, the foolbox layout, the calibration lists) is read
from :mod:`nnconform.data` and the compression plan, so it cannot drift. The content fingerprint of a
loaded dataset needs the data itself; it comes from a run's ``results.json`` (``--results``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .links import entry_href
from .markdown import entry_heading, header, table


@dataclass(frozen=True)
class DatasetInfo:
    """What a delegate cites for one dataset."""

    name: str
    what: str
    size: str
    split: str
    licence: str
    sources: tuple[str, ...]
    pinned: tuple[tuple[str, str], ...] = ()
    smoke: bool = False


def dataset_infos() -> list[DatasetInfo]:
    """The datasets nnconform loads (``nnconform.data.load_dataset`` names), with what the code pins."""
    from .. import data

    fm_sizes = getattr(data, "_FMNIST_SIZES", {"train": 60_000, "test": 10_000})
    return [
        DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, arXiv:1708.07747): 28x28 grey images of Zalando "
            f"articles in 10 classes ({', '.join(data.FMNIST_CLASSES)}).",
            f"{fm_sizes['train']:,} training and {fm_sizes['test']:,} test images",
            "anchors are evaluated on the test split; calibration and fine-tuning lists come from the training split",
            "MIT (Zalando Research)",
            (f"Debian package `dataset-fashion-mnist` (IDX files in `{data.FMNIST_SYSTEM_DIR}`)",
             "`--nnc-data-dir DIR` / `NNCONFORM_FMNIST_DIR`: a folder with the four IDX files (`.gz` or not)",
             f"Hugging Face hub `{data.FMNIST_HUB_ID}` through `datasets` (online only)"),
            tuple(sorted(data.FMNIST_SHA256.items()))),
        DatasetInfo(
            "imagenet-1k",
            "ImageNet-1k (ILSVRC 2012, Russakovsky et al. 2015): natural images in 1,000 classes; the validation "
            "split is what the torchvision and EfficientNet-Lite anchors document their top-1 on.",
            "50,000 validation images", "validation",
            "ImageNet terms of access (research, non-commercial); not redistributed by nnconform",
            ("`--nnc-imagenet SOURCE`: a Hugging Face hub id (e.g. `ILSVRC/imagenet-1k`, gated, online), a local "
             "imagefolder (`val/<class-index or wnid>/*.JPEG`) or parquet shards",)),
        DatasetInfo(
            "imagenet-samples",
            "20 labelled ImageNet validation images shipped in the `foolbox` wheel's `data/` folder "
            "(`imagenet_<index>_<label>.jpg`; read as files, foolbox is never imported). Too small to measure "
            "accuracy: a **smoke set**, used in place of ImageNet-1k when `--nnc-imagenet` is not given.",
            "20 images", "validation (10 even positions calibrate, the 10 others evaluate compressed models)",
            "ImageNet terms of access, as redistributed by foolbox (MIT)",
            ("PyPI wheel `foolbox` (installed `--no-deps` by `make setup`)",), smoke=True),
    ] + _speech_infos() + _detection_infos()


def _detection_infos() -> list[DatasetInfo]:
    """The detection set composed from Fashion-MNIST (:mod:`nnconform.detection.data`)."""
    from ..detection import data as dd

    (n_train, seed_train), (n_test, seed_test) = dd.SPLITS["train"], dd.SPLITS["test"]
    return [DatasetInfo(
        dd.MOSAIC_DATASET,
        f"{dd.DESCRIPTION}: {dd.SIZE}x{dd.SIZE} grey canvases with 1-{dd.MAX_ITEMS} Fashion-MNIST items each, "
        f"scaled by a log-uniform factor in {dd.SCALE_RANGE}, placed at random (overlap IoU <= {dd.MAX_IOU}), "
        "composited by the pixel maximum; boxes are each item's tight extent, classes its Fashion-MNIST class. "
        "Synthetic: not COCO, and its mAP is not comparable with COCO figures.",
        f"{n_train:,} training canvases (seed {seed_train}, items from Fashion-MNIST train) and {n_test:,} test "
        f"canvases (seed {seed_test}, items from Fashion-MNIST test)", "test",
        "MIT (built from Fashion-MNIST, Zalando Research)",
        ("composed in memory from the Fashion-MNIST files (see `fashion-mnist`)",)), _coco_info()]


def _coco_info() -> DatasetInfo:
    """COCO val2017 from the user's folder (:mod:`nnconform.detection.coco`)."""
    from ..detection import coco

    return DatasetInfo(
        coco.COCO_DATASET,
        "COCO 2017 validation (Lin et al. 2014, cocodataset.org): natural images with boxes of 80 object "
        "categories, the set torchvision's detectors document their box mAP on. Labels are COCO category ids "
        "(torchvision's 91-index label space: 'person' = 1 ... 'toothbrush' = 90), checked against torchvision's "
        "list by id and name; boxes `[x, y, w, h]` become `x1, y1, x2, y2`; crowd regions (`iscrowd`) are no "
        "ground truth and a detection on one is ignored, as COCOeval does. Images in image-id order; "
        "`--nnc-coco-subset N` evaluates the first N (labelled a subset).",
        f"{coco.DOCUMENTED_EVAL_SIZE:,} validation images (36,781 annotated objects, crowd regions included)", "val2017",
        "annotations CC BY 4.0 (COCO Consortium); images under their Flickr licences; not redistributed",
        (f"`--nnc-coco DIR` / `{coco.ENV_VAR}`: a folder holding `{coco.IMAGES}/*.jpg` and `{coco.ANNOTATIONS}` "
         "(`val2017.zip` and `annotations_trainval2017.zip`); nothing is downloaded, a folder that does not load "
         "fails the COCO cases naming the file",))


def _speech_infos() -> list[DatasetInfo]:
    """The speech datasets (:mod:`nnconform.speech`), with what the code pins."""
    from ..speech import data as sd, synth

    train, test = synth.RECIPES["train"], synth.RECIPES["test"]
    return [
        DatasetInfo(
            "espeak-synth",
            f"Synthetic English speech generated offline with Debian's `espeak-ng`: sentences of {test.min_words}-"
            f"{test.max_words} words drawn (seeded) from a fixed {len(synth.WORDS)}-word vocabulary, at most "
            f"{test.max_seconds:g} s each, 16 kHz. Training voices: accents {', '.join(train.accents)} x variants "
            f"{', '.join(train.variants)}; HELD-OUT test voices (no accent or variant heard in training): accents "
            f"{', '.join(test.accents)} x variants {', '.join(test.variants)}. The cache key and the fingerprint "
            "include the espeak-ng version: another release makes another corpus.",
            f"{train.count:,} training and {test.count:,} test utterances", "test (held-out voices)",
            "generated by nnconform (espeak-ng is GPL-3.0; its output is not covered)",
            ("Debian package `espeak-ng`; generated once into the cache (`<cache>/speech/`)",)),
        DatasetInfo(
            "librivox-smoke",
            "The five LibriVox utterances (one reader, *Sense and Sensibility*) of Debian's `pocketsphinx-testdata`, "
            "laid out as a LibriSpeech folder and read by the LibriSpeech loader. Real speech, far from the "
            "synthetic training voices: a **smoke set**.",
            "5 utterances (about 25 s)", "test", "BSD (CMU Sphinx test data)",
            (f"Debian package `pocketsphinx-testdata` (`{sd.POCKETSPHINX_LIBRIVOX}`)",), smoke=True),
        DatasetInfo(
            "librispeech",
            "LibriSpeech (Panayotov et al. 2015): read English audiobook speech, 16 kHz FLAC with transcripts.",
            "test-clean 2,620 and test-other 2,939 utterances", "test-clean (test-other on request)", "CC BY 4.0",
            (f"`{sd.LIBRISPEECH_ENV}`: a folder holding `LibriSpeech/<split>/<speaker>/<chapter>/*.flac` and "
             "`*.trans.txt` (OpenSLR resource 12)",
             f"Hugging Face hub `{sd.LIBRISPEECH_HUB_ID}` (config `clean`/`other`, split `test`) through `datasets` "
             "(online only)")),
    ]


def _users(name: str, anchors: dict) -> list[str]:
    used = sorted(n for n, a in anchors.items() if a.dataset == name)
    if name == "imagenet-samples":  # the smoke stand-in for an ImageNet anchor whose weights are offline
        from .anchors_page import FAMILY_SOURCES

        used = sorted(n for n, a in anchors.items()
                      if a.dataset == "imagenet-1k" and FAMILY_SOURCES.get(a.family, ("", False))[1])
    return used


def _calibration_rows() -> list[list]:
    from ..compress.plan import load_plan
    from ..hashing import sha256_bytes

    rows = []
    for key, spec in sorted(load_plan().calibration.items()):
        digest = sha256_bytes(",".join(str(i) for i in spec.indices).encode())
        rows.append([key, spec.source or spec.dataset, spec.split, len(spec.indices), spec.rule, f"`{digest}`"])
    return rows


def datasets_page(anchors: dict, measured: dict | None = None) -> str:
    """The page: one entry per dataset, the calibration lists, and fingerprints measured by a run if given."""
    measured = measured or {}
    lines = header("Datasets", "The public datasets the anchors are evaluated on (`nnconform.data`). Every "
                   "loaded dataset gets a content fingerprint (sha256 of the decoded images and labels) that goes "
                   "into every report and every cache key.")
    for info in dataset_infos():
        users = _users(info.name, anchors)
        rows = [["what it is", info.what], ["size", info.size], ["split used", info.split],
                ["licence", info.licence], ["kind", "smoke set only" if info.smoke else "evaluation set"],
                ["where it comes from", "; ".join(info.sources)],
                ["used by", ", ".join(f"[{u}]({entry_href('anchor', u)})" for u in users) or "-"]]
        fp = measured.get(info.name)
        rows.append(["fingerprint (measured)",
                     f"`{fp['fingerprint']}` ({fp['samples']:,} samples, {fp['source']})" if fp
                     else "computed on load; given with `--results RUN/results.json`"])
        lines += entry_heading(2, f"`{info.name}`", "dataset", info.name) + [table(["field", "value"], rows), ""]
        if info.pinned:
            lines += ["Pinned content sha256 (of the decompressed IDX files; a copy that differs is used and "
                      "reported):", "", table(["file", "sha256"], [[f, f"`{h}`"] for f, h in info.pinned]), ""]
    lines += ["## Calibration lists", "",
              "Images compression methods calibrate or fine-tune on (`anchors/compression.toml`, `[calibration]`); "
              "never test images. The digest is the sha256 of the comma-separated indices.", "",
              table(["list", "dataset", "split", "images", "rule", "indices sha256"], _calibration_rows()), ""]
    return "\n".join(lines).rstrip() + "\n"
