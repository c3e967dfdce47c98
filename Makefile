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

# The stamp alone is not trusted: tools/ci/check_env.py also checks the versions (installing
# e.g. openmim into the venv downgrades setuptools), and any difference reruns the set-up.
setup:
	@if [ $(VENV)/.setup-done -nt setup.py ] && [ $(VENV)/.setup-done -nt tools/ci/setup_env.sh ] \
		&& $(PY) tools/ci/check_env.py; then echo '[setup] environment ok'; else \
		PYTHON=$(PYTHON) VENV=$(VENV) WHEELS=$(WHEELS) TORCH_SPEC=$(TORCH_SPEC) bash tools/ci/setup_env.sh \
		&& $(PY) tools/ci/check_env.py && touch $(VENV)/.setup-done; fi

demo: setup
	$(PY) tools/demo/run_demo.py

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) tools/analysis/benchmark.py --suite all

clean-venv:
	rm -rf $(VENV)
