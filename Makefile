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

.PHONY: install bench report test regress regress-short regress-save clean

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
