"""The drop step of an iterative exact polar factor, resolved at the cut in float32.

An iteration such as QDWH maps every singular value of G towards 1, so the directions at or
below the cut `tol * max(S)` must be removed afterwards. Their projector comes from the symmetric
matrix H = X^T G (X the iterate), whose eigenvalues are G's singular values. A float32 `eigh` of
H has a backward error of order eps ||H||, as large as the eigenvalues near a cut at round-off
level, so it mixes directions on either side of the cut. Here H is formed with split products
(below), and the eigenvectors W of its `eigh` only serve as a basis: in it, B = W^T H W is formed
with split products too, and the block of B whose diagonal lies at or below `window` times the
cut is eigendecomposed again. That block's norm is about `window` times the cut, so the second
`eigh`'s backward error is of order eps `window` times the cut, and the cut is resolved to the
accuracy of B. Directions above the window lie at least (`window` - 1) times the cut away from
the block, so the first `eigh`'s error turns them towards it by at most about
eps ||H|| / ((`window` - 1) cut).

Split products (Ozaki's error-free splitting): each row of the left factor and each column of the
right factor is split into a high part, whose entries are integer multiples of 2^(e - b) for the
row's (column's) exponent e with magnitude below 2^e, and the exact remainder. With
2 b + ceil(log2 n) <= 24 the product of the high parts is exact in float32 in any order of
summation (with b <= 8 also in a bfloat16 pass or TF32), and A B = hi hi + hi lo + lo B has an
error of order eps 2^-b |A| |B|, plus the rounding of the result, instead of n eps |A| |B|.

References:
  Ozaki, Ogita, Oishi, Rump, `Error-free transformations of matrix multiplication by using fast
  routines of matrix multiplication and its applications
  <https://doi.org/10.1007/s11075-011-9478-1>`_, 2012
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from orthax._src.polar_conventions import matmul, mT, sym

Array = jax.Array

# The block eigendecomposed again: directions whose Rayleigh quotient is at most this many times
# the cut.
WINDOW = 64.0


def split_bits(n: int, dtype: Any = jnp.float32) -> int:
  """The most bits b, at most 8, with 2 b + ceil(log2 n) at most the dtype's significand bits
  (24 for float32): the product of two high parts of inner dimension n is then exact in that
  dtype (and each high part fits a bfloat16)."""
  digits = jnp.finfo(dtype).nmant + 1
  return min(8, (digits - math.ceil(math.log2(max(n, 1)))) // 2)


def split(a: Array, bits: int, axis: int) -> tuple[Array, Array]:
  """(hi, lo) with a = hi + lo exactly: along `axis`, with e the least integer such that every
  |a| < 2^e, hi's entries are integer multiples of 2^(e - bits) below 2^e in magnitude (at most
  `bits` significant bits, aligned across the axis). Where 2^(e - bits) would not be a normal
  number, hi is zero and lo is a. Only scalings by powers of two and truncation: exact."""
  _, e = jnp.frexp(jnp.max(jnp.abs(a), axis=axis, keepdims=True))  # max |a| < 2^e.
  normal = e - bits >= jnp.finfo(a.dtype).minexp
  up = jnp.where(normal, bits - e, 0)
  hi = jnp.where(normal, jnp.ldexp(jnp.trunc(jnp.ldexp(a, up)), -up), 0)
  return hi, a - hi


def split_matmul(a: Array, b: Array) -> Array:
  """a @ b (float32, batched) with an error of order eps 2^-bits |a| |b| (`split_bits` of the
  inner dimension), from one exact product of high parts and two products of remainders."""
  bits = split_bits(a.shape[-1], a.dtype)
  a_hi, a_lo = split(a, bits, axis=-1)  # Each row of a.
  b_hi, b_lo = split(b, bits, axis=-2)  # Each column of b.
  return matmul(a_hi, b_hi) + (matmul(a_hi, b_lo) + matmul(a_lo, b))  # The first is exact.


def projector(x: Array, g: Array, tol: Any, *, window: float = WINDOW) -> Array:
  """W_K W_K^T for a tall stack: W_K spans the eigenvectors of H = X^T G (X the iterate, G's
  polar factor on its kept directions) whose eigenvalues, G's singular values, are above `tol`
  times the largest. H is formed with split products; then `eigenprojector`.

  Args:
    x: the iterate, shape (..., P, N), float32.
    g: the matrices, the same shape and dtype.
    tol: the relative cut, a number or an array broadcastable to (..., 1).
    window: as in `eigenprojector`.

  Returns:
    The N x N projectors, shape (..., N, N).
  """
  return eigenprojector(split_matmul(mT(x), g), tol, window=window)


def eigenprojector(h: Array, tol: Any, *, window: float = WINDOW) -> Array:
  """The projector onto the eigenvectors of a symmetric positive semidefinite stack `h` whose
  eigenvalues are above `tol` times the largest, resolved at the cut to the accuracy of `h`.

  Args:
    h: shape (..., N, N), float32, symmetric up to round-off (its symmetric part is used).
    tol: the relative cut, a number or an array broadcastable to (..., 1).
    window: directions whose Rayleigh quotient is at most `window` times the cut are separated
      by a second eigendecomposition of their block of W^T H W; must exceed 2.

  Returns:
    The projectors, shape (..., N, N), symmetric. Against the projector of h's exact
    eigendecomposition, the error is of order (the error of W^T H W's block plus eps `window`
    times the cut) / gap, gap the distance of the eigenvalues from the cut, plus
    eps ||h|| / ((`window` - 1) cut) from the first `eigh`, plus float32 round-off in W.
  """
  h = sym(h)
  lam, w = jnp.linalg.eigh(h)
  cut = tol * lam[..., -1:]  # (..., 1)
  b = sym(split_matmul(mT(w), split_matmul(h, w)))  # W^T H W, nearly diagonal.
  rayleigh = jnp.diagonal(b, axis1=-2, axis2=-1)
  near = rayleigh <= window * cut
  both = near[..., :, None] & near[..., None, :]
  # The block, with every other direction moved to an eigenvalue outside it.
  outside = 4 * window * cut
  block = jnp.where(both, b, 0) + (jnp.where(near, 0, outside)[..., None, :]
                                   * jnp.eye(b.shape[-1], dtype=b.dtype))
  mu, q = jnp.linalg.eigh(block)
  kept_far = (~near).astype(w.dtype)
  kept_near = ((mu > cut) & (mu < 2 * window * cut)).astype(w.dtype)
  v = matmul(w, q)
  return matmul(w * kept_far[..., None, :], mT(w)) + matmul(v * kept_near[..., None, :], mT(v))
