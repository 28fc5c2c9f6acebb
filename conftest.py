"""Marks what pytest collects under examples/ (their doctests) as `examples` (see pyproject)."""

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent / "examples"


def pytest_collection_modifyitems(items):
  for item in items:
    if EXAMPLES in Path(item.path).resolve().parents:
      item.add_marker(pytest.mark.examples)
