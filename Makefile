# The two commands a new user types: `make conformance` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nnconform-installed
PYTEST_ARGS ?=

.PHONY: setup conformance test benchmark zoo clean-cache

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

setup: $(STAMP)

## The main job: the conformance suite on the embedded default anchors; writes reports/<run-id>/.
conformance: $(STAMP)
	$(PY) -m pytest conformance/ --nnc-tier default $(PYTEST_ARGS)

## The self-tests plus the quick tier of the conformance suite (what CI runs).
test: $(STAMP)
	$(PY) -m pytest tests/ conformance/ --nnc-tier quick $(PYTEST_ARGS)

benchmark: $(STAMP)
	$(PY) benchmarks/bench_engine.py

## Retrain the embedded zoo (deterministic recipe; rewrites anchors/zoo.toml and its weights).
zoo: $(STAMP)
	$(PY) -m nnconform.zoo build

clean-cache:
	rm -rf .cache/nnconform
