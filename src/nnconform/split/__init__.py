"""Split inference (issue 5): split points, head/tail, intermediate data, feature codecs,
rate-accuracy with BD-rate, and split selection.

* :mod:`.cuts` finds the cuts in the ``torch.fx`` graph and builds heads, tails and probes.
* :mod:`.features` documents what crosses each cut; :mod:`.study` runs one anchor's study
  (one forward pass per batch for every cut and codec).
* :mod:`.codecs` holds the ``feature-codec`` method kind of the criterion kit (entry-point group
  ``nnconform.feature_codecs``) and the reference codecs.
* :mod:`.bdrate` and :mod:`.selection` turn the results into BD-rates and split decisions.
* :mod:`.plan` reads ``anchors/split.toml`` (:func:`load_plan`); :mod:`.catalogue` the committed cut
  catalogue ``anchors/split-catalogue.toml``; :mod:`.runs` decides the cases of a run tier and holds the
  run's state; :mod:`.checks` holds the check functions and registers their ids.
"""

from .bdrate import BDResult, bd_quality, bd_rate, upper_envelope
from .codecs import (FEATURE_CODECS, REGISTRY, CodecContractError, CodecInputError, FeatureCodec, HalfCodec,
                     PayloadError, RawCodec, TiledImageCodec, TopKCodec, UniformQuantCodec, check_deterministic,
                     check_roundtrip, make_codec)
from .cuts import CutPoint, FeatureProbe, SplitGraph, SplitTraceError
from .features import CutProfile, FeatureStats, FeatureStatsAccumulator, profile_cuts, resolution_scaling
from .plan import (ComputeProfile, Kpi, LinkProfile, Scenario, SplitPlan, SplitPoint, load_plan,
                   load_split_manifest)
from .selection import Candidate, Latency, Selection, end_to_end, select_split
from .study import CodedResult, SplitStudy, run_study

__all__ = [
    "BDResult", "bd_quality", "bd_rate", "upper_envelope",
    "FEATURE_CODECS", "REGISTRY", "CodecContractError", "CodecInputError", "FeatureCodec", "HalfCodec",
    "PayloadError", "RawCodec", "TiledImageCodec", "TopKCodec", "UniformQuantCodec", "check_deterministic",
    "check_roundtrip", "make_codec",
    "CutPoint", "FeatureProbe", "SplitGraph", "SplitTraceError",
    "CutProfile", "FeatureStats", "FeatureStatsAccumulator", "profile_cuts", "resolution_scaling",
    "ComputeProfile", "Kpi", "LinkProfile", "Scenario", "SplitPlan", "SplitPoint", "load_plan", "load_split_manifest",
    "Candidate", "Latency", "Selection", "end_to_end", "select_split",
    "CodedResult", "SplitStudy", "run_study",
]
