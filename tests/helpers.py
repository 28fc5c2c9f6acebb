"""Reference polar factors and tree comparisons shared by the tests."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from orthax._src.polar_iterative import NEWTON_SCHULZ_COEFFICIENTS


def polar_reference(g: Any) -> np.ndarray:
  """U V^T of a 2-D array by a float64 thin SVD in numpy."""
  u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  return u @ vt


# Tolerances. Every numerical tolerance in the tests is one of these bounds (or a stated margin
# over one), never what one CPU printed: other CPUs round float32 differently (vector width, fused
# multiply-add, summation order, threads), so a test must allow the whole bound.


def eps(dtype: Any = np.float32) -> float:
  """The spacing of 1.0 in dtype: 2^-23 for float32, 2^-7 for bfloat16, 2^-52 for float64."""
  return float(jnp.finfo(dtype).eps)


def round_off(dim: int, dtype: Any = np.float32) -> float:
  """Relative error of a length-dim dot product, or of a backward-stable decomposition of a
  matrix whose longer side is dim: 2 sqrt(dim) eps.

  The deterministic worst case is dim * eps / 2 (Higham's gamma_dim); rounding errors of
  different signs cancel, and Higham and Mary's probabilistic bound, lambda sqrt(dim) eps / 2,
  holds with probability at least 1 - 2 exp(-lambda^2 / 2) per product: lambda = 4 (99.93 %).
  """
  return 2.0 * np.sqrt(max(dim, 1)) * eps(dtype)


def condition_number(g: Any) -> float:
  """sigma_max / sigma_min of a matrix (the largest over a stack), in float64."""
  s = np.linalg.svd(np.asarray(g, np.float64), compute_uv=False)
  return float(np.max(s[..., 0] / s[..., -1]))


def polar_tol(kappa: float, dim: int, dtype: Any = np.float32) -> float:
  """Bound on max |O - U V^T| (spectral norm, so every entry) for a polar factor O computed in
  dtype from G with condition number kappa and longer side dim.

  A backward-stable method returns the exact polar factor of G + dG with
  ||dG|| <= round_off(dim) ||G||, and the polar factor moves by at most 3 ||dG|| / sigma_min
  (Li and Sun's perturbation bound for rectangular matrices): 3 kappa round_off(dim).
  """
  return 3.0 * kappa * round_off(dim, dtype)


def iteration_gain(coefficients: Any, s_min: float = 0.0) -> float:
  """How much an odd polynomial iteration X <- a X + b X X^T X + c (X X^T)^2 X amplifies
  round-off: the sum over steps k = 0..K of the largest slope of the remaining steps' composed
  polynomial (its derivative, and f(s) / s, which bound every divided difference and so the
  matrix function's Frechet derivative), over the singular values the iteration meets when its
  input's lie in [s_min, 1] (Frobenius-normalised). Computed in float64 on a grid."""
  coefficients = np.asarray(coefficients, np.float64)
  s = np.unique(np.concatenate([np.linspace(s_min, 1.0, 4001),
                                np.logspace(np.log10(max(s_min, 1e-9)), 0, 4001)]))
  s = s[s > 0]
  gain, y0 = 0.0, s
  for k in range(len(coefficients) + 1):
    y, slope = y0, np.ones_like(s)
    for a, b, c in coefficients[k:]:
      slope = slope * (a + 3 * b * y**2 + 5 * c * y**4)
      y = a * y + b * y**3 + c * y**5
    gain += max(float(np.abs(slope).max()), float(np.abs(y / y0).max()))
    if k < len(coefficients):
      a, b, c = coefficients[k]
      y0 = a * y0 + b * y0**3 + c * y0**5
  return gain


def iteration_tol(coefficients: Any, dim: int, s_min: float = 0.0, dtype: Any = np.float32
                  ) -> float:
  """Bound on the spectral distance between the iteration run in dtype and run exactly: each
  step's round-off (round_off(dim), relative to ||X|| <= 1) times the gain of the steps after it
  (`iteration_gain`)."""
  return iteration_gain(coefficients, s_min) * round_off(dim, dtype)


# Muon's 5 Newton-Schulz steps (optax.contrib.muon's and orthax's newton_schulz).
NEWTON_SCHULZ_5 = np.tile(NEWTON_SCHULZ_COEFFICIENTS, (5, 1))


def newton_schulz_tol(step: int, dim: int) -> float:
  """Bound on the spectral distance between Muon's 5 Newton-Schulz steps run in float32 on the
  momentum of `step` (from 0) and run exactly on the exact momentum, for matrices whose longer
  side is dim: iteration_tol(dim) at s_min = 0 (any gradient), and the momentum's step + 1
  roundings (eps each, relative) amplified by the iteration's gain. The output's spectral norm
  is at most 1.13, so this is also relative to it."""
  return (iteration_tol(NEWTON_SCHULZ_5, dim)
          + iteration_gain(NEWTON_SCHULZ_5) * (step + 1) * eps())


def muon_matrices(x: Any, spec: Any) -> np.ndarray:
  """The (batch, fan_in, fan_out) matrices Muon orthogonalises in leaf x, read by optax's
  `MuonDimensionNumbers` spec: every axis not reduced or output is a batch axis."""
  reduction = (spec.reduction_axis,) if isinstance(spec.reduction_axis, int) else (
      tuple(spec.reduction_axis))
  output = (spec.output_axis,) if isinstance(spec.output_axis, int) else tuple(spec.output_axis)
  batch = tuple(a for a in range(x.ndim) if a not in reduction + output)
  x = np.transpose(np.asarray(x, np.float64), batch + reduction + output)
  fan_in = int(np.prod(np.shape(x)[len(batch):len(batch) + len(reduction)]))
  fan_out = int(np.prod(np.shape(x)[len(batch) + len(reduction):]))
  return x.reshape(-1, fan_in, fan_out)


def two_muons_tol(step: int, learning_rate: float, weight_decay: float, params: np.ndarray
                  ) -> float:
  """Bound on the spectral distance between two float32 Muon updates of the same (batch, fan_in,
  fan_out) matrices `params` fed the same gradients (e.g. optax.contrib.muon and orthax.muon):
  each is -lr (scale NS(m) + wd p), NS within newton_schulz_tol of the exact iteration, scale
  optax's width factor sqrt(max(1, fan_out / fan_in)), and the decay term rounded twice (eps / 2
  each, of at most wd ||p||_2). Twice one run's bound."""
  _, fan_in, fan_out = params.shape
  scale = np.sqrt(max(1.0, fan_out / fan_in))
  decay = weight_decay * max(np.linalg.norm(m, 2) for m in params) * eps()
  return 2 * learning_rate * (scale * newton_schulz_tol(step, max(fan_in, fan_out)) + decay)


def orthogonality_tol(shape: tuple[int, ...], tol: float, largest: float = 1.0) -> float:
  """Bound on `orthax.diagnostics.orthogonality_error` of a float32 matrix O of `shape` (its
  longer side P, shorter N) whose largest entry is at most `largest`: `tol`, the bound on
  ||O^T O - I||_2 that O's own error allows, plus the rounding of computing O^T O in float32:
  round_off(P) of each entry (times max |O|^2 over 1), N^2 entries in the Frobenius norm, over
  sqrt(N): sqrt(N) round_off(P)."""
  p, n = max(shape), min(shape)
  return tol + np.sqrt(n) * round_off(p) * max(1.0, largest**2)


def forward_error(dots: tuple[int, ...], sums: tuple[int, ...]) -> float:
  """Bound on a float32 forward pass's relative error (of each layer's output, against its root
  mean square), at first order, from the lengths of its dot products and of its sums over the
  batch: a dot product of n random-signed terms rounds by round_off(n) of the sum of their
  magnitudes, up to sqrt(n) times the result; a batch sum by round_off(n) of its mean magnitude,
  at most the root mean square that batch norm divides by."""
  return sum(round_off(n) * np.sqrt(n) for n in dots) + sum(round_off(n) for n in sums)


def assert_within(actual: Any, expected: Any, bound: Any) -> None:
  """Every entry of `actual` within its entry of `bound` (an array, or a number for all) of
  `expected`: np.testing.assert_allclose takes only a number as its atol."""
  excess = np.abs(np.asarray(actual, np.float64) - expected) - bound
  assert excess.max() <= 0, (float(excess.max()), float(np.max(bound)))


def assert_trees_close_relative(actual: Any, expected: Any, rtol: float) -> None:
  """Same structure, and every entry of each leaf within rtol * (the expected leaf's Frobenius
  norm), which a relative error rtol in any norm implies: it holds for updates of any size, where
  an atol would hide errors in a small update."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  flat_actual = jax.tree_util.tree_flatten_with_path(actual)[0]
  for (path, a), e in zip(flat_actual, jax.tree.leaves(expected), strict=True):
    e = np.asarray(e, np.float64)
    np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=0,
                               atol=rtol * np.linalg.norm(e),
                               err_msg=jax.tree_util.keystr(path))


def random_matrix(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  """A float32 Gaussian array; tall or wide random matrices are well conditioned."""
  return rng.standard_normal(shape).astype(np.float32)


def assert_trees_allclose(actual: Any, expected: Any, **kwargs) -> None:
  """Same structure, and every pair of leaves allclose (kwargs go to numpy)."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  flat_actual = jax.tree_util.tree_flatten_with_path(actual)[0]
  for (path, a), e in zip(flat_actual, jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(e, np.float64), err_msg=jax.tree_util.keystr(path),
        **kwargs)


def assert_trees_equal(actual: Any, expected: Any) -> None:
  """Same structure, dtypes and bits."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  flat_actual = jax.tree_util.tree_flatten_with_path(actual)[0]
  for (path, a), e in zip(flat_actual, jax.tree.leaves(expected), strict=True):
    assert a.dtype == e.dtype, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=jax.tree_util.keystr(path))


def assert_orthonormal_columns(x: Any, atol: float) -> None:
  """The (P, N) matrix x with P >= N has O^T O = I, to atol (twice the bound on the factor's
  error, and its square: O^T O - I = dO^T U + U^T dO + dO^T dO)."""
  x = np.asarray(x, np.float64)
  np.testing.assert_allclose(x.T @ x, np.eye(x.shape[1]), atol=atol)


class TinyCNN(nn.Module):
  """Two stride-2 convolutions with batch norm, global pooling, a linear classifier."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool):
    for features in (8, 16):
      x = nn.Conv(features, (3, 3), strides=2)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def stable_id(value) -> str:
  """A parametrize id that is the same in every process (pytest-xdist compares them): sets
  sorted, object addresses dropped."""
  import re
  text = repr(sorted(value)) if isinstance(value, (set, frozenset)) else repr(value)
  return re.sub(r" at 0x[0-9a-f]+", "", text)


def float64():
  """A context in which jax computes in float64, leaving the global setting alone:
  `jax.enable_x64(True)`, or `jax.experimental.enable_x64()` before jax had it (jax 0.7)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64
  return enable_x64()
