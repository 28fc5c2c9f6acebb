PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test demo lint clean accelerator-evidence

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[test,examples]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

demo: $(STAMP)
	$(VENV)/bin/python -m examples.demo

# On a machine with a GPU or TPU (see benchmarks/README.md): ARGS="--data PATH/cifar10_jpeg.npz"
accelerator-evidence: $(STAMP)
	$(VENV)/bin/python -m benchmarks.accelerator_evidence $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis runs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
