PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test demo lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[test,examples]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

# The library's tests only (no examples, nothing slow or multi-device): a couple of minutes.
.PHONY: test-fast
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not examples and not slow and not multidevice"

demo: $(STAMP)
	$(VENV)/bin/python -m examples.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis runs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
