"""Reference polar factors and tree comparisons shared by the tests."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def polar_reference(g: Any) -> np.ndarray:
  """U V^T of a 2-D array by a float64 thin SVD in numpy."""
  u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  return u @ vt


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


def assert_orthonormal_columns(x: Any, atol: float = 1e-5) -> None:
  """The (P, N) matrix x with P >= N has O^T O = I."""
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
