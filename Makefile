# Two set-up commands for a fresh machine (Python 3.11 and network access to PyPI):
#   make demo   - create .venv, install poppyscan, run the demo into ./demo-out
#   make test   - create .venv, install poppyscan with test extras, run the whole test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) run.py demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q
