# metaformer_mm — set-up, demo and tests on a fresh machine.
# `make demo` and `make test` both run the idempotent `make setup` first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The prebuilt mmcv wheel (torch 2.13.0+cpu, CPython 3.11) saves a ~15-minute compile when present.
WHEELS ?= ../shared/wheels
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean-venv

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: setup.py tools/ci/setup_env.sh
	PYTHON=$(PYTHON) VENV=$(VENV) WHEELS=$(WHEELS) TORCH_SPEC=$(TORCH_SPEC) bash tools/ci/setup_env.sh
	touch $@

demo: setup
	$(PY) tools/demo/run_demo.py

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) tools/analysis/benchmark.py --suite all

clean-venv:
	rm -rf $(VENV)
