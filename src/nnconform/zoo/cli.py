"""``python -m nnconform.zoo``: build the embedded zoo, or rebuild it elsewhere and compare.

* ``build [--only NAME ...] [--out DIR] [--force]`` trains into the anchors folder (or ``DIR``)
  and refuses to overwrite checkpoints that are already there unless ``--force``.
* ``compare --into DIR [--only NAME ...]`` trains into an empty ``DIR`` and prints, per
  checkpoint, whether its sha256 equals the committed one and the top-1 difference. The recipe is
  bit-reproducible on one machine only (see ``anchors/zoo.toml``); across x86-64 machines the
  stated bands are :data:`TOP1_BAND_FINAL` and :data:`TOP1_BAND_INTERMEDIATE`, and the exit status
  says whether the rebuild stayed inside them.

Exit status: 0 done (compare: every checkpoint inside the band), 1 compare found a checkpoint
outside the band, 2 refused (bad names, files in the way, nothing to compare with).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..paths import anchors_dir, read_toml

#: Across x86-64 machines a rebuilt checkpoint's test top-1 stays within these of the committed one
#: (absolute, as fractions: 0.005 = 0.5 percentage points): the final checkpoints (the anchor's
#: weights and the fine-tuned update) closely; the intermediate epochs, taken mid-schedule at a high
#: learning rate, more loosely. Measured figures: README "The embedded zoo: reproducible to a band".
TOP1_BAND_FINAL = 0.005
TOP1_BAND_INTERMEDIATE = 0.02


class Refused(Exception):
    """The command would do something harmful or pointless; the message says what and why."""


def _known() -> list[str]:
    from .asr_recipe import ASR_RECIPES
    from .build import RECIPES
    from .det_recipe import DET_RECIPES

    return [r.anchor for r in RECIPES] + [r.anchor for r in ASR_RECIPES] + [r.anchor for r in DET_RECIPES]


def select(only: list[str] | None) -> list[str]:
    """The anchors to build: all of them, or the ``--only`` names (which must all be known)."""
    known = _known()
    if only is None:
        return known
    if not only:
        raise Refused(f"--only needs at least one anchor name; known: {', '.join(known)}")
    unknown = [n for n in only if n not in known]
    if unknown:
        raise Refused(f"--only: unknown anchor name(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [n for n in known if n in only]


def existing_outputs(root: Path, names: list[str]) -> list[Path]:
    """Checkpoint files a build of ``names`` into ``root`` would overwrite."""
    return sorted(p for n in names for p in (root / "zoo" / n).glob("*.safetensors"))


def check_target(root: Path, names: list[str], force: bool) -> None:
    """Refuse to overwrite existing checkpoints (the committed ones above all) without ``--force``."""
    in_the_way = existing_outputs(root, names)
    if in_the_way and not force:
        shown = ", ".join(str(p) for p in in_the_way[:3]) + (f" and {len(in_the_way) - 3} more" if len(in_the_way) > 3 else "")
        raise Refused(f"{len(in_the_way)} checkpoint file(s) already exist ({shown}); building would overwrite "
                      f"them. Pass --force to rebuild in place, or compare a rebuild with "
                      f"`python -m nnconform.zoo compare --into DIR`")


def _build(root: Path, names: list[str]) -> None:
    import torch

    from .build import RECIPES, build_anchor, update_manifest

    # One thread: the same bytes on every run of a machine, and no thread oversubscription when
    # several anchors are built in parallel (`--only A & --only B`).
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"building {', '.join(names)} into {root} (torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()})", flush=True)
    for recipe in RECIPES:
        if recipe.anchor in names:
            update_manifest(recipe.anchor, build_anchor(recipe, root / "zoo"), root / "zoo.toml")
    from ..paths import default_cache_dir
    from .asr_recipe import ASR_RECIPES, build_asr_anchor

    for asr in ASR_RECIPES:  # the speech corpus is generated once into the cache (NNCONFORM_CACHE_DIR)
        if asr.anchor in names:
            update_manifest(asr.anchor, build_asr_anchor(asr, root / "zoo", default_cache_dir()), root / "zoo.toml")
    from .det_recipe import DET_RECIPES, build_det_anchor

    for det in DET_RECIPES:  # the Fashion-MNIST mosaics are composed in memory from the Fashion-MNIST files
        if det.anchor in names:
            update_manifest(det.anchor, build_det_anchor(det, root / "zoo"), root / "zoo.toml")


def band_for(entry: dict, checkpoint: dict) -> float:
    """The top-1 band of one checkpoint: final (the anchor's weights, the fine-tuned update) or not."""
    final = checkpoint.get("path") == entry.get("weights") or checkpoint["name"] == "finetune"
    return TOP1_BAND_FINAL if final else TOP1_BAND_INTERMEDIATE


def compare_manifests(committed: dict, rebuilt: dict, names: list[str]) -> list[dict]:
    """One row per committed checkpoint of ``names``: sha256 equal, top-1 both ways, inside its band."""
    rows = []
    for name in names:
        mine = {c["name"]: c for c in rebuilt.get(name, {}).get("checkpoints", [])}
        for ck in committed[name]["checkpoints"]:
            other = mine.get(ck["name"])
            band = band_for(committed[name], ck)
            # ASR checkpoints document their WER, detection checkpoints their mAP, in the same band
            metric = "wer" if "wer" in ck else "map" if "map" in ck else "top1"
            row = {"anchor": name, "checkpoint": ck["name"], "committed_top1": ck[metric],
                   "rebuilt_top1": other[metric] if other else None, "band": band,
                   "same_sha256": bool(other) and other["sha256"] == ck["sha256"]}
            row["top1_diff"] = None if other is None else round(other[metric] - ck[metric], 6)
            row["inside_band"] = row["top1_diff"] is not None and abs(row["top1_diff"]) <= band + 1e-9
            rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    """A plain table for the terminal."""
    lines = [f"{'anchor':<20} {'checkpoint':<10} {'sha256':<9} {'committed':>9} {'rebuilt':>9} {'diff (pp)':>9} "
             f"{'band':>6}"]
    for r in rows:
        rebuilt = "missing" if r["rebuilt_top1"] is None else f"{100 * r['rebuilt_top1']:.2f}"
        diff = "" if r["top1_diff"] is None else f"{100 * r['top1_diff']:+.2f}"
        flag = "" if r["inside_band"] else "  OUTSIDE BAND"
        lines.append(f"{r['anchor']:<20} {r['checkpoint']:<10} {'equal' if r['same_sha256'] else 'differs':<9} "
                     f"{100 * r['committed_top1']:>9.2f} {rebuilt:>9} {diff:>9} {100 * r['band']:>5.1f}{flag}")
    return "\n".join(lines)


def _compare(into: Path, names: list[str], force: bool) -> int:
    committed_root = anchors_dir()
    if into.resolve() == committed_root.resolve():
        raise Refused(f"--into {into} is the committed anchors folder; give another folder")
    committed = read_toml(committed_root / "zoo.toml").get("anchors", {})
    missing = [n for n in names if n not in committed]
    if missing:
        raise Refused(f"{committed_root / 'zoo.toml'} has no entry for {', '.join(missing)}: nothing to compare with")
    check_target(into, names, force)
    _build(into, names)
    rows = compare_manifests(committed, read_toml(into / "zoo.toml")["anchors"], names)
    print(format_rows(rows))
    same = sum(r["same_sha256"] for r in rows)
    outside = [r for r in rows if not r["inside_band"]]
    print(f"{same} of {len(rows)} checkpoints bit-identical; {len(outside)} outside their top-1 band "
          f"(+/-{100 * TOP1_BAND_FINAL:.1f} pp final, +/-{100 * TOP1_BAND_INTERMEDIATE:.1f} pp intermediate epochs)")
    return 1 if outside else 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m nnconform.zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train the zoo and write zoo.toml (committed checkpoints need --force)")
    b.add_argument("--only", nargs="*", metavar="NAME", help="anchor names to (re)build; others keep their entry")
    b.add_argument("--out", type=Path, default=None, help="anchors folder (default: the one nnconform reads)")
    b.add_argument("--force", action="store_true", help="overwrite checkpoints that already exist")
    c = sub.add_parser("compare", help="rebuild into another folder and compare with the committed checkpoints")
    c.add_argument("--into", type=Path, required=True, help="folder to rebuild into (empty, or --force)")
    c.add_argument("--only", nargs="*", metavar="NAME", help="anchor names to rebuild (default: all)")
    c.add_argument("--force", action="store_true", help="overwrite checkpoints already in --into")
    args = parser.parse_args(argv)
    try:
        names = select(args.only)
        if args.cmd == "compare":
            return _compare(args.into, names, args.force)
        root = args.out or anchors_dir()
        check_target(root, names, args.force)
        _build(root, names)
        return 0
    except Refused as exc:
        print(f"python -m nnconform.zoo {args.cmd}: {exc}", file=sys.stderr)
        return 2
