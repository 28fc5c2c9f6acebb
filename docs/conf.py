"""Sphinx configuration for orthax's documentation (`make docs`)."""

import os
import pathlib
import re
import shutil
import sys

sys.path.insert(0, os.path.abspath(".."))

import orthax  # noqa: E402

project = "orthax"
author = "orthax contributors"
copyright = "2026, orthax contributors"
release = orthax.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_generated/*.inc"]


def _example_pages() -> None:
  """One page per example folder with a README.md (examples/NAME/README.md), included as is.

  Written to docs/_generated/ on every build, so a new example gets its page without editing the
  docs; examples.md lists them through _generated/example_pages.inc.
  """
  docs = pathlib.Path(__file__).resolve().parent
  out = docs / "_generated"
  shutil.rmtree(out, ignore_errors=True)
  (out / "examples").mkdir(parents=True)
  names = sorted(p.parent.name for p in (docs.parent / "examples").glob("*/README.md"))
  for name in names:
    (out / "examples" / f"{name}.md").write_text(
        f"```{{include}} ../../../examples/{name}/README.md\n:relative-images:\n"
        ":relative-docs: ../../../\n```\n", encoding="utf-8")
  toctree = "".join(f"_generated/examples/{name}\n" for name in names)
  (out / "example_pages.inc").write_text(
      f"```{{toctree}}\n:maxdepth: 1\n\n{toctree}```\n" if names else "", encoding="utf-8")


_example_pages()


_README_LINK = re.compile(
    r"\]\((?P<up>\.\./)?(?:(?P<name>[\w-]+)/)?README\.md(?P<anchor>#[^)\s]*)?\)")


def _example_readme_links(app, relative_path, parent_docname, content):
  """Links between the examples' READMEs lead to their pages on this site.

  examples/README.md's `NAME/README.md` becomes example NAME's page, and an example's
  `../README.md` (`../OTHER/README.md`) the examples page (example OTHER's page); other links and
  other included files are left as written.
  """
  path = pathlib.PurePosixPath(pathlib.Path(relative_path).as_posix())
  if path.name != "README.md" or path.parts[:2] != ("..", "examples") or len(path.parts) > 4:
    return
  in_example = len(path.parts) == 4

  def page(match):
    up, name, anchor = match["up"], match["name"], match["anchor"] or ""
    if in_example and up and name:
      return f"]({name}.md{anchor})"
    if in_example and up:
      return f"](../../examples.md{anchor})"
    if not in_example and not up and name:
      return f"](_generated/examples/{name}.md{anchor})"
    return match[0]

  content[0] = _README_LINK.sub(page, content[0])


# The docstrings write code as `name` (Markdown habit): show it as code, not as a cross-reference.
default_role = "code"

# Google-style docstrings, as in Optax: Args/Returns/Examples/References sections.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # Attributes: as a field list; autodoc documents the fields once.
autodoc_typehints = "description"
# Annotations are strings (from __future__ import annotations): keep the aliases short.
autodoc_type_aliases = {"optax.ScalarOrSchedule": "optax.ScalarOrSchedule", "Array": "jax.Array"}
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}

# MyST: $...$ maths, ::: fences, and heading anchors so the included READMEs' links resolve.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
# The included READMEs link to repository files that are not pages of this site (sources, other
# READMEs); those links render as text instead of failing the warnings-as-errors build.
suppress_warnings = ["myst.xref_missing"]

# `sphinx-build -b doctest` runs the pages' {doctest}/{testcode} blocks and every `>>>` example
# of the docstrings the API page pulls in.
doctest_global_setup = "import jax, jax.numpy as jnp, numpy as np, optax, orthax"

html_theme = "sphinx_book_theme"
html_title = f"orthax {release}"


def _check_api_page(app):
  """Warns (an error under -W) when a public name of `orthax` is missing from the API page."""
  from sphinx.util import logging

  text = open(os.path.join(app.srcdir, "api.md"), encoding="utf-8").read()
  for name in orthax.__all__:
    if not isinstance(getattr(orthax, name), type(orthax)) and f"orthax.{name}\n" not in text:
      logging.getLogger(__name__).warning(f"docs/api.md does not document orthax.{name}")


_CODE = re.compile(r"(``.*?``|`[^`]*`)", re.S)


def _plain_docstring_text(app, what, name, obj, options, lines):
  """Reads the docstrings as the plain text they are written as, before napoleon parses them.

  - `|x|` means an absolute value or a norm there, never a reST substitution: `|` outside code
    and doctest blocks is escaped.
  - An `Args:` entry may list several names, wrapped over two lines ("a, b, c,\n  d: text"):
    the wrapped names are joined into one line, as napoleon expects them.
  """
  joined = []
  for line in lines:
    previous = joined[-1].strip() if joined else ""
    if (previous.endswith(",") and ":" not in previous and ":" in line
        and not previous.startswith((">>>", "..."))):
      joined[-1] = joined[-1].rstrip() + " " + line.strip()
    else:
      joined.append(line)
  out, in_doctest = [], False
  for line in joined:
    stripped = line.strip()
    in_doctest = stripped.startswith(">>>") or (in_doctest and stripped != "")
    out.append(line if in_doctest else "".join(
        part if i % 2 else part.replace("|", "\\|")
        for i, part in enumerate(_CODE.split(line))))
  lines[:] = out


_TYPE_TEXT = [
    (re.compile(r"TypeAliasForwardRef\('([^']*)'\)"), r"\1"),  # an alias autodoc cannot resolve
    (re.compile(r"~?jax\.jaxlib\._jax\.Array"), "jax.Array"),  # jax.Array's defining module
    (re.compile(r"~collections\.abc\."), ""),
]


def _readable_types(app, what, name, obj, options, signature, return_annotation):
  """Types in the parameter lists as a reader writes them: `jax.Array`, `optax.ScalarOrSchedule`.

  autodoc records a runtime alias by where it is defined (`~jax.jaxlib._jax.Array`) and an alias
  it cannot import as `TypeAliasForwardRef('jax.Array')`; both become the public name before
  the recorded hints are merged into the descriptions.
  """
  recorded = app.env.current_document.autodoc_annotations.get(name, {})
  for key, text in recorded.items():
    for pattern, replacement in _TYPE_TEXT:
      text = pattern.sub(replacement, text)
    recorded[key] = text


def setup(app):
  # After autodoc has recorded the type hints (priority 500), before it merges them.
  app.connect("autodoc-process-signature", _readable_types, priority=600)
  app.connect("builder-inited", _check_api_page)
  app.connect("include-read", _example_readme_links)
  # Before napoleon (priority 500) turns the Google-style sections into reST.
  app.connect("autodoc-process-docstring", _plain_docstring_text, priority=400)
