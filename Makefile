# The two commands of the README. Everything else is set up by them on a fresh machine.
#   make demo   create .venv, install, run the quickstart sweep on an embedded local Ray, report
#   make test   same venv plus test extras, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.specbench-installed
# DeepSpeed JIT-compiles two CPU ops on first use (~30 s); cache them per venv (two venvs sharing
# one cache would rebuild each other's ops every time).
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test install lint clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is installed first with a lower bound only: on a machine whose pip is capped at the
# locally available release (torch 2.14.1 / torchvision 0.29.1 here) this takes the local build
# instead of downloading a newer multi-GB CUDA wheel.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade "pip>=23.2"
	$(PY) -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/specbench sweep configs/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf results .pytest_cache
