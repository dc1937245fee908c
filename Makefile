# LinFusion Studio — the three targets a newcomer needs, and a fast inner loop.
#   make demo       install, then run the example manifests on the embedded default
#   make test       install, then the whole suite (starts PostgreSQL and SeaweedFS itself), but `heavy`
#                   and `faults_slow` (outages and SIGKILLs: `make test-faults` runs them)
#   make test-heavy the `heavy` tests: full-size SD-XL on the CPU (~12 GB RAM, minutes); .ci/run runs it too
#   make test-fast  the suite without real services, for the inner loop
#   make test-faults  the fault suite on its own (services stopped and killed mid-batch; docs/reliability.md)
#   make test-faults-slow  only the fault tests `make test` leaves out (`faults_slow`): what .ci/run adds
#   make test-changed only the tests the working tree's changes can affect (infra/changed_tests.py says how)
#   make test-api-deep  the API contract test (schemathesis, tests/web/test_api_contract.py) far deeper: release checks
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU wheel that lies on this machine's disk; an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# CLIP's BPE vocabulary for single-file checkpoints (linfusion_engine/tokenizers.py). --no-deps: its
# requirements (torchvision, timm) would pull a CUDA torch; only its vocabulary file is read.
OPEN_CLIP ?= open-clip-torch==3.3.0
PYTEST_ARGS ?=
# Two pytest-xdist workers, a test file each at a time (module fixtures such as the 2 GB full-size
# checkpoint are built once): the suite waits on services, subprocesses and leases much of the
# time, so two workers on two cores finish `make test` in about three quarters of the time
# (docs/testing.md). `make test PARALLEL=` runs it in one process.
PARALLEL ?= -n 2 --dist loadfile

.PHONY: setup demo test test-fast test-heavy test-faults test-faults-slow test-changed test-api-deep bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(OPEN_CLIP)
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/linstudio run manifests/examples

test: setup
	@bash infra/ensure-test-deps.sh
	$(PY) -m pytest -m "not heavy and not faults_slow and not api_deep" $(PARALLEL) $(PYTEST_ARGS)

test-heavy: setup
	@bash infra/ensure-test-deps.sh
	$(PY) -m pytest -m heavy $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not services and not slow and not heavy and not faults_slow and not api_deep" $(PARALLEL) $(PYTEST_ARGS)

test-faults: setup
	@bash infra/ensure-test-deps.sh
	$(PY) -m pytest tests/faults $(PYTEST_ARGS)

test-faults-slow: setup
	@bash infra/ensure-test-deps.sh
	$(PY) -m pytest tests/faults -m faults_slow $(PYTEST_ARGS)

test-changed: setup
	@bash infra/ensure-test-deps.sh
	@paths="$$($(PY) infra/changed_tests.py $(if $(BASE),--base $(BASE)))"; \
	if [ -z "$$paths" ]; then echo "no changes against HEAD: nothing to test"; exit 0; fi; \
	echo "testing: $$(echo $$paths)"; \
	$(PY) -m pytest -m "not heavy and not faults_slow and not api_deep" $(PYTEST_ARGS) $$paths

# The same contract test as `make test`, with many more examples and stateful steps per operation.
test-api-deep: setup
	LINSTUDIO_API_DEEP=1 $(PY) -m pytest tests/web/test_api_contract.py $(PYTEST_ARGS)

bench: setup
	$(PY) bench/attention_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
