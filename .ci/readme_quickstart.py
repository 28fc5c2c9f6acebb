"""Runs the README's python blocks with the installed orthax (`make dist-check`).

Run it from outside the checkout with the wheel's virtual environment: it fails if `orthax` is
imported from the source tree instead of the installed wheel, or if the wheel's version differs
from `orthax.__version__`.
"""

import importlib.metadata
import pathlib
import re
import sys


def main() -> None:
  readme = pathlib.Path(sys.argv[1]).resolve()
  checkout = readme.parent
  blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), flags=re.S)
  if not blocks:
    sys.exit(f"{readme} has no python block")
  namespace = {}
  for block in blocks:
    exec(compile(block, str(readme), "exec"), namespace)
  import orthax

  where = pathlib.Path(orthax.__file__).resolve()
  if checkout in where.parents:
    sys.exit(f"orthax was imported from the checkout ({where}), not from the installed wheel")
  installed = importlib.metadata.version("orthax")
  if installed != orthax.__version__:
    sys.exit(f"the wheel's metadata says {installed}, orthax.__version__ {orthax.__version__}")
  print(f"README quick start: {len(blocks)} python blocks ran with orthax {orthax.__version__} "
        f"from {where.parent}")


if __name__ == "__main__":
  main()
