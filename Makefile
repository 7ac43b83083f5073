# The two commands a new user types: `make conformance` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nnconform-installed
PYTEST_ARGS ?=

.PHONY: setup lock conformance test benchmark zoo clean-cache docs

$(STAMP): pyproject.toml requirements.lock scripts/setup.sh
	bash scripts/setup.sh

## .venv from requirements.lock (hash-checked), plus the Debian data and browser packages.
setup: $(STAMP)

## Regenerate requirements.lock from pyproject.toml, requirements.in and requirements-nodeps.in
## (uv pip compile --generate-hashes; `bash scripts/lock.sh --upgrade` moves every pin).
lock:
	bash scripts/lock.sh

## The main job: the conformance suite on the embedded default anchors; writes reports/<run-id>/.
conformance: $(STAMP)
	$(PY) -m pytest conformance/ --nnc-tier default $(PYTEST_ARGS)

## The self-tests, then the quick tier of the conformance suite checked against its golden figures (what CI
## runs; two processes, so nothing a self-test registers or sets reaches the suite's figures).
test: $(STAMP)
	$(PY) -m pytest tests/ $(PYTEST_ARGS)
	$(PY) -m pytest conformance/ --nnc-tier quick --nnc-golden tests/golden/quick.json $(PYTEST_ARGS)

benchmark: $(STAMP)
	$(PY) benchmarks/bench_engine.py

## Rebuild the embedded zoo into .cache/zoo-rebuild and compare it with the committed checkpoints
## (bit-identical on the machine that built them; elsewhere within the band in anchors/zoo.toml).
## Rewriting the committed weights is deliberate: python -m nnconform.zoo build --force.
zoo: $(STAMP)
	$(PY) -m nnconform.zoo compare --into .cache/zoo-rebuild --force

## The documentation site, offline, into site/: regenerates docs/reference/ from the code, then mkdocs --strict.
docs: $(STAMP)
	$(PY) -m nnconform.docs
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean-cache:
	rm -rf .cache/nnconform
