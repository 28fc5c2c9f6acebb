"""`eigh`'s SVD fallback on a stack where some matrices are ill-conditioned.

    python -m benchmarks.eigh_fallback

A stack of k tall matrices, each with singular values log-spaced over [1/kappa, 1]: kappa = 10
(the Gram route is accurate) or 1e4 (it is not, so `eigh` decomposes that matrix by SVD).
Timed interleaved: `eigh` on the all-good stack, on the stack with 1 bad matrix, and `svd` on one
matrix and on the whole stack. On CPU the fallback is per matrix, so a stack with one bad matrix
should cost about k Gram routes plus one SVD (`ratio to 1 SVD + k Gram` near 1); a fallback per
stack would cost k SVDs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import orthax
from benchmarks import common


def conditioned(rng, p: int, n: int, kappa: float) -> np.ndarray:
  u, _ = np.linalg.qr(rng.standard_normal((p, n)))
  v, _ = np.linalg.qr(rng.standard_normal((n, n)))
  return ((u * np.logspace(0, -np.log10(kappa), n)) @ v.T).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
  args = common.parser(__doc__).parse_args(argv)
  orthax.polar.eigh(jnp.ones((2, 1)))  # Sets up LAPACK threading as the library does.
  cases = [(8, 576, 64), (8, 1152, 128)] if not args.smoke else [(3, 48, 8)]
  rows = []
  rng = np.random.default_rng(0)
  for k, p, n in cases:
    good = np.stack([conditioned(rng, p, n, 10.0) for _ in range(k)])
    mixed = good.copy()
    mixed[k // 2] = conditioned(rng, p, n, 1e4)
    inputs = {"eigh, all good": (orthax.polar.eigh, good),
              "eigh, 1 bad": (orthax.polar.eigh, mixed),
              "svd, 1 matrix": (orthax.polar.svd, mixed[:1]),
              "svd, whole stack": (orthax.polar.svd, mixed)}
    compiled = {name: jax.jit(fn).lower(jnp.asarray(x)).compile()
                for name, (fn, x) in inputs.items()}
    times = common.time_interleaved(
        compiled, {name: (jnp.asarray(x),) for name, (_, x) in inputs.items()},
        1 if args.smoke else args.repeats)
    expected = times["eigh, all good"] + times["svd, 1 matrix"]
    rows.append({"stack": f"{k} x {p} x {n}",
                 **{f"{name} ms": 1e3 * t for name, t in times.items()},
                 "ratio to 1 SVD + k Gram": times["eigh, 1 bad"] / expected,
                 "ratio to k SVD": times["eigh, 1 bad"] / times["svd, whole stack"]})
    print(rows[-1], flush=True)
  print(common.write("eigh_fallback", rows, args.out))


if __name__ == "__main__":
  main()
