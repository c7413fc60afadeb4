# lensforge: `make demo` runs the whole flow on embedded defaults, `make test` runs the test suite.
# Both create the virtual environment and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo shear-demo test test-fast lint bench bench-full bench-shear bench-inpainting weights publish clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject: its CPU wheel is on disk here (an open range pulls CUDA).
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lensforge run --out runs --name demo

# The three shear validations of docs/shear_calibration.md on a small set (about 10 min on 2 cores):
# simulate + train + in-paint, validate raw / masked / in-painted, generate a set and validate it.
shear-demo: $(STAMP)
	$(BIN)/python benchmarks/shear_calibration.py --n 1024 --steps 300 --out runs

test: $(STAMP)
	$(BIN)/pytest -q --timeout=600

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check lensforge pipeline models flows catalogs tests benchmarks

# The benchmark suite: one table of ratios measured in the same run (docs/results/bench.json, with its
# commit and command; `make publish` renders README's table from it).
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# + peak memory of the simulate stage at 10k vs 100k stamps (adds ~15 min on 2 cores).
bench-full: $(STAMP)
	$(BIN)/python benchmarks/run.py --full

# The shear validations (docs/results/shear_calibration.json): 8,192 stamps per set (about an hour on 2
# cores), then the cosmos_real set again with 49,152 (about 50 min), which its errors need to test 1e-3.
bench-shear: $(STAMP)
	$(BIN)/python benchmarks/shear_calibration.py --n 8192 --steps 300
	$(BIN)/python benchmarks/shear_calibration.py --n 8192 --n-real 49152 --steps 300 --skip run,validate,generate --update

# The shipped image in-painter, retrained from ../shared/data (FIRST) + simulations into runs/inpainter
# (seed 0, the default settings; ~15 min on 2 cores), then evaluated on the held-out sets. Copy
# runs/inpainter/{weights.safetensors,model_card.json,losses.csv} into models/weights/image_inpainter/
# to ship it.
weights: $(STAMP)
	$(BIN)/lensforge train-inpainter --output runs/inpainter
	$(BIN)/python benchmarks/real_inpainting.py --model runs/inpainter --record-card --out runs/inpainter/real_inpainting.json --figures runs/inpainter

# Held-out in-painting results of the shipped weights (docs/results/real_inpainting.json, README figures).
bench-inpainting: $(STAMP)
	$(BIN)/python benchmarks/real_inpainting.py

# Rewrite every measured number of README.md and docs/*.md from docs/results/*.json
# (tests/test_published_numbers.py checks they agree).
publish: $(STAMP)
	$(BIN)/python benchmarks/publish.py

clean:
	rm -rf $(VENV) runs benchmarks/results .pytest_cache
