# One-command setup: every target creates .venv on first use.
# The interpreter for .venv: PY if given (make PY=/path/to/python), else the first Python >= 3.11 on PATH.
PY ?= $(shell for p in python3.11 python3.12 python3.13 python3 python; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { command -v $$p; break; }; done)
# PyTorch comes first, from this index when given; e.g. the CPU build where the default index serves CUDA ones:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-all bench lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || test -n "$(PY)" || { echo "error: no Python >= 3.11 found on PATH" \
		"(tried python3.11, python3.12, python3.13, python3, python); install one, or give it: make PY=/path/to/python" >&2; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The version the tests run with; the build (CPU or CUDA) is the index's, or TORCH_INDEX's.
	$(BIN)/python -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[all,dev]'
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
