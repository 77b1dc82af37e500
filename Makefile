# Two commands matter: `make run` (the main job on the embedded default) and `make test`.
# Both create .venv and install torch (CPU build) first, then the project, on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.clinkd-installed
PYTEST_ARGS ?=

.PHONY: setup run quick test test-all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/clinkd run configs/default.yaml

quick: $(STAMP)
	$(VENV)/bin/clinkd run configs/default.yaml --preset quick

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs data/synth data/synth-quick .pytest_cache
