# Only python3 and make are needed: every target builds the virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench clean

demo: $(STAMP)  ## train on the embedded 8x8 digits and write a grid of samples
	$(PY) -m experiments.demo --workdir=runs/demo

# Two pytest workers: the suite is mostly single-threaded XLA compilation.
PYTEST_WORKERS ?= 2

test: $(STAMP)  ## the test suite CI runs (slow tests excluded)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) tests

test-all: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "" tests

bench: $(STAMP)
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
