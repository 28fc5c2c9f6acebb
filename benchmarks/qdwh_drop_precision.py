"""Where `qdwh`'s error on real gradients comes from: its iteration or its drop step.

    python -m benchmarks.qdwh_drop_precision [--steps 100] [--data input.txt] [--out DIR]
        [--cache gradients.npz]

On the character GPT's 24 hidden gradient matrices (`benchmarks.lm_gradients`), each at the
default `rtol`, the spectral distance to the float64 polar factor with the same drop, for:
`svd`; `qdwh`; `qdwh`'s iteration (float32) with the drop step's symmetric eigendecomposition of
H = X^T G done in float64 (H itself formed in float32, or in float64); and the iteration with
only Cholesky-based steps (weight c capped at 100 by taking the weights of a larger bound), drop
step in float32 and float64. The float64 routes are a diagnosis, not a method: float64 needs
`jax_enable_x64`. The float32 remedy: `polar_drop.projector`, H and W^T H W formed with split
products and the block of W^T H W near the cut eigendecomposed again.
"""

from __future__ import annotations

import math
import pathlib

import jax
import numpy as np

from benchmarks import common, lm_gradients
from orthax import polar
from orthax._src import polar_drop, polar_qdwh


def capped_weights(lower: float, eps: float, cap: float) -> list[tuple[float, float, float]]:
  """DWH weights with c <= cap: each step uses the weights of the smallest bound l' >= l whose c
  is at most cap (the map stays increasing and at most 1 on [l, 1], so l grows to f(l))."""
  steps, low = [], lower
  while low < 1 - eps and len(steps) < 40:
    hi = low
    if polar_qdwh.qdwh_weights(low, 0.0)[0][2] > cap:
      lo, hi = low, 1.0
      for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if polar_qdwh.qdwh_weights(mid, 0.0)[0][2] > cap else (lo, mid)
    a, b, c = polar_qdwh.qdwh_weights(hi, 0.0)[0]
    steps.append((a, b, c))
    low = min(1.0, low * (a + b * low * low) / (1 + c * low * low))
  return steps


def iterate(g: jax.Array, lower: float, capped: bool) -> jax.Array:
  jnp = jax.numpy
  x = g / jnp.linalg.norm(g)
  eps = float(jnp.finfo(g.dtype).eps)
  if not capped:
    return polar_qdwh._iterate(g, lower)
  for a, b, c in capped_weights(lower, eps, polar_qdwh.CHOLESKY_MAX_WEIGHT):
    x = polar_qdwh._cholesky_step(x, a, b, c)
  return x


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
      "QR+Cholesky iteration, drop f32": (False, f32, f32),
      "QR+Cholesky iteration, drop eigh f64 (H f32)": (False, f32, f64),
      "QR+Cholesky iteration, drop f64 (H and eigh)": (False, f64, f64),
      "QR+Cholesky iteration (f32), refined drop (f32, split products)": (False, None, None),
      "Cholesky-only iteration (c <= 100), drop f32": (True, f32, f32),
      "Cholesky-only iteration (c <= 100), drop eigh f64 (H f32)": (True, f32, f64),
      "Cholesky-only iteration (c <= 100), refined drop (f32, split products)": (True, None, None),
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
        capped, product, eig = route
        x = iterate(x32, tol / math.sqrt(k), capped)
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
