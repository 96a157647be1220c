# Two entry points: `make repro` runs the pipeline, `make test` the test suite.
# Both create .venv when it is missing and install the package into it.
#
# Offline, point the fetch stage at a local copy of the archive for one run:
#   make repro DATA_URL=../shared/data/cifar-10-python.tar.gz DATA_MD5=<md5>

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

export PATH := $(abspath $(BIN)):$(PATH)

ifdef DATA_URL
OVERRIDE := $(BIN)/python -m cifar_baselines.with_params \
	-S data.url=$(DATA_URL) $(if $(DATA_MD5),-S data.md5=$(DATA_MD5)) --
endif

.PHONY: install repro test lint format bench clean-venv browser readme-params

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The page template that lets `dvc plots show` render offline: Vega, Vega-Lite
# and vega-embed inlined from pinned npm packages (docs/plots.md).
PLOTS_PAGE := build/plots/offline.html

$(PLOTS_PAGE): src/cifar_baselines/plots_template.py tools/build_plots_template.py | $(STAMP)
	$(BIN)/python tools/build_plots_template.py --out $@

# tests/test_plots_offline.py opens the plots in headless Chromium.  Install
# Debian's package when it is missing and we are root with apt-get; otherwise
# that test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for tests/test_plots_offline.py"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium >/dev/null; } \
		|| echo "warning: chromium could not be installed; the browser test will skip"; \
	else \
		echo "note: no chromium, and not root with apt-get; the browser test will skip"; \
	fi

install: $(STAMP) $(PLOTS_PAGE)

repro: $(STAMP) $(PLOTS_PAGE)
	$(OVERRIDE) $(BIN)/dvc repro

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint $(PLOTS_PAGE) browser
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/knn.py
	$(BIN)/python bench/mlp.py
	$(BIN)/python bench/features.py

clean-venv:
	rm -rf $(VENV)

readme-params: $(STAMP)
	$(BIN)/python tools/update_readme_params.py
