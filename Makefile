# One-command setup: every target creates .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-all bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel on this machine; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m simulations run ffe-flower

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --timeout=900 -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --timeout=1800 -q -m "slow or not slow"

bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	# import layering (pyproject [tool.importlinter]); this checkout's packages first on the path
	PYTHONPATH=$(CURDIR) $(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
