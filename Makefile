# lensforge: `make demo` runs the whole flow on embedded defaults, `make test` runs the test suite.
# Both create the virtual environment and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject: its CPU wheel is on disk here (an open range pulls CUDA).
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lensforge run --out runs --name demo

test: $(STAMP)
	$(BIN)/pytest -q --timeout=600

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check pipeline models flows catalogs tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/simulate_throughput.py
	$(BIN)/python benchmarks/tile_scaling.py

clean:
	rm -rf $(VENV) runs benchmarks/results .pytest_cache
