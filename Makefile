# One command sets up and runs each job on a fresh machine:
#   make demo   — set up, then run the whole story on the embedded stdlib corpus
#   make test   — set up, then run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo bench clean

# torch==2.13.0 is the CPU build on these machines; pyproject keeps torch loose for GPU users.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0 -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) cli.py demo

clean:
	rm -rf $(VENV) workspace .pytest_cache
