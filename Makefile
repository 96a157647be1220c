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

.PHONY: install repro test lint format bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
	$(OVERRIDE) $(BIN)/dvc repro

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/knn.py
	$(BIN)/python bench/mlp.py

clean-venv:
	rm -rf $(VENV)
