"""Prints pip constraints that pin every declared dependency floor of pyproject.toml exactly.

`make test-floors` installs the project with these constraints, so the library tests run against
the lowest versions pyproject.toml claims to support (a lowest-direct resolution). jaxlib is
pinned with jax (jax requires its own jaxlib version). Packages that only the tests need are left
to the resolver, except those named in TEST_PINS: the newest flax releases declare a jax floor
lower than the one they run with, so the floor run pins a flax that works with the jax floor.
"""

import pathlib
import re
import sys
import tomllib

# Test-only pins for the floor run (not floors of orthax): flax 0.11.2 declares jax>=0.6.0 but
# calls NamedSharding.update, which jax 0.7.0 lacks.
TEST_PINS = {"flax": "0.11.0"}


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
  pins.update(TEST_PINS)
  for name, version in pins.items():
    print(f"{name}=={version}")


if __name__ == "__main__":
  main()
