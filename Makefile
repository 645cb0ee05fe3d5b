# Two commands for a fresh machine (README): `make demo` and `make test`.
# Both create the same environment first: a venv with the pinned packages, and Debian's
# Fashion-MNIST package where it is missing and can be installed.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= 4
PYTEST_ARGS ?=
# `make test` runs the tests in this many pytest-xdist workers (one per core, at most 4: each runs snakemake with 2).
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))' 2>/dev/null || echo 2)
BENCH_ARGS ?=

.PHONY: env dataset demo report test test-fast bench dag clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Fashion-MNIST from Debian (31 MB); elsewhere the split rule falls back to torchvision's downloader.
dataset:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "note: /usr/share/datasets/fashion-mnist is missing; the pipeline will try torchvision's download"; \
	fi

env: $(STAMP) dataset

demo: env
	$(VENV)/bin/snakemake --cores $(CORES)

# One self-contained HTML file: leaderboard, metrics tables and plots of every run (after `make demo`).
report: env
	$(VENV)/bin/snakemake --report report.html

test: env
	$(PY) -m pytest -ra -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: env
	$(PY) -m pytest -ra -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

# Ours vs what a user would otherwise write, as ratios measured in the same run (docs/bench.md):
# prints a table, writes results/bench/bench.csv. On 2 idle CPU cores about 25 minutes for every row but
# recipe_acc_vs_tutorial, which alone takes about 45 more (BENCH_ARGS='--only <rows>' runs some rows).
bench: env
	$(PY) bench/bench.py $(BENCH_ARGS)

dag: env
	@$(VENV)/bin/snakemake --rulegraph mermaid-js

clean:
	rm -rf results/* results/.[!.]* resources .snakemake report.html report.zip
	touch results/.gitkeep
