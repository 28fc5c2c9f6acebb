"""The README's quick start runs as written, and computes what its comments say."""

import pathlib
import re

import numpy as np

from tests.helpers import eps
from tests.test_polar import tol_of

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
EPS32 = eps()


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
  # From zero params the step is -lr * U V^T (decay of zero is zero): float32's U V^T within
  # polar_tol at G's condition number, then two roundings (the rate, the product).
  lr = 1e-2
  for g, step in ((g_dense, ns["sgdm"]["dense"]["kernel"]), (g_conv, ns["sgdm"]["conv"]["kernel"])):
    np.testing.assert_allclose(np.asarray(step).reshape(g.shape), -lr * _polar64(g), rtol=0,
                               atol=lr * (tol_of("svd", g) + EPS32))
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
  # cancel): u is the gradient for the dense kernel, outside the conv-only mask, and Polar
  # Express's factor for the conv kernel. Ten float32 roundings (eps / 2 each: the moments, the
  # corrections, the square root, the division, the rate), with a margin of 2, plus the bias
  # corrections 1 - b^t: b = 0.9, 0.999 rounded to float32 (eps / 2 relative), then the exact
  # subtraction magnifies that by b / (1 - b); the second moment's enters under a square root.
  def adam_step(u):
    return -1e-3 * u / (np.abs(u) + 1e-8)

  def correction(b):
    return EPS32 / 2 * b / (1 - b)

  adam_rtol = 10 * EPS32 + correction(0.9) + correction(0.999) / 2
  adam = ns["adam"]
  np.testing.assert_allclose(np.asarray(adam["dense"]["kernel"]), adam_step(g_dense),
                             rtol=adam_rtol)
  orthax = ns["orthax"]
  factor = np.asarray(orthax.polar.polar_express(g_conv))
  conv_adam = np.asarray(adam["conv"]["kernel"]).reshape(-1, 32)
  # The factor computed here and inside the chain's jit differ by up to twice its own bound; u /
  # (|u| + e) moves by |du| e / (|u| + e)^2, relative to itself |du| / |u| * e / (|u| + e).
  du = 2 * tol_of("polar_express", g_conv)
  smallest = float(np.min(np.abs(factor)))
  assert smallest > du, smallest  # no sign can flip between the two
  np.testing.assert_allclose(
      conv_adam, adam_step(factor),
      rtol=adam_rtol + du / (smallest - du) * 1e-8 / (smallest - du + 1e-8))
  assert np.any(np.sign(conv_adam) != -np.sign(g_conv))
  assert params["dense"]["kernel"].shape == (512, 10)
