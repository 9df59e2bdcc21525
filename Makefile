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

.PHONY: install bench report test regress regress-short regress-save regress-ab regress-pyro regress-history clean

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# the report is written even when some cells failed (it shows them); the exit status is the run's
bench: install
	@status=0; $(PYTHON) -m bench run --preset $(PRESET) --device $(DEVICE) --out $(OUT) $(ARGS) || status=$$?; \
	if [ $$status -ne 2 ] && [ -f $(OUT)/env.json ]; then $(PYTHON) -m bench report $(OUT) || exit $$?; fi; \
	exit $$status

report: install
	$(PYTHON) -m bench report $(OUT)

# unit tests, the smoke benchmark end to end, then step times: A/B against the parent commit in short mode
# (says "NOT CHECKED" when the clone has no parent commit) and the stored baseline where this machine has one
test: install
	$(PYTHON) -m pytest -q
	$(PYTHON) -m bench regress ab --base HEAD~1 --short --if-available && $(PYTHON) -m bench regress run --short --missing-ok

# Performance regressions (docs/regressions.md). `make regress`: the A/B of the working tree against
# BASE (default the parent commit), interleaved in one job, then the stored baseline of this machine if any.
# REGRESS_ARGS e.g. --short, --inject-slowdown enum:0.3, --tolerance 0.2, --cases enum:unsup,trace:unsup.
REGRESS_ARGS ?=
BASE ?= HEAD~1

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
