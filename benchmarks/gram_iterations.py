"""Gram vs plain form of the matrix-product methods (`newton_schulz`, `polar_express`).

    python -m benchmarks.gram_iterations             # ResNet-50, transformer-768, P/N = 1..9
    python -m benchmarks.gram_iterations --smoke     # smallest sizes (the test runs this)

Both forms of `_odd_polynomial_steps` on the same float32 stacks: `plain` takes every step on the
(transposed to wide) M x L matrix X, `gram` two steps at a time on its M x M Gram matrix
(`_gram_steps`, restarting from X every two steps). Times are jitted, interleaved in one process;
compile times apart. Errors are spectral norms, the largest over the stack: `dist` is
||O - U V^T||_2 against numpy's float64 SVD (mostly the method's own approximation);
`round-off` is ||O - O64||_2 against the same iteration in float64 (numpy), the float32 error of
the form itself, also for two Gram forms not adopted: restarted once, after step 2 (Dao-AILab's
gram-newton-schulz), and never (`from X0`). Data: `randn` is Gaussian; `kappa 1e6` has singular
values log-spaced over [1e-6, 1].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, matrix_methods
from orthax._src import polar_iterative as polar

METHODS = {
    "newton_schulz": np.tile(np.asarray(polar.NEWTON_SCHULZ_COEFFICIENTS), (5, 1)),
    "polar_express": np.asarray(polar.polar_express_coefficients(5)),
}


def _wide(fn):
  """fn on the normalised wide form of each (B, P, N) matrix, as `_odd_polynomial_steps` sees it."""
  def wrapped(g, coefficients):
    tall = g.shape[-2] > g.shape[-1]
    x = np.swapaxes(g, -1, -2) if tall else g
    x = x / np.linalg.norm(x, axis=(-2, -1), keepdims=True)
    x = fn(x, coefficients)
    return np.swapaxes(x, -1, -2) if tall else x
  return wrapped


@_wide
def iterate64(x: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
  """The plain iteration in float64."""
  x = np.asarray(x, np.float64)
  for a, b, c in coefficients:
    r = x @ np.swapaxes(x, -1, -2)
    x = a * x + (b * r + c * (r @ r)) @ x
  return x


def gram_segments(x: jax.Array, coefficients: np.ndarray, cuts: tuple[int, ...]) -> jax.Array:
  """The Gram form restarted from X before each step in `cuts` (and at no other)."""
  tall = x.shape[-2] > x.shape[-1]
  x = jnp.swapaxes(x, -1, -2) if tall else x
  x = x / jnp.linalg.norm(x, axis=(-2, -1), keepdims=True)
  edges = [0, *cuts, len(coefficients)]
  for start, stop in zip(edges[:-1], edges[1:], strict=True):
    x = polar._gram_steps(x, coefficients[start:stop])
  return jnp.swapaxes(x, -1, -2) if tall else x


def spectral(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(np.asarray(a, np.float64) - b, ord=2, axis=(-2, -1)).max())


def conditioned(rng, count: int, p: int, n: int, kappa: float) -> np.ndarray:
  k = min(p, n)
  u, _ = np.linalg.qr(rng.standard_normal((count, p, k)))
  v, _ = np.linalg.qr(rng.standard_normal((count, n, k)))
  s = np.logspace(0, -np.log10(kappa), k)
  return (u * s) @ np.swapaxes(v, -1, -2)


def cases(smoke: bool) -> list[tuple[str, int, int, int, str]]:
  """(suite, count, P, N, data) per row group."""
  if smoke:
    return [("aspect", 1, 16, 16, "randn"), ("aspect", 2, 48, 16, "kappa 1e6")]
  rows = []
  for suite, shapes in [("resnet50", common.resnet50_kernel_shapes()),
                        ("transformer768", common.transformer_kernel_shapes(768))]:
    for (p, n), count in matrix_methods.groups(shapes).items():
      rows.append((suite, count, p, n, "randn"))
  for aspect in range(1, 10):
    for data in ["randn", "kappa 1e6"]:
      rows.append(("aspect", 1, 128 * aspect, 128, data))
  return rows


def main(argv: list[str] | None = None) -> None:
  args = common.parser(__doc__).parse_args(argv)
  rng = np.random.default_rng(0)
  rows = []
  for suite, count, p, n, data in cases(args.smoke):
    if data == "randn":
      g64 = rng.standard_normal((count, p, n))
    else:
      g64 = conditioned(rng, count, p, n, float(data.split()[1]))
    g = jnp.asarray(g64, jnp.float32)
    exact = matrix_methods.reference(g64)
    for method, coefficients in METHODS.items():
      forms = {"plain": functools.partial(polar._odd_polynomial_steps, gram=False),
               "gram": functools.partial(polar._odd_polynomial_steps, gram=True)}
      compiled, compile_s = {}, {}
      for form, fn in forms.items():
        compiled[form], compile_s[form] = common.compile_seconds(
            lambda x, fn=fn, c=coefficients: fn(x, c), g)
      times = common.time_interleaved(compiled, {k: (g,) for k in compiled},
                                      1 if args.smoke else args.repeats)
      o64 = iterate64(g64, coefficients)
      out = {form: np.asarray(compiled[form](g), np.float64) for form in forms}
      for label, cuts in [("restart at 2", (2,)), ("from X0", ())]:
        out[label] = jax.jit(lambda x, c=coefficients, cuts=cuts: gram_segments(x, c, cuts))(g)
      rows.append({
          "suite": suite, "shape": f"{count}x{p}x{n}", "data": data, "method": method,
          "plain ms": 1e3 * times["plain"], "gram ms": 1e3 * times["gram"],
          "gram / plain": times["gram"] / times["plain"],
          "compile s plain": compile_s["plain"], "compile s gram": compile_s["gram"],
          "dist plain": spectral(out["plain"], exact), "dist gram": spectral(out["gram"], exact),
          **{f"round-off {label}": spectral(o, o64) for label, o in out.items()},
      })
      print(suite, (count, p, n), data, method,
            {k: f"{1e3 * v:.1f}ms" for k, v in times.items()}, flush=True)
    text = common.write("gram_iterations", rows, args.out)  # Kept if the run stops.
  print(text)


if __name__ == "__main__":
  jax.config.parse_flags_with_absl()
  main()
