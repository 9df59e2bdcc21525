# ssvae-bench: `make bench` runs the benchmark and writes its report; `make test` runs the tests.
# Both create the virtual environment on first use.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PRESET ?= default
DEVICE ?= cpu
OUT ?= results/$(PRESET)-$(DEVICE)
ARGS ?=
# MNIST: $SSVAE_DATA_DIR if set, else ../shared/data when it holds MNIST, else ./data (downloaded),
# handed on as an absolute path (the tests link to it from temporary folders).
SSVAE_DATA_DIR ?= $(if $(wildcard ../shared/data/MNIST/raw),../shared/data,data)
override SSVAE_DATA_DIR := $(abspath $(SSVAE_DATA_DIR))
export SSVAE_DATA_DIR

.PHONY: install lock check-lock bench report test test-fast regress regress-short regress-save regress-ab regress-pyro regress-history clean

# The install is locked: every package at the version and sha256 of requirements.lock (pip checks the
# hashes), then this project on top without dependencies. `make lock` regenerates the lock.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	$(PYTHON) -m bench.core.provenance --check-lock requirements.lock
	touch $@

# the venv's versions against the lock (one line per difference; exit 1 on any)
check-lock: install
	$(PYTHON) -m bench.core.provenance --check-lock requirements.lock

# Resolve pyproject.toml's dependencies and dev extra with requirements.in's pins, for Python 3.11 on
# Linux x86-64, into requirements.lock with the hashes of every file the indexes offer (pip-tools, in a
# throwaway venv; needs the network).
LOCK_TOOLS ?= build/lock-tools
lock:
	test -x $(LOCK_TOOLS)/bin/pip-compile || ($(PY) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install -q "pip-tools>=7.4")
	$(LOCK_TOOLS)/bin/pip-compile -q --generate-hashes --allow-unsafe --extra dev --strip-extras \
	    --no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml requirements.in

install: $(VENV)/.installed

# the report is written even when some cells failed (it shows them); the exit status is the run's
bench: install
	@status=0; $(PYTHON) -m bench run --preset $(PRESET) --device $(DEVICE) --out $(OUT) $(ARGS) || status=$$?; \
	if [ $$status -ne 2 ] && [ -f $(OUT)/env.json ]; then $(PYTHON) -m bench report $(OUT) || exit $$?; fi; \
	exit $$status

report: install
	$(PYTHON) -m bench report $(OUT)

# unit tests on every core (pytest-xdist, as test-fast), then the slow ones one at a time (the smoke benchmark
# end to end, subprocess grids, faults, timed steps: they use the cores themselves), then step times: A/B
# against the parent commit in short mode (says "NOT CHECKED" when the clone has no parent commit) and the
# stored baseline where this machine has one
test: install
	$(PYTHON) -m pytest -q -m "not slow or parallel" -n auto --dist loadfile --durations=5
	$(PYTHON) -m pytest -q -m "slow and not parallel" --durations=15
	$(PYTHON) -m bench regress ab --base HEAD~1 --short --if-available && $(PYTHON) -m bench regress run --short --missing-ok

# Performance regressions (docs/regressions.md). `make regress`: the A/B of the working tree against
# BASE (default the parent commit), interleaved in one job, then the stored baseline of this machine if any.
# REGRESS_ARGS e.g. --short, --inject-slowdown enum:0.3, --tolerance 0.2, --cases enum:unsup,trace:unsup.
REGRESS_ARGS ?=
BASE ?= HEAD~1

# the fast loop while editing: every test not marked slow (no MNIST training, no subprocess grids, no browser,
# no timed steps, no whole report of a reference; tests/conftest.py says which are slow), on every core
# (pytest-xdist; a test file per worker, so each module's report fixture is built once). `make test` still
# runs everything, one test at a time (its grids use the cores themselves).
test-fast: install
	$(PYTHON) -m pytest -q -m "not slow" -n auto --dist loadfile --durations=5

regress: install
	$(PYTHON) -m bench regress ab --base $(BASE) $(REGRESS_ARGS) && $(PYTHON) -m bench regress run --missing-ok

# the short mode `make test` runs after pytest
regress-short: install
	$(PYTHON) -m bench regress ab --base $(BASE) --short $(REGRESS_ARGS) && $(PYTHON) -m bench regress run --short --missing-ok

# A/B of two revisions: make regress-ab BASE=main HEAD_REV=my-branch (HEAD_REV empty: the working tree)
HEAD_REV ?=
regress-ab: install
	$(PYTHON) -m bench regress ab --base $(BASE) $(if $(HEAD_REV),--head $(HEAD_REV)) $(REGRESS_ARGS)

# A/B of two Pyro versions on this tree: make regress-pyro A=1.9.1 B=1.9.2 (pip --target overlays)
A ?= 1.9.1
B ?= 1.9.2
regress-pyro: install
	$(PYTHON) -m bench regress ab --pyro-a $(A) --pyro-b $(B) $(REGRESS_ARGS)

regress-history: install
	$(PYTHON) -m bench regress history $(REGRESS_ARGS)

regress-save: install
	$(PYTHON) -m bench regress save $(REGRESS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
