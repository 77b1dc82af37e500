# Two commands matter: `make run` (the main job on the embedded default) and `make test`.
# Both create .venv and install torch (CPU build) first, then the project, on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.clinkd-installed
PYTEST_ARGS ?=
# Debian packages the metrics and the browser test use: Java (METEOR 1.5, PTB tokenizer; Rhino for real SPICE), WordNet (meteor-nltk,
# SPICE-approx synonyms), chromium + chromedriver (the demo's browser test). Without them those paths skip or fall back.
SYSTEM_PACKAGES ?= default-jre-headless librhino-java wordnet-base wordnet-sense-index chromium chromium-driver
SYSTEM_STAMP := $(VENV)/.system-packages

.PHONY: setup system run quick test test-all lint clean

$(SYSTEM_STAMP):
	@mkdir -p $(VENV)
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -n "$$missing" ]; then \
			echo "apt-get install $$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
				|| echo "warning: could not install $$missing; the Java/WordNet/browser paths will skip or fall back"; \
		fi; \
	else echo "note: not root or no apt-get; install $(SYSTEM_PACKAGES) yourself for METEOR (Java) and the browser test"; fi
	@touch $@

system: $(SYSTEM_STAMP)

# constraints.txt: the exact versions the suite passes with (pyproject.toml keeps the ranges; .ci/newest-deps checks the newest).
$(STAMP): pyproject.toml constraints.txt $(SYSTEM_STAMP)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/clinkd run configs/default.yaml

quick: $(STAMP)
	$(VENV)/bin/clinkd run configs/default.yaml --preset quick

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff (pyflakes, pycodestyle errors, import order, 120 columns) and vulture (dead code); both read pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check
	$(VENV)/bin/vulture

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs data/synth data/synth-quick .pytest_cache
