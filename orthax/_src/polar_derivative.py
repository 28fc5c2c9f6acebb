"""The derivative of the polar factor, for the exact methods.

For G = U S V^T (thin SVD, P >= N, full rank) the polar factor O = U V^T has the derivative

  dO = U X V^T + (I - U U^T) dG V S^-1 V^T,   X_ij = (F_ij - F_ji) / (s_i + s_j),  F = U^T dG V,

X being the solution of the Sylvester equation S X + X S = F - F^T. Its weights 1 / (s_i + s_j)
are finite at repeated singular values, unlike those of the SVD's own derivative (1 / (s_i - s_j)),
which is why differentiating through `svd` or `eigh` gave NaN at, say, G = 2 [I; 0].

Where `rtol` drops directions, the method returns O_K = U_K V_K^T on the kept set K. Its
derivative here is the above with the dropped singular values taken as zero (the derivative of
the polar factor of the truncated G_K = U_K S_K V_K^T):

  dO = U_K X_KK V_K^T + (I - U_K U_K^T) dG V_K S_K^-1 V_K^T + U_K S_K^-1 U_K^T dG (I - V_K V_K^T).

It is the exact derivative of O_K when the dropped singular values are exactly zero (a
rank-deficient G) and K is the same in a neighbourhood; it is zero at a zero matrix (nothing is
kept). The singular basis comes from the small symmetric H = O^T G = V_K S_K V_K^T, so the rule
costs one N x N eigendecomposition per matrix whatever decomposition gave O.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from orthax._src.lapack_threads import map_matrices
from orthax._src.polar_conventions import matmul, mT, sym

Array = jax.Array


def with_polar_derivative(polar: Callable[..., Array], g: Array, ok: Array, *operands) -> Array:
  """`polar(g, ok, *operands)`, for a (B, P, N) stack `g` of finite matrices, differentiated as
  the module says (with no derivative in `operands`, such as a traced tolerance).

  `polar` returns each matrix's (possibly truncated) polar factor, NaN where `ok` is False; the
  tangent is NaN there too. Whatever `polar` uses that may be traced is passed in `ok` and
  `operands`, not closed over (a custom derivative may not close over a traced value).
  """
  fn = jax.custom_jvp(polar)

  @fn.defjvp
  def jvp(primals, tangents):
    g, ok, *_ = primals
    o = polar(*primals)
    if g.shape[-2] < g.shape[-1]:
      return o, mT(polar_tangent(mT(g), mT(o), mT(tangents[0]), ok))
    return o, polar_tangent(g, o, tangents[0], ok)

  return fn(g, ok, *operands)


def polar_tangent(g: Array, o: Array, dg: Array, ok: Array) -> Array:
  """dO for tall (B, P, N) stacks: `o` is the (truncated) polar factor of `g`, `dg` the tangent."""
  h = matmul(mT(o), g)
  h = jnp.where(ok[:, None, None], sym(h), 0)  # LAPACK never sees a NaN.
  s, v = map_matrices(jnp.linalg.eigh, h)
  u = matmul(o, v)  # Unit columns on the kept directions, zero on the dropped ones.
  kept = jnp.sum(u * u, axis=-2) > 0.5
  nan_unless_ok = jnp.where(ok, 1, jnp.nan)[:, None].astype(s.dtype)
  inv = jnp.where(kept, 1 / jnp.where(kept, s, 1), 0) * nan_unless_ok
  both = kept[:, :, None] & kept[:, None, :]
  f = matmul(matmul(mT(u), dg), v)
  x = jnp.where(both, (f - mT(f)) / jnp.where(both, s[:, :, None] + s[:, None, :], 1), 0)
  core = x - kept[:, :, None] * f * inv[:, None, :] - inv[:, :, None] * f * kept[:, None, :]
  core = core * nan_unless_ok[:, :, None]
  # U core V^T + dG V S_K^-1 V^T + U S_K^-1 U^T dG: the U_K U_K^T and V_K V_K^T parts of the two
  # projections are the last two terms of `core`.
  return (matmul(matmul(u, core) + matmul(dg, v * inv[:, None, :]), mT(v))
          + matmul(u, inv[:, :, None] * matmul(mT(u), dg)))
