# ssvae-bench: `make bench` runs the benchmark and writes its report; `make test` runs the tests.
# Both create the virtual environment on first use.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PRESET ?= quick
DEVICE ?= cpu
OUT ?= results/$(PRESET)-$(DEVICE)
ARGS ?=
# MNIST: $SSVAE_DATA_DIR if set, else ../shared/data when it holds MNIST, else ./data (downloaded).
SSVAE_DATA_DIR ?= $(if $(wildcard ../shared/data/MNIST/raw),../shared/data,data)
export SSVAE_DATA_DIR

.PHONY: install lock check-lock bench report test regress regress-short regress-save clean

# The install is locked: every package at the version and sha256 of requirements.lock (pip checks the
# hashes), then this project on top without dependencies. `make lock` regenerates the lock.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	$(PYTHON) -m bench.provenance --check-lock requirements.lock
	touch $@

# the venv's versions against the lock (one line per difference; exit 1 on any)
check-lock: install
	$(PYTHON) -m bench.provenance --check-lock requirements.lock

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

# unit tests, the smoke benchmark end to end, then the step-time regression check in short mode
test: install
	$(PYTHON) -m pytest -q
	$(PYTHON) -m bench.regress run --short --missing-ok

# Performance regression: step-time ratios (Pyro / hand-written reference, enum / trace) against
# results/baselines/<machine>.json. REGRESS_ARGS e.g. --short, --inject-slowdown enum:0.3, --tolerance 0.25.
REGRESS_ARGS ?=

regress: install
	$(PYTHON) -m bench.regress run $(REGRESS_ARGS)

# the short mode `make test` runs after pytest (fewer rounds, tolerance_short)
regress-short: install
	$(PYTHON) -m bench.regress run --short $(REGRESS_ARGS)

regress-save: install
	$(PYTHON) -m bench.regress save $(REGRESS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
