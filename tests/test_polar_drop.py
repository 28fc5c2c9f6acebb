"""The drop step's split products and projector against numpy in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orthax import polar
from orthax._src import polar_drop

U32 = 2.0**-24  # float32's unit round-off.


def scaled(rng, shape, row_exponents, entry_exponents) -> np.ndarray:
  """Normal entries times 2^k per row (k in `row_exponents`) and per entry: extreme exponents."""
  rows = 2.0 ** rng.integers(*row_exponents, (shape[0], 1))
  entries = 2.0 ** rng.integers(*entry_exponents, shape)
  return (rng.standard_normal(shape) * rows * entries).astype(np.float32)


@pytest.mark.parametrize("n", [1, 7, 128, 513, 4096])
def test_split_is_exact_and_its_high_product_too(n):
  """a = hi + lo exactly; each row's (column's) hi has at most `bits` significant bits below
  that row's bound 2^e; hi @ hi in float32, at either precision, equals the float64 product
  (exactly: 2 bits + ceil(log2 n) <= 24), with row and column scales from 2^-40 to 2^40."""
  rng = np.random.default_rng(n)
  bits = polar_drop.split_bits(n)
  assert 2 * bits + int(np.ceil(np.log2(n))) <= 24 and bits <= 8
  a = scaled(rng, (9, n), (-40, 40), (-12, 1))
  b = scaled(rng, (8, n), (-40, 40), (-12, 1)).T
  a[0] = 0  # A zero row: all in lo.
  a_hi, a_lo = (np.asarray(t) for t in polar_drop.split(jnp.asarray(a), bits, axis=-1))
  b_hi, b_lo = (np.asarray(t) for t in polar_drop.split(jnp.asarray(b), bits, axis=-2))
  np.testing.assert_array_equal(a_hi.astype(np.float64) + a_lo, a)
  np.testing.assert_array_equal(b_hi.astype(np.float64) + b_lo, b)
  for hi, full, axis in ((a_hi, a, 1), (b_hi, b, 0)):
    e = np.frexp(np.max(np.abs(full), axis=axis, keepdims=True))[1]  # max < 2^e.
    digits = np.ldexp(hi.astype(np.float64), bits - e)
    np.testing.assert_array_equal(digits, np.trunc(digits))
    assert np.all(np.abs(digits) < 2**bits)
    assert np.all(np.abs(full - hi) < np.ldexp(1.0, e - bits))  # lo below one unit of hi.
  exact = a_hi.astype(np.float64) @ b_hi.astype(np.float64)
  for precision in (jax.lax.Precision.DEFAULT, jax.lax.Precision.HIGHEST):
    product = jnp.matmul(jnp.asarray(a_hi), jnp.asarray(b_hi), precision=precision)
    np.testing.assert_array_equal(np.asarray(product, np.float64), exact)


def test_split_leaves_rows_too_small_to_scale_in_lo():
  """A row whose unit 2^(e - bits) would be subnormal is not split (hi 0, lo the row)."""
  a = np.array([[2.0**-125, -(2.0**-126)], [3.0, 0.5]], np.float32)
  hi, lo = polar_drop.split(jnp.asarray(a), 8, axis=-1)
  np.testing.assert_array_equal(np.asarray(hi)[0], 0)
  np.testing.assert_array_equal(np.asarray(lo)[0], a[0])
  np.testing.assert_array_equal(np.asarray(hi)[1], a[1])  # Few bits: all in hi.


@pytest.mark.parametrize("n", [64, 512, 2048])
def test_split_matmul_error_bound(n):
  """|split_matmul(a, b) - a b| <= (n + 2) u 2^-bits (||a_i||_1 2^f_j + 2^e_i ||b_j||_1)
  + 2 u |a b|: the two remainder products (remainders below one unit 2^(e - bits) of their row
  or column) in float32 and the roundings of the sums, on products that cancel."""
  rng = np.random.default_rng(n)
  bits = polar_drop.split_bits(n)
  q, _ = np.linalg.qr(rng.standard_normal((n, 64)))
  a = (q[:, :48].T * np.logspace(0, -6, 48)[:, None]).astype(np.float32)
  b = q[:, 16:64].astype(np.float32)  # a b cancels: its rows 16.. are almost unit vectors.
  truth = a.astype(np.float64) @ b.astype(np.float64)
  split = np.asarray(polar_drop.split_matmul(jnp.asarray(a), jnp.asarray(b)), np.float64)
  unit_a = 2.0 ** np.frexp(np.max(np.abs(a), axis=1, keepdims=True))[1]
  unit_b = 2.0 ** np.frexp(np.max(np.abs(b), axis=0, keepdims=True))[1]
  abs_a, abs_b = np.abs(a).astype(np.float64), np.abs(b).astype(np.float64)
  bound = ((n + 2) * U32 * 2.0**-bits * (abs_a.sum(1, keepdims=True) * unit_b
                                         + unit_a * abs_b.sum(0, keepdims=True))
           + 2 * U32 * np.abs(truth))
  assert np.all(np.abs(split - truth) <= bound)


def synthetic(rng, p: int, n: int, s: np.ndarray):
  """G = U diag(s) V^T rounded to float32, its float64 SVD, and the iterate X: G's polar factor
  on its nonzero directions rounded to float32 (the iteration takes every one of them towards 1)."""
  u, _ = np.linalg.qr(rng.standard_normal((p, n)))
  v, _ = np.linalg.qr(rng.standard_normal((n, n)))
  g = ((u * s) @ v.T).astype(np.float32)
  uu, ss, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
  nonzero = ss > 0
  x = (uu[:, nonzero] @ vt[nonzero]).astype(np.float32)
  return g, x, ss, vt


def straddling(rng, n: int, rtol: float, rel: float) -> np.ndarray:
  """Half the singular values alternate just above and below rtol (relative distance rel to
  2 rel), the rest spread from 1 to 100 rtol, and four zeros."""
  k = n // 2
  side = np.where(np.arange(k) % 2 == 0, 1, -1)
  near = rtol * (1 + rel * side * (1 + rng.uniform(0, 1, k)))
  return np.r_[np.logspace(0, np.log10(100 * rtol), n - k - 4), near, np.zeros(4)]


def families(rng, p: int, n: int):
  """(name, singular values, rtol): straddling the default cut, straddling a cut at 1e-3
  within 1%, ill-conditioned (kappa 1e7, the cut midway between two near 1e-4), two clusters
  each 1e-3 wide just above and below the cut, rank-deficient (rank 10)."""
  default = polar.default_rtol((p, n), jnp.float32)
  kappa = np.logspace(0, -7, n)
  i = int(np.searchsorted(-kappa, -1e-4))
  yield "straddling, default rtol", straddling(rng, n, default, 0.25), default
  yield "straddling 1e-3 within 1%", straddling(rng, n, 1e-3, 1e-2), 1e-3
  yield "kappa 1e7", kappa, float(np.sqrt(kappa[i] * kappa[i - 1]))
  clusters = 1e-3 * np.r_[1.02 + 1e-3 * rng.uniform(size=n // 4),
                          0.98 + 1e-3 * rng.uniform(size=n // 4)]
  yield "clustered", np.r_[np.logspace(0, -2, n - clusters.size), clusters], 1e-3
  yield "rank 10", np.r_[np.logspace(0, -1, 10), np.zeros(n - 10)], default


@pytest.mark.parametrize("p, n", [(128, 128), (512, 128), (200, 60)])
def test_projector_against_float64(p, n):
  """Against the projector onto G's right singular vectors above rtol * max(S) (float64): within
  the first-order bound of H = X^T G's rounding to float32, ||E|| <= u ||H||_F, over the
  distance `gap` of the singular values from the cut, with a margin of 2 for the other
  errors (the split products, W^T H W's rounding, the second `eigh`), plus the first `eigh`'s
  turn of the directions above the window, N u ||H|| / ((window - 1) cut); the same number of
  directions kept. A direction moved across the cut would be an error of 1."""
  rng = np.random.default_rng(p + n)
  for name, s, rtol in families(rng, p, n):
    g, x, ss, vt = synthetic(rng, p, n, np.sort(s)[::-1])
    cut = rtol * ss[0]
    kept = vt[ss > cut]
    perturbation = 2 * U32 * np.linalg.norm(ss)
    gap = np.min(np.abs(ss - cut))
    assert perturbation < gap / 4, name  # The family is resolvable in float32.
    got = jax.jit(polar_drop.projector)(jnp.asarray(x), jnp.asarray(g), rtol)
    assert got.dtype == jnp.float32 and got.shape == (n, n)
    got = np.asarray(got, np.float64)
    error = np.linalg.norm(got - kept.T @ kept, 2)
    assert error <= bound(perturbation, gap, n, ss[0], cut), (name, error)
    assert abs(np.trace(got) - kept.shape[0]) < 0.5, name


def bound(perturbation: float, gap: float, n: int, biggest: float, cut: float) -> float:
  """Davis and Kahan's sin theta bound for a perturbation below the gap, plus the first
  `eigh`'s turn of the directions above the window (backward error taken as N u ||H||)."""
  return (perturbation / (gap - perturbation)
          + n * U32 * biggest / ((polar_drop.WINDOW - 1) * cut))


@pytest.mark.parametrize("n", [16, 128])
def test_eigenprojector_resolves_the_cut_of_an_exact_h(n):
  """For a float32 H known exactly, with half its eigenvalues 1% to 2% away from a cut at
  round-off level (4 N u ||H||), on either side, the projector's error is within `bound` for a
  perturbation of 4 sqrt(N) u (2^-bits ||H||_F + `window` cut): the split products' and the
  second `eigh`'s errors, with sqrt(N) u per inner product (Higham and Mary's probabilistic
  bound) and a margin of 4. A float32 `eigh` of H, whose backward error is a few u ||H||, is
  off by more than that bound here."""
  rng = np.random.default_rng(n)
  rtol = 4 * n * U32
  s = straddling(rng, n, rtol, 1e-2)
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  h = ((q * s) @ q.T).astype(np.float32)
  h = (h + h.T) / 2  # Exactly symmetric, exactly known.
  lam, w = np.linalg.eigh(h.astype(np.float64))
  cut = rtol * lam[-1]
  kept = w[:, lam > cut]
  gap = np.min(np.abs(lam - cut))
  bits = polar_drop.split_bits(n)
  perturbation = 4 * np.sqrt(n) * U32 * (2.0**-bits * np.linalg.norm(lam)
                                         + polar_drop.WINDOW * cut)
  tolerance = bound(perturbation, gap, n, lam[-1], cut)
  assert tolerance < 0.2  # A flip, or an error of u ||H|| / gap, fails.
  assert tolerance < U32 * lam[-1] / gap
  got = np.asarray(polar_drop.eigenprojector(jnp.asarray(h), rtol), np.float64)
  assert np.linalg.norm(got - kept @ kept.T, 2) <= tolerance


def test_projector_is_batched_and_drops_everything_of_zero():
  """A stack gives each matrix's projector within `bound` (one batched program, no loop over
  the stack); a zero matrix gives zero."""
  rng = np.random.default_rng(1)
  cases = [synthetic(rng, 48, 32, np.sort(s)[::-1])
           for s in (straddling(rng, 32, 1e-3, 0.25), np.zeros(32), np.logspace(0, -1, 32))]
  xs = jnp.asarray(np.stack([c[1] for c in cases]))
  gs = jnp.asarray(np.stack([c[0] for c in cases]))
  got = np.asarray(polar_drop.projector(xs, gs, 1e-3), np.float64)
  for i, (_, _, ss, vt) in enumerate(cases[::2]):
    cut = 1e-3 * ss[0]
    kept = vt[ss > cut]
    perturbation = 2 * U32 * np.linalg.norm(ss)
    error = np.linalg.norm(got[2 * i] - kept.T @ kept, 2)
    assert error <= bound(perturbation, np.min(np.abs(ss - cut)), 32, ss[0], cut)
  np.testing.assert_array_equal(got[1], 0)
