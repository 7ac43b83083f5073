"""nnconform: conformance and evaluation of AI/ML models in media services."""

__version__ = "0.1.0"

#: Version of the results.json schema written by the report.
RESULTS_SCHEMA_VERSION = "1.0"
