"""Speech recognition data: LibriSpeech-layout loading, log-mel features, the espeak-ng corpus."""

from .features import SpeechPreprocess
from .data import SpeechDataset, SpeechDataError, load_librispeech, load_librispeech_folder, load_librivox_smoke

DATASETS = ("espeak-synth", "librivox-smoke", "librispeech")


def load_speech_dataset(name: str, split: str = "test", *, cache_dir=None, data_dir=None) -> SpeechDataset:
    """A speech dataset by the name anchors use: ``espeak-synth`` (train/test), ``librivox-smoke``, ``librispeech``.

    ``cache_dir`` is where generated or laid-out data goes (default: nnconform's cache folder).
    """
    from pathlib import Path

    from ..paths import default_cache_dir

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if name == "espeak-synth":
        from .synth import load_synthetic

        return load_synthetic(split, cache)
    if name == "librivox-smoke":
        return load_librivox_smoke(cache)
    if name == "librispeech":
        return load_librispeech("test-clean" if split == "test" else split, data_dir)
    raise KeyError(f"unknown speech dataset {name!r}; known: {', '.join(DATASETS)}")


__all__ = ["DATASETS", "SpeechDataError", "SpeechDataset", "SpeechPreprocess", "load_librispeech",
           "load_librispeech_folder", "load_librivox_smoke", "load_speech_dataset"]
