"""Q1: time and accuracy of every polar-factor method over the matrix shapes of real models.

    python -m benchmarks.matrix_methods            # CPU: ResNet-20, ResNet-50, transformer-768
    python -m benchmarks.matrix_methods --large    # adds the 4096-wide transformer block
    python -m benchmarks.matrix_methods --methods svd,eigh,qdwh --suites resnet50  # a subset

Each row is one group of same-shape matrices as orthax stacks them (batch = number of leaves of
that shape; "x4" rows stack four transformer blocks). Error columns: max ||O^T O - I||_F / sqrt(N)
over the stack, and max ||O - U V^T||_F / sqrt(N) against numpy's float64 SVD.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from orthax import polar
from orthax._src.components import Layout, matrix_view

METHODS = {
    "svd": polar.svd,
    "eigh": polar.eigh,
    "qdwh": polar.qdwh,
    "newton_schulz": polar.newton_schulz,
    "polar_express-5": functools.partial(polar.polar_express, steps=5),
    "polar_express-7": functools.partial(polar.polar_express, steps=7),
}


def groups(shapes) -> dict[tuple[int, int], int]:
  counts = collections.Counter(matrix_view(s, Layout()).shape[1:] for s in shapes)
  return dict(sorted(counts.items()))


def reference(g: np.ndarray) -> np.ndarray:
  """U V^T of each matrix of g, from numpy's float64 SVD."""
  u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  return u @ vt


def errors(o: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
  """Max over the stack of ||O^T O - I||_F / sqrt(N) and ||O - U V^T||_F / sqrt(N)."""
  o, exact = np.asarray(o, np.float64), np.asarray(exact, np.float64)
  if o.shape[-2] < o.shape[-1]:
    o, exact = np.swapaxes(o, -1, -2), np.swapaxes(exact, -1, -2)
  n = o.shape[-1]
  gram = np.swapaxes(o, -1, -2) @ o
  orth = np.linalg.norm(gram - np.eye(n), axis=(-2, -1)).max() / np.sqrt(n)
  dist = np.linalg.norm(o - exact, axis=(-2, -1)).max() / np.sqrt(n)
  return float(orth), float(dist)


def main(argv: list[str] | None = None) -> None:
  p = common.parser(__doc__)
  p.add_argument("--large", action="store_true")
  p.add_argument("--methods", default=",".join(METHODS),
                 help="comma-separated subset of the methods (svd comes first, for the ratios)")
  p.add_argument("--suites", default=None, help="comma-separated subset of the suites")
  args = p.parse_args(argv)
  methods = {name: METHODS[name] for name in ["svd"] + args.methods.split(",") if name in METHODS}
  suites = {"resnet20": common.resnet20_kernel_shapes(),
            "resnet50": common.resnet50_kernel_shapes(),
            "transformer768": common.transformer_kernel_shapes(768),
            "transformer768x4": common.transformer_kernel_shapes(768, 4)}
  if args.large:
    suites["transformer4096"] = common.transformer_kernel_shapes(4096)
  if args.suites:
    suites = {name: suites[name] for name in args.suites.split(",")}
  if args.smoke:  # one shape group (a stack of two 144 x 16 matrices): each group compiles anew
    suites = {"resnet20": common.resnet20_kernel_shapes()[1:3]}
  rows = []
  rng = np.random.default_rng(0)
  for suite, shapes in suites.items():
    for (p_, n), count in groups(shapes).items():
      g = jnp.asarray(rng.standard_normal((count, p_, n)), jnp.float32)
      compiled, compile_s = {}, {}
      for name, fn in methods.items():
        compiled[name], compile_s[name] = common.compile_seconds(fn, g)
      times = common.time_interleaved(compiled, {k: (g,) for k in compiled},
                                      1 if args.smoke else args.repeats)
      exact = reference(g)
      for name in methods:
        orth, dist = errors(compiled[name](g), exact)
        rows.append({"suite": suite, "shape": f"{count}x{p_}x{n}", "method": name,
                     "ms": 1e3 * times[name], "vs svd": times[name] / times["svd"],
                     "compile s": compile_s[name], "orth err": orth, "dist to UV^T": dist})
      print(suite, (count, p_, n), {k: f"{1e3 * v:.1f}ms" for k, v in times.items()}, flush=True)
  print(common.write("matrix_methods", rows, args.out))


if __name__ == "__main__":
  jax.config.parse_flags_with_absl()
  main()
