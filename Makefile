# Only python3 and make are needed: every target builds the virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all test-min min-versions-resolve bench docs lint typecheck format clean help

demo: $(STAMP)  ## train on the embedded 8x8 digits and write a grid of samples
	$(PY) -m experiments.demo --workdir=runs/demo

# Two pytest workers: the suite is mostly single-threaded XLA compilation. worksteal: an idle
# worker takes queued tests from the busy one, so a few long tests at the end do not leave a core idle.
PYTEST_WORKERS ?= 2

test: $(STAMP)  ## the test suite CI runs (slow tests excluded)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal tests

test-all: $(STAMP)  ## every test, the slow ones included
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "" tests

# The suite against the lowest versions pyproject.toml allows (every `>=` of
# [project.dependencies] pinned with `==`), in its own virtual environment. Not run by CI
# (it installs a second environment); MIN_TESTS narrows it, e.g. MIN_TESTS=tests/test_paths.py.
MIN_VENV  ?= .venv-min
MIN_TESTS ?= tests
MIN_PY    := $(MIN_VENV)/bin/python

test-min:  ## the suite against the lowest supported jax, flax, optax, orbax-checkpoint, diffrax, ...
	test -x $(MIN_PY) || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_PY) -m pip install -q --upgrade pip
	$(MIN_PY) tools/min_versions.py constraints > $(MIN_VENV)/constraints.txt
	$(MIN_PY) -m pip install -q -c $(MIN_VENV)/constraints.txt -e ".[dev]"
	$(MIN_PY) tools/min_versions.py check
	$(MIN_PY) -m pytest -q -n $(PYTEST_WORKERS) $(MIN_TESTS)

# Fast half of test-min, run by CI: pip's resolver accepts the lowest versions together (a dry
# run; nothing is installed). A new dependency whose lower bound excludes another's fails here.
min-versions-resolve: $(STAMP)
	$(PY) tools/min_versions.py constraints > $(VENV)/min-constraints.txt
	$(PY) -m pip install -q --dry-run --ignore-installed -c $(VENV)/min-constraints.txt -e ".[dev]"

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

docs: $(STAMP)  ## build the documentation site into site/ (any warning fails the build)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# ruff's format check is part of `make lint` (and so of CI); FORMAT_CHECK=0 skips it.
FORMAT_CHECK ?= 1

lint: $(STAMP)  ## ruff lint (and format check), mypy on jdiff/: what CI runs
	$(VENV)/bin/ruff check .
ifeq ($(FORMAT_CHECK),1)
	$(VENV)/bin/ruff format --check .
endif
	$(MAKE) --no-print-directory typecheck

typecheck: $(STAMP)  ## mypy on jdiff/ (configuration in pyproject.toml)
	$(VENV)/bin/mypy

format: $(STAMP)  ## apply ruff's formatter and the safe lint fixes to the whole code base
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) $(MIN_VENV) runs site .pytest_cache .mypy_cache .ruff_cache

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'
