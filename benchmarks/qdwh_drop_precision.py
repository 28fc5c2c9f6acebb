"""Where `qdwh`'s error on real gradients comes from: its iteration or its drop step.

    python -m benchmarks.qdwh_drop_precision [--steps 100] [--data input.txt] [--out DIR]
        [--cache gradients.npz]

On the character GPT's 24 hidden gradient matrices (`benchmarks.lm_gradients`), each at the
default `rtol`, the spectral distance to the float64 polar factor with the same drop, for:
`svd`; `qdwh`; `qdwh`'s iteration (float32) with a plain float32 drop step (one symmetric
eigendecomposition of H = X^T G), with that eigendecomposition done in float64 (H itself formed
in float32, or in float64), and with `qdwh`'s own drop step (`polar_drop.projector`: H and
W^T H W formed with split products, the block of W^T H W near the cut eigendecomposed again).
The float64 routes are a diagnosis, not a method: float64 needs `jax_enable_x64`.
"""

from __future__ import annotations

import math
import pathlib

import jax
import numpy as np

from benchmarks import common, lm_gradients
from orthax import polar
from orthax._src import polar_drop, polar_qdwh


def iterate(g: jax.Array, lower: float) -> jax.Array:
  """`qdwh`'s iteration (Cholesky steps, weight c at most 100) of a tall float32 matrix."""
  return polar_qdwh._iterate(g, lower)


def drop(x: jax.Array, g: jax.Array, tol: float, product, eig) -> np.ndarray:
  """X W_K W_K^T (then one Newton-Schulz step), H = X^T G formed in `product`, its
  eigendecomposition in `eig` (dtypes), the result in float32; `product` None: the projector of
  `polar_drop.projector` (float32, split products)."""
  jnp = jax.numpy
  if product is None:
    p = polar_drop.projector(x, g, tol)
  else:
    h = x.astype(product).T @ g.astype(product)
    lam, w = jnp.linalg.eigh(((h + h.T) / 2).astype(eig))
    p = ((w * (lam > tol * lam[-1])) @ w.T).astype(x.dtype)
  o = x @ p
  return np.asarray(o @ (1.5 * jnp.eye(o.shape[1], dtype=o.dtype) - 0.5 * (o.T @ o)), np.float64)


def gradients(args) -> list[np.ndarray]:
  """The 24 hidden matrices, read from `args.cache` if it exists, else collected (and saved
  there when given)."""
  if args.cache is not None and args.cache.exists():
    with np.load(args.cache) as saved:
      return [saved[f"arr_{i}"] for i in range(len(saved.files))]
  _, matrices = lm_gradients.hidden_gradients(1 if args.smoke else args.steps, args.data,
                                              args.smoke)
  if args.cache is not None:
    np.savez(args.cache, *matrices)
  return matrices


def main(argv: list[str] | None = None) -> None:
  p = common.parser(__doc__)
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--data", default=None)
  p.add_argument("--cache", type=pathlib.Path, default=None,
                 help="an .npz of the gradients: read if it exists, else written")
  args = p.parse_args(argv)
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    run(args)
  finally:  # Restored: other code in this process (tests) runs in float32.
    jax.config.update("jax_enable_x64", previous)


def run(args) -> None:
  jnp = jax.numpy
  f32, f64 = jnp.float32, jnp.float64
  matrices = gradients(args)
  routes = {
      "svd": None, "qdwh": None,
      "qdwh's iteration, drop f32 (plain eigh of H)": (f32, f32),
      "qdwh's iteration, drop eigh f64 (H f32)": (f32, f64),
      "qdwh's iteration, drop f64 (H and eigh)": (f64, f64),
      "qdwh's iteration, refined drop (f32, split products: qdwh's own)": (None, None),
  }
  errors: dict[str, list[float]] = {name: [] for name in routes}
  for g in matrices:  # Tall (P >= N), float32.
    rtol = polar.default_rtol(g.shape, f32)
    truth, _ = lm_gradients.reference(g, rtol)
    k = min(g.shape)
    tol = max(rtol, math.sqrt(k) * float(jnp.finfo(f32).eps))
    x32 = jnp.asarray(g, f32)
    for name, route in routes.items():
      if route is None:
        o = np.asarray(getattr(polar, name)(x32, rtol=rtol), np.float64)
      else:
        product, eig = route
        x = iterate(x32, tol / math.sqrt(k))
        o = drop(x, x32, tol, product, eig)
      errors[name].append(float(np.linalg.norm(o - truth, 2)))
  svd = np.asarray(errors["svd"])
  rows = [{"route": name, "error, worst": max(e), "error, median": float(np.median(e)),
           "median ratio to svd": float(np.median(np.asarray(e) / svd))}
          for name, e in errors.items()]
  print(common.write("qdwh_drop_precision", rows, args.out,
                     notes=f"{len(matrices)} matrices after {args.steps} AdamW steps; spectral "
                           "distance to the float64 polar factor with the same default rtol."))


if __name__ == "__main__":
  main()
