"""AIMET model compression, exactly the SA4-documented path: ``ModelCompressor.compress_model``.

Spatial SVD, channel pruning and weight SVD in auto mode: greedy per-layer ratio selection
(``GreedySelectionParameters``), cost metric MAC, an eval callback that scores top-1 on a fixed
slice of the calibration set (1,000 images, so scores move in 0.1% steps) with AIMET's monotonic
fit of each layer's scores (so the binary search over scores is not decided by ties). As AIMET's
examples do, the plan leaves each anchor's first conv out (``ignore``). Whether the search reached
its target is judged by the engine (``compression.target_reached``: the decoded model's MACs over
the anchor's), never assumed. AIMET recommends fine-tuning after compression: ``finetune_epochs``
> 0 trains the compressed model on the calibration list (training split) for that many epochs
before it is serialized; the plan runs it as separate operating points ("<target>+ft"), beside the
"as compressed" ones. The compressed model is serialized as its structure changes (the layers
AIMET split or pruned, as JSON over plain torch layers) plus float32 safetensors.

AIMET writes ``./data/`` (its greedy eval-score pickles) into the working directory, so every call
runs inside a private temporary folder (:func:`aimet_workdir`), never the repository or the user's
folder. The per-layer eval scores do not depend on the target ratio; they are kept as JSON in the
cache (keyed by model, scheme and calibration) and handed back to AIMET for the other ratios, so
three target ratios cost one sweep. The hand-off file AIMET reads is written by this module from
that validated JSON, in the private folder, just before the call: no pickle from disk is trusted.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import pickle
import threading
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import torch
from torch import nn

from ..engine.device import device_key_part
from ..hashing import module_sha256, sha256_bytes
from ..kit import register_method
from ..progress import Progress
from .base import (CompressedModel, CompressionContext, CompressionError, Compressor, CompressorConfig,
                   CompressorUnavailable)
from .baselines import decode_float_model, encode_float_model

_CWD_LOCK = threading.Lock()
SCHEMES = {"aimet-ssvd": "spatial_svd", "aimet-cp": "channel_pruning", "aimet-wsvd": "weight_svd"}


@contextlib.contextmanager
def aimet_workdir(folder: Path):
    """chdir into ``folder`` for the duration (AIMET writes ``./data``); restores the old CWD."""
    folder.mkdir(parents=True, exist_ok=True)
    with _CWD_LOCK:
        old = os.getcwd()
        os.chdir(folder)
        try:
            yield folder
        finally:
            os.chdir(old)


def quiet_aimet() -> None:
    """AIMET logs every eval score at INFO; keep warnings only."""
    try:
        from aimet_torch.common.utils import AimetLogger

        AimetLogger.set_level_for_all_areas(logging.WARNING)
    except Exception:  # logging is cosmetic; never fail a case over it
        pass


def _import_aimet_compress():
    try:
        from aimet_torch.compress import ModelCompressor
        from aimet_torch.common import defs as cdefs
        from aimet_torch import defs as tdefs
    except ImportError as exc:
        raise CompressorUnavailable(f"AIMET compression needs aimet-torch==2.42.0 ({exc}); "
                                    f"`pip install aimet-torch==2.42.0`") from None
    quiet_aimet()
    return ModelCompressor, cdefs, tdefs


@dataclass(frozen=True)
class AimetCompressionConfig(CompressorConfig):
    """AIMET auto-mode compression with greedy selection.

    ``target_ratio``: compressed cost / original cost (MAC); ``num_candidates``: per-layer ratio
    candidates (AIMET's default 10); ``eval_samples``: calibration images the eval callback scores;
    ``use_monotonic_fit``: AIMET's monotonic fit of each layer's eval scores before the search;
    ``ignore``: module names left uncompressed (AIMET's examples leave the first conv out);
    ``multiplicity``: rank/channel rounding; ``finetune_epochs``: epochs of fine-tuning on the
    calibration list (training split) after compression (0: as compressed), SGD with momentum 0.9
    at ``finetune_lr``, batches of ``finetune_batch_size``, seeded.
    """

    target_ratio: float = 0.5
    num_candidates: int = 10
    eval_samples: int = 1000
    cost_metric: str = "mac"
    ignore: tuple[str, ...] = ()
    multiplicity: int = 1
    use_monotonic_fit: bool = True
    finetune_epochs: int = 0
    finetune_lr: float = 0.001
    finetune_batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_range("target_ratio", 0.0, 1.0, lo_open=True, hi_open=True)
        self._check_range("num_candidates", 2, 100)
        self._check_range("eval_samples", 1, 100_000)
        self._check_choice("cost_metric", ("mac", "memory"))
        self._check_range("multiplicity", 1, 1024)
        self._check_range("finetune_epochs", 0, 1000)
        self._check_range("finetune_lr", 0.0, 1.0, lo_open=True)
        self._check_range("finetune_batch_size", 1, 4096)
        if not all(isinstance(n, str) for n in self.ignore):
            raise ValueError(f"{self.method}: ignore must be a list of module names, got {self.ignore!r}")


def _eval_scores_key(model: nn.Module, config: AimetCompressionConfig, ctx: CompressionContext) -> str:
    spec = config.to_dict()
    for name in ("target_ratio", "finetune_epochs", "finetune_lr", "finetune_batch_size"):
        spec.pop(name)  # the per-layer scores do not depend on the target or on what happens after
    spec.update(model=module_sha256(model), calibration=ctx.calibration.fingerprint,
                **device_key_part(ctx.device))  # a GPU scores with other float bits; CPU keys stay as they were
    return sha256_bytes(json.dumps(spec, sort_keys=True).encode())[:24]


def _scores_store(ctx: CompressionContext):
    """The store of per-layer eval scores in the run's cache (None without a cache)."""
    from ..store import ContentStore

    return ContentStore(ctx.cache_dir / "aimet-eval-scores", "AIMET eval-score cache") if ctx.cache_dir else None


def _parse_eval_scores(raw) -> dict[str, dict[Decimal, float]]:
    """``{layer: {ratio: score}}`` from JSON, every ratio a Decimal and every score a float in [0, 1]."""
    scores = {str(layer): {Decimal(str(r)): float(s) for r, s in table.items()} for layer, table in raw.items()}
    bad = [(layer, str(r), s) for layer, table in scores.items() for r, s in table.items() if not 0.0 <= s <= 1.0]
    if bad:
        raise ValueError(f"eval scores must be top-1 fractions in [0, 1]: {bad[:3]}")
    if not scores:
        raise ValueError("no layers")
    return scores


def _read_eval_scores(store, key: str) -> dict[str, dict[Decimal, float]] | None:
    """The cached per-layer eval scores, verified (checksum) and validated; None when absent or corrupt."""
    entry = store.get(key)
    if entry is None:
        return None
    try:
        return _parse_eval_scores(json.loads(entry.files["scores.json"]))
    except (KeyError, ValueError, TypeError, AttributeError, ArithmeticError) as exc:
        store.report_corrupt(key, f"{type(exc).__name__}: {exc}")
        return None


def _write_eval_scores(store, key: str, scores: dict) -> None:
    data = json.dumps({layer: {str(r): float(s) for r, s in table.items()} for layer, table in scores.items()},
                      indent=1, sort_keys=True)
    store.put(key, {"scores.json": data.encode()})


class AimetCompressor(Compressor):
    """Shared base of the three AIMET compression schemes (each registers itself with its own ``Config``)."""

    def _scheme_params(self, model, config, ctx, greedy, cdefs, tdefs, ignore_modules):
        raise NotImplementedError

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressedModel:
        """``ModelCompressor.compress_model`` in auto mode on ``ctx.device`` (AIMET builds its dummy input on the
        model's device); the artifact is structure changes + float32 safetensors, written from the CPU."""
        config = self.config
        ModelCompressor, cdefs, tdefs = _import_aimet_compress()
        reference = copy.deepcopy(model).eval()
        work = copy.deepcopy(model).eval().to(ctx.device)
        named = dict(work.named_modules())
        missing = [n for n in config.ignore if n not in named]
        if missing:
            raise CompressionError(f"{self.name}: ignore lists {missing}, which the model does not have")
        ignore_modules = [named[n] for n in config.ignore]

        x_eval, y_eval = ctx.calibration.take(config.eval_samples)
        x_eval, y_eval = x_eval.to(ctx.device), y_eval.to(ctx.device)  # the greedy search scores on the device

        line = Progress(f"{self.name} {config.target_ratio}: greedy search, candidates scored")

        def eval_callback(m: nn.Module, iterations=None, use_cuda=False) -> float:
            m.eval()
            with torch.no_grad():
                hits = 0
                for start in range(0, len(x_eval), 256):
                    hits += int((m(x_eval[start:start + 256]).argmax(1) == y_eval[start:start + 256]).sum())
            line.update(note=f"last top-1 {hits / len(x_eval):.3f}")
            return hits / len(x_eval)

        scores_store = _scores_store(ctx)
        scores_key = f"{self.name}-{_eval_scores_key(model, config, ctx)}"
        cached = _read_eval_scores(scores_store, scores_key) if scores_store else None
        with aimet_workdir(ctx.workdir / "aimet") as folder:
            saved = None
            if cached is not None:
                saved = str(folder / "eval_scores_from_cache.pkl")
                with open(saved, "wb") as f:  # built here from validated JSON, read once by AIMET
                    pickle.dump(cached, f)
            greedy = cdefs.GreedySelectionParameters(target_comp_ratio=Decimal(str(config.target_ratio)),
                                                     num_comp_ratio_candidates=config.num_candidates,
                                                     use_monotonic_fit=config.use_monotonic_fit,
                                                     saved_eval_scores_dict=saved)
            scheme, params = self._scheme_params(work, config, ctx, greedy, cdefs, tdefs, ignore_modules)
            cost = cdefs.CostMetric.mac if config.cost_metric == "mac" else cdefs.CostMetric.memory
            try:
                compressed, stats = ModelCompressor.compress_model(
                    work, eval_callback=eval_callback, eval_iterations=1, input_shape=(1, *ctx.input_shape),
                    compress_scheme=scheme, cost_metric=cost, parameters=params)
            except (CompressionError, CompressorUnavailable):
                raise
            except Exception as exc:
                raise CompressionError(f"AIMET {SCHEMES[self.name]} failed: {type(exc).__name__}: {exc}") from exc
            finally:
                line.close()
            if cached is None and scores_store is not None:
                fresh = _read_aimet_eval_scores(folder / "data" / "greedy_selection_eval_scores_dict.pkl")
                if fresh:
                    _write_eval_scores(scores_store, scores_key, fresh)
        finetune = finetune_on_calibration(compressed, ctx, config) if config.finetune_epochs else None
        compressed = compressed.eval().to("cpu")  # the artifact (and the module the engine probes) on the CPU
        artifact = encode_float_model(compressed, reference, fmt="safetensors+structure",
                                      extra_header={"aimet_scheme": SCHEMES[self.name]})
        return CompressedModel(compressed, artifact, artifact.nbytes, metadata={
            "aimet_stats": _stats_dict(stats), "eval_scores_cached": cached is not None,
            "eval_samples": len(x_eval), "use_monotonic_fit": config.use_monotonic_fit,
            "ignored": list(config.ignore), "target_ratio": config.target_ratio, "finetune": finetune})

    def decode(self, artifact, template, ctx) -> nn.Module:
        """The restructured float model back onto the template."""
        return decode_float_model(artifact, template)


def finetune_on_calibration(model: nn.Module, ctx: CompressionContext, config) -> dict:
    """Fine-tune ``model`` in place, as AIMET recommends after compression: ``config.finetune_epochs`` epochs of
    SGD (momentum 0.9, ``finetune_lr``) with cross-entropy on the calibration list (training split, never the
    test set), shuffled by a seeded generator. Returns what was done and the training loss per epoch."""
    x, y = ctx.calibration.take(None)
    x, y = x.to(ctx.device), y.to(ctx.device)  # the model is on ctx.device; the shuffle stays a CPU generator
    generator = torch.Generator().manual_seed(ctx.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.finetune_lr, momentum=0.9)
    losses = []
    model.train()
    for _ in range(config.finetune_epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), config.finetune_batch_size):
            idx = order[start:start + config.finetune_batch_size].to(ctx.device)
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss) * len(idx)
        losses.append(total / len(x))
    model.eval()
    return {"epochs": config.finetune_epochs, "samples": len(x), "split": ctx.calibration.split,
            "data": ctx.calibration.description or ctx.calibration.dataset, "lr": config.finetune_lr,
            "optimizer": "SGD momentum 0.9", "batch_size": config.finetune_batch_size, "train_loss": losses}


class _ScoresUnpickler(pickle.Unpickler):
    """Reads AIMET's eval-score file allowing only ``decimal.Decimal`` besides plain builtins."""

    def find_class(self, module, name):
        if (module, name) == ("decimal", "Decimal"):
            return Decimal
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an eval-score file")


def _read_aimet_eval_scores(path: Path) -> dict[str, dict[Decimal, float]] | None:
    """The raw per-layer scores AIMET just wrote in the private folder, read without executing code."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            raw = _ScoresUnpickler(f).load()
        return {str(layer): {Decimal(str(r)): float(s) for r, s in table.items()} for layer, table in raw.items()}
    except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, EOFError, ArithmeticError):
        return None


def _stats_dict(stats) -> dict:
    out = {}
    for key in ("baseline_model_accuracy", "compressed_model_accuracy", "memory_compression_ratio",
                "mac_compression_ratio"):
        value = getattr(stats, key, None)
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            out[key] = None
    sel = getattr(stats, "compression_ratio_selection_stats", None)
    layers = getattr(sel, "selected_comp_ratios", None) or getattr(stats, "per_layer_stats", None) or []
    per_layer = {}
    for item in layers:
        name = getattr(item, "name", None) or getattr(getattr(item, "layer", None), "name", None)
        ratio = getattr(item, "comp_ratio", None) or getattr(item, "compression_ratio", None)
        if name is not None:
            per_layer[str(name)] = None if ratio is None else float(ratio)
    if per_layer:
        out["per_layer_ratio"] = per_layer
    return out


@register_method("compressor", "aimet-ssvd")
class AimetSpatialSvd(AimetCompressor):
    """AIMET spatial SVD (auto mode, greedy selection, MAC cost).

    Spatial SVD factorizes each k x k convolution into a k x 1 convolution to a chosen number of
    intermediate channels (the rank) followed by a 1 x k convolution, the low-rank expansion of
    Jaderberg, Vedaldi and Zisserman, "Speeding up Convolutional Neural Networks with Low Rank
    Expansions" (BMVC 2014), as AIMET implements it (Qualcomm AIMET user guide, "Spatial SVD"). In
    auto mode AIMET's greedy compression-ratio selection scores each layer at ``num_candidates``
    ratios with the eval callback and picks per-layer ratios that reach ``target_ratio`` of the
    model's MACs at the least loss of score. nnconform then checks the decoded model's MACs
    (``compression.target_reached``) and its accuracy against the anchor.
    """

    reference = """ModelCompressor.compress_model(model, eval_callback=<top-1 on the first eval_samples images of the
    calibration list>, eval_iterations=1, input_shape=(1, *anchor.input_shape), compress_scheme=CompressionScheme.spatial_svd,
    cost_metric=CostMetric.mac (cost_metric="memory": CostMetric.memory), parameters=SpatialSvdParameters(
    SpatialSvdParameters.Mode.auto, SpatialSvdParameters.AutoModeParams(GreedySelectionParameters(
    target_comp_ratio=Decimal(target_ratio), num_comp_ratio_candidates=num_candidates,
    use_monotonic_fit=use_monotonic_fit, saved_eval_scores_dict=<cached per-layer scores, or None>),
    modules_to_ignore=<the modules named in ignore>), multiplicity=multiplicity))

Run in a private temporary folder; fine-tuned afterwards when ``finetune_epochs`` > 0."""

    @dataclass(frozen=True)
    class Config(AimetCompressionConfig):
        """AIMET spatial SVD: each k x k conv becomes a k x 1 then a 1 x k conv of a chosen rank."""

    description = "AIMET ModelCompressor.compress_model: spatial SVD, greedy selection, cost metric MAC"

    def _scheme_params(self, model, config, ctx, greedy, cdefs, tdefs, ignore_modules):
        p = tdefs.SpatialSvdParameters(tdefs.SpatialSvdParameters.Mode.auto,
                                       tdefs.SpatialSvdParameters.AutoModeParams(greedy, ignore_modules),
                                       multiplicity=config.multiplicity)
        return cdefs.CompressionScheme.spatial_svd, p


@register_method("compressor", "aimet-wsvd")
class AimetWeightSvd(AimetCompressor):
    """AIMET weight SVD (auto mode, greedy rank selection, MAC cost).

    Weight SVD replaces each convolution or linear layer by two: the first with the layer's kernel and
    a chosen number of output channels (the rank), the second a 1 x 1 convolution (or linear layer)
    back to the original channels, from the truncated SVD of the weight matrix. This is the
    low-rank decomposition of Zhang, Zou, He and Sun, "Accelerating Very Deep Convolutional Networks
    for Classification and Detection" (IEEE TPAMI 2016), as AIMET implements it (AIMET user guide,
    "Weight SVD"); ranks are chosen per layer by AIMET's greedy selection to reach ``target_ratio``
    of the MACs.
    """

    reference = """ModelCompressor.compress_model(model, eval_callback=<top-1 on the first eval_samples images of the
    calibration list>, eval_iterations=1, input_shape=(1, *anchor.input_shape), compress_scheme=CompressionScheme.weight_svd,
    cost_metric=CostMetric.mac (cost_metric="memory": CostMetric.memory), parameters=WeightSvdParameters(
    WeightSvdParameters.Mode.auto, WeightSvdParameters.AutoModeParams(RankSelectScheme.greedy,
    GreedySelectionParameters(target_comp_ratio=Decimal(target_ratio), num_comp_ratio_candidates=num_candidates,
    use_monotonic_fit=use_monotonic_fit, saved_eval_scores_dict=<cached scores, or None>),
    modules_to_ignore=<the modules named in ignore>), multiplicity=multiplicity))

Run in a private temporary folder; fine-tuned afterwards when ``finetune_epochs`` > 0."""

    @dataclass(frozen=True)
    class Config(AimetCompressionConfig):
        """AIMET weight SVD: each conv/linear becomes two of a chosen rank (1 x 1 second factor)."""

    description = "AIMET ModelCompressor.compress_model: weight SVD, greedy rank selection, cost metric MAC"

    def _scheme_params(self, model, config, ctx, greedy, cdefs, tdefs, ignore_modules):
        p = tdefs.WeightSvdParameters(tdefs.WeightSvdParameters.Mode.auto,
                                      tdefs.WeightSvdParameters.AutoModeParams(cdefs.RankSelectScheme.greedy,
                                                                               greedy, ignore_modules),
                                      multiplicity=config.multiplicity)
        return cdefs.CompressionScheme.weight_svd, p


@register_method("compressor", "aimet-cp")
class AimetChannelPruning(AimetCompressor):
    """AIMET channel pruning (auto mode, greedy selection, MAC cost, reconstruction on calibration).

    Channel pruning removes input channels of each convolution (and the matching output channels of
    the layer feeding it), choosing the channels to keep and then reconstructing the remaining
    weights by least squares so that the layer's output on sampled feature-map positions stays as
    close as possible to the original's: the method of He, Zhang and Sun, "Channel Pruning for
    Accelerating Very Deep Neural Networks" (ICCV 2017), as AIMET implements it (AIMET user guide,
    "Channel Pruning": channel selection, winnowing, weight reconstruction). Per-layer ratios come
    from AIMET's greedy selection to reach ``target_ratio`` of the MACs.
    """

    reference = """ModelCompressor.compress_model(model, eval_callback=<top-1 on the first eval_samples images of the
    calibration list>, eval_iterations=1, input_shape=(1, *anchor.input_shape), compress_scheme=CompressionScheme.channel_pruning,
    cost_metric=CostMetric.mac (cost_metric="memory": CostMetric.memory), parameters=ChannelPruningParameters(
    <calibration loader: batches of batch_size training images>, num_reconstruction_samples=reconstruction_samples,
    allow_custom_downsample_ops=False, mode=ChannelPruningParameters.Mode.auto,
    params=ChannelPruningParameters.AutoModeParams(GreedySelectionParameters(target_comp_ratio=Decimal(target_ratio),
    num_comp_ratio_candidates=num_candidates, use_monotonic_fit=use_monotonic_fit,
    saved_eval_scores_dict=<cached scores, or None>), modules_to_ignore=<the modules named in ignore>),
    multiplicity=multiplicity))

Run in a private temporary folder; fine-tuned afterwards when ``finetune_epochs`` > 0."""

    @dataclass(frozen=True)
    class Config(AimetCompressionConfig):
        """Channel pruning adds AIMET's weight reconstruction: ``reconstruction_samples`` is AIMET's
        ``num_reconstruction_samples``, counted in feature-map positions, not images: AIMET reads
        ceil((n / 10) / ``batch_size``) batches of the calibration list and samples 10 positions per
        image (n = 512, batches of 64: one batch, 64 images, 640 positions per pruned layer)."""

        reconstruction_samples: int = 512
        batch_size: int = 64

        def __post_init__(self) -> None:
            super().__post_init__()
            self._check_range("reconstruction_samples", 1, 1_000_000)
            self._check_range("batch_size", 1, 4096)

    description = ("AIMET ModelCompressor.compress_model: channel pruning with weight reconstruction, "
                   "greedy selection, cost metric MAC")

    def _scheme_params(self, model, config, ctx, greedy, cdefs, tdefs, ignore_modules):
        loader = ctx.calibration.loader(config.batch_size, config.reconstruction_samples)
        p = tdefs.ChannelPruningParameters(loader, config.reconstruction_samples, False,
                                           tdefs.ChannelPruningParameters.Mode.auto,
                                           tdefs.ChannelPruningParameters.AutoModeParams(greedy, ignore_modules),
                                           multiplicity=config.multiplicity)
        return cdefs.CompressionScheme.channel_pruning, p
