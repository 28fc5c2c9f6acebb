"""Prints pip constraints that pin every declared dependency floor of pyproject.toml exactly.

`make test-floors` installs the project with these constraints, so the library tests run against
the lowest versions pyproject.toml claims to support (a lowest-direct resolution). jaxlib is
pinned with jax (jax requires its own jaxlib version). Packages that only the tests need (flax,
chex, pytest, ...) are left to the resolver, which picks their newest releases that accept these
floors.
"""

import pathlib
import re
import sys
import tomllib


def main() -> None:
  path = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
  project = tomllib.loads(path.read_text())["project"]
  pins = {}
  for requirement in project["dependencies"]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", requirement)
    if match is None:
      sys.exit(f"{path}: dependency {requirement!r} has no '>=' floor; declare one.")
    pins[match[1].lower()] = match[2]
  if "jax" in pins:
    pins["jaxlib"] = pins["jax"]
  for name, version in pins.items():
    print(f"{name}=={version}")


if __name__ == "__main__":
  main()
