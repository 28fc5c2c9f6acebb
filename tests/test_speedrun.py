"""orthax.speedrun_muon against the speedrun's optimiser composed by hand in numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import orthax
from tests.helpers import polar_reference, random_matrix

EMBED, HEADS, HEAD_DIM, HIDDEN, VOCAB = 8, 4, 2, 16, 10
LR, ADAM_LR, BETA, BETA2, WD, ADAM_WD = 0.05, 0.01, 0.9, 0.8, 0.5, 0.3
B1, B2, EPS = 0.9, 0.99, 1e-10
SHAPES = {
    "attn": {"query": {"kernel": (EMBED, HEADS, HEAD_DIM)},
             "key": {"kernel": (EMBED, HEADS, HEAD_DIM)},
             "value": {"kernel": (EMBED, HEADS, HEAD_DIM)},
             "out": {"kernel": (HEADS, HEAD_DIM, EMBED)}},
    "mlp": {"kernel": (EMBED, HIDDEN)},
    "embed": {"embedding": (VOCAB, EMBED)},
    "lm_head": {"kernel": (EMBED, VOCAB)},
    "norm": {"scale": (EMBED,)},
}


QUERY_KEY = ("attn/query/kernel", "attn/key/kernel")
HIDDEN = (*QUERY_KEY, "attn/value/kernel", "attn/out/kernel", "mlp/kernel")


def random_tree(rng) -> dict:
  return jax.tree.map(lambda s: random_matrix(rng, s).astype(np.float64), SHAPES,
                      is_leaf=lambda s: isinstance(s, tuple))


def by_path(tree) -> dict[str, np.ndarray]:
  return {"/".join(k.key for k in path): np.asarray(x, np.float64)
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def matrices(path: str, x: np.ndarray) -> list[np.ndarray]:
  """The speedrun's (P, N) = (fan-in, fan-out) matrices of a hidden leaf: query and key per pair
  of heads (embed, 2 * head_dim), value (embed, heads * head_dim) and out (heads * head_dim,
  embed) whole."""
  if path in QUERY_KEY:
    pairs = x.reshape(EMBED, HEADS // 2, 2 * HEAD_DIM)
    return [pairs[:, g] for g in range(HEADS // 2)]
  return [x.reshape(EMBED, -1) if path == "attn/value/kernel" else x.reshape(-1, x.shape[-1])]


def from_matrices(path: str, ms: list[np.ndarray], shape) -> np.ndarray:
  return (np.stack(ms, axis=1) if path in QUERY_KEY else ms[0]).reshape(shape)


def cautious(d: np.ndarray, x: np.ndarray, weight_decay: float) -> np.ndarray:
  return d + weight_decay * np.where(np.sign(d) * np.sign(x) >= 0, x, 0)


class Reference:
  """NorMuon with cautious decay on the hidden matrices, Adam with cautious decay elsewhere;
  Nesterov momentum with optax's bias correction in both."""

  def __init__(self, params: dict[str, np.ndarray]):
    self.t = 0
    self.m = {k: np.zeros_like(x) for k, x in params.items()}
    self.v = {k: np.zeros_like(x) for k, x in params.items()}
    self.nu: dict[tuple[str, int], np.ndarray] = {}

  def update(self, grads: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> dict:
    self.t += 1
    return {k: (self.hidden if k in HIDDEN else self.adam)(k, grads[k], x)
            for k, x in params.items()}

  def hidden(self, path, g, x):
    t = self.t
    m = self.m[path] = BETA * self.m[path] + (1 - BETA) * g
    look_ahead = BETA * m / (1 - BETA**(t + 1)) + (1 - BETA) * g / (1 - BETA**t)
    out = []
    for i, a in enumerate(matrices(path, look_ahead)):
      p, n = a.shape
      o = polar_reference(a) * np.sqrt(max(1.0, n / p))
      # NorMuon along the longer side: one moment per column (fan-out unit) when N >= P.
      mean_square = np.mean(o**2, axis=0 if n >= p else 1, keepdims=True)
      nu = self.nu[(path, i)] = BETA2 * self.nu.get((path, i), 0.0) + (1 - BETA2) * mean_square
      scaled = o / (np.sqrt(nu) + 1e-10)
      out.append(scaled * np.linalg.norm(o) / np.linalg.norm(scaled))
    return -LR * cautious(from_matrices(path, out, x.shape), x, WD)

  def adam(self, path, g, x):
    t = self.t
    m = self.m[path] = B1 * self.m[path] + (1 - B1) * g
    v = self.v[path] = B2 * self.v[path] + (1 - B2) * g**2
    m_hat = B1 * m / (1 - B1**(t + 1)) + (1 - B1) * g / (1 - B1**t)
    return -ADAM_LR * cautious(m_hat / (np.sqrt(v / (1 - B2**t)) + EPS), x, ADAM_WD)


def test_matches_the_numpy_reference_over_three_steps():
  rng = np.random.default_rng(0)
  params = random_tree(rng)
  tx = orthax.speedrun_muon(
      LR, beta=BETA, normuon_beta2=BETA2, weight_decay=WD, adam_learning_rate=ADAM_LR,
      adam_b1=B1, adam_b2=B2, eps=EPS, adam_weight_decay=ADAM_WD, method="svd")
  f32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state, step = tx.init(f32), jax.jit(tx.update)
  reference = Reference(by_path(params))
  for t in range(3):
    grads = random_tree(rng)
    got, state = step(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads), state, f32)
    expected, got = reference.update(by_path(grads), by_path(params)), by_path(got)
    assert set(got) == set(expected)
    for path, e in expected.items():
      # A float32 SVD of these small random matrices (condition numbers below ~30) and a few
      # elementwise steps: 1e-5 of the largest entry is a margin of ~3x over eps * 30 * steps.
      np.testing.assert_allclose(got[path], e, rtol=0, atol=1e-5 * np.abs(e).max(),
                                 err_msg=f"step {t} {path}")


def test_default_method_is_polar_express():
  """The default differs from the exact polar factor only by Polar Express's error."""
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), random_tree(rng))
  grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), random_tree(rng))
  default, exact = orthax.speedrun_muon(LR), orthax.speedrun_muon(LR, method="svd")
  pe = orthax.speedrun_muon(LR, method="polar_express")
  u_default = default.update(grads, default.init(params), params)[0]
  u_pe = pe.update(grads, pe.init(params), params)[0]
  u_exact = exact.update(grads, exact.init(params), params)[0]
  jax.tree.map(np.testing.assert_array_equal, u_default, u_pe)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, u_default, u_exact)))


# An examples test: examples.lib needs optax.contrib.MuonDimensionNumbers, newer than the floor.
@pytest.mark.examples
def test_the_examples_name_it():
  from examples.lib import optimizers
  tx = optimizers.make_optimizer("speedrun-muon", learning_rate=0.02, mask="hidden")
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), random_tree(rng))
  updates, _ = tx.update(params, tx.init(params), params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  with pytest.raises(ValueError, match="needs orthax-muon"):
    optimizers.check_name("speedrun-muon", "hidden", "heads")
