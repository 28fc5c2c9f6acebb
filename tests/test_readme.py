"""The README's quick start runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert blocks, "README.md has no python block"
  namespace = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)
  assert namespace["params"]["conv"]["kernel"].shape == (3, 3, 3, 32)
