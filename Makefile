PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test demo lint clean accelerator-evidence

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Two installs into one .venv: the demo needs the library and the examples' packages only; the
# tests add pytest, hypothesis, ruff and mypy on top.
DEMO_STAMP := $(VENV)/.installed-examples

$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[examples]'
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml | $(DEMO_STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[test,examples]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -n auto

# The library's tests only (no examples, nothing slow or multi-device).
FAST_TIER := -m "not examples and not slow and not multidevice"
.PHONY: test-fast
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -n auto $(FAST_TIER)

# Flags reach the demo through ARGS, e.g. make demo ARGS="--synthetic --epochs 2".
demo: $(DEMO_STAMP)
	$(VENV)/bin/python -m examples.demo $(ARGS)

# On a machine with a GPU or TPU (see benchmarks/README.md), one run at a time:
# ARGS="--run 1-methods", then 2-steps, 3-lm, 4-table1 (with --data PATH/cifar10_jpeg.npz)
accelerator-evidence: $(STAMP)
	$(VENV)/bin/python -m benchmarks.accelerator_evidence $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis runs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf $(FLOORS_VENV) docs/_build

# The documentation site (docs/): HTML with warnings as errors, then every code block of its
# pages and every docstring example it shows, run by Sphinx's doctest builder.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): pyproject.toml | $(STAMP)
	$(VENV)/bin/python -m pip install -e '.[docs]'
	touch $(DOCS_STAMP)

.PHONY: docs
docs: $(DOCS_STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	$(VENV)/bin/sphinx-build -W --keep-going -q -b doctest docs docs/_build/doctest
	@echo "docs: docs/_build/html/index.html"

# The package as users get it: build the sdist and wheel, check their metadata, install the
# wheel into a fresh virtual environment outside the checkout and run the README's quick start.
DIST_STAMP := $(VENV)/.dist-tools-installed

$(DIST_STAMP): | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --upgrade pip build twine
	touch $(DIST_STAMP)

.PHONY: dist-check
dist-check: $(DIST_STAMP)
	rm -rf dist
	$(VENV)/bin/python -m build --outdir dist .
	$(VENV)/bin/python -m twine check --strict dist/*
	set -e; away=$$(mktemp -d); trap 'rm -rf "$$away"' EXIT; \
	$(PYTHON) -m venv "$$away/venv"; \
	"$$away/venv/bin/python" -m pip install --quiet dist/*.whl; \
	cp .ci/readme_quickstart.py "$$away/"; \
	cd "$$away" && "$$away/venv/bin/python" readme_quickstart.py "$(CURDIR)/README.md"

# The declared dependency floors: a fresh environment with every floor of pyproject.toml
# installed exactly (.ci/floor_constraints.py), running the library's own tests.
FLOORS_VENV := .venv-floors
# Every library test file: those of tests/ that import neither examples/ nor benchmarks/ (they
# need the examples extra, absent here), in the fast tier. A test that a floor cannot run says so
# with its own skip reason.
FLOOR_TESTS := $(shell grep -L -E '^(from|import) (examples|benchmarks)' tests/test_*.py)

$(FLOORS_VENV)/.installed: pyproject.toml .ci/floor_constraints.py
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install --upgrade pip
	$(FLOORS_VENV)/bin/python .ci/floor_constraints.py pyproject.toml > $(FLOORS_VENV)/constraints.txt
	$(FLOORS_VENV)/bin/python -m pip install --only-binary=:all: \
		-c $(FLOORS_VENV)/constraints.txt -e '.[test]'
	touch $(FLOORS_VENV)/.installed

.PHONY: test-floors
test-floors: $(FLOORS_VENV)/.installed
	$(FLOORS_VENV)/bin/python -m pip list | grep -iE '^(jax|jaxlib|optax|numpy|scipy|threadpoolctl|flax) '
	$(FLOORS_VENV)/bin/python -m pytest -p no:cacheprovider -n auto $(FAST_TIER) $(FLOOR_TESTS)

# The numerical tests under settings that change float32 rounding (fast math on and off, one
# thread, matmul precision "highest"): tolerances must hold on every CPU, not just this one.
# Not in CI (it runs them five times).
.PHONY: test-numerics
test-numerics: $(STAMP)
	.ci/numerics.sh $(VENV)/bin/python
