"""The README's quick start runs as written, and computes what its comments say."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
EPS32 = float(np.finfo(np.float32).eps)


def _polar64(g):
  u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  return u @ vt


def test_quick_start_runs_and_orthogonalises():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert blocks, "README.md has no python block"
  ns = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), ns)
  grads, params = ns["grads"], ns["params"]
  g_dense = np.asarray(grads["dense"]["kernel"])
  g_conv = np.asarray(grads["conv"]["kernel"]).reshape(-1, 32)
  # From zero params the step is -lr * U V^T (decay of zero is zero). float32 SVD's U V^T is
  # within ~max(P, N) * eps of float64's (backward-stable SVD, well-conditioned random G); 8x
  # margin over that bound.
  lr, bound = 1e-2, 8 * 512 * EPS32
  np.testing.assert_allclose(np.asarray(ns["sgdm"]["dense"]["kernel"]), -lr * _polar64(g_dense),
                             rtol=0, atol=lr * bound)
  conv = np.asarray(ns["sgdm"]["conv"]["kernel"]).reshape(-1, 32)
  np.testing.assert_allclose(conv, -lr * _polar64(g_conv), rtol=0, atol=lr * bound)
  # Biases pass through: SGD's first step is -lr * g.
  np.testing.assert_allclose(np.asarray(ns["sgdm"]["dense"]["bias"]),
                             -lr * np.asarray(grads["dense"]["bias"]), rtol=4 * EPS32)
  # The chain by hand is the same optimiser.
  for path in (("dense", "kernel"), ("conv", "kernel"), ("dense", "bias")):
    a, b = ns["sgdm"], ns["by_hand"]
    for key in path:
      a, b = a[key], b[key]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Adam's first step is -lr * u / (|u| + 1e-8) elementwise for its input u (bias corrections
  # cancel; ~10 float32 operations, rtol 1e-5 is ~80 eps): u is the gradient for the dense
  # kernel, outside the conv-only mask, and Polar Express's factor for the conv kernel.
  def adam_step(u):
    return -1e-3 * u / (np.abs(u) + 1e-8)

  adam = ns["adam"]
  np.testing.assert_allclose(np.asarray(adam["dense"]["kernel"]), adam_step(g_dense), rtol=1e-5)
  orthax = ns["orthax"]
  factor = np.asarray(orthax.polar.polar_express(g_conv))
  conv_adam = np.asarray(adam["conv"]["kernel"]).reshape(-1, 32)
  np.testing.assert_allclose(conv_adam, adam_step(factor), rtol=1e-5)
  assert np.any(np.sign(conv_adam) != -np.sign(g_conv))
  assert params["dense"]["kernel"].shape == (512, 10)
