# The two commands of README.md: `make demo` and `make test`.
# Each creates .venv when missing and installs the pinned stack first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.t2vz-installed

.PHONY: setup browser demo test bench bench-gpu clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/t2vz models tiny .t2vz/models
	$(BIN)/t2vz run manifests/demo.csv --output-dir out/demo

# Headless Chromium + its driver for tests/test_gallery_browser.py (Debian packages, no download by Selenium).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y chromium chromium-driver; }

# Two workers on the 2-core machine; tests/conftest.py groups the tests that share fixtures.
test: setup browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder

bench: setup
	$(BIN)/python bench/run_all.py

# Real model sizes on the CUDA device (random weights, no download): writes bench/GPU_RESULTS.md.
# BENCH_GPU_ARGS="--budget-s 540" or "--only throughput,compile"; see bench/GPU.md.
bench-gpu: setup
	$(BIN)/python bench/gpu.py $(BENCH_GPU_ARGS)

clean:
	rm -rf out .t2vz
