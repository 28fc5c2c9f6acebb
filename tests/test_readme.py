"""The README's quick start runs as written, and computes what it says."""

import pathlib
import re
import sys

import jax
import numpy as np
import optax

import orthax
from tests.helpers import condition_number, polar_reference, polar_tol

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
EXACT = {None, "svd", "eigh", "auto"}


def recording(factory, seen):
  """factory, whose transformations hand (method, gradients, updates) of every update to seen,
  under jit too (through a host callback)."""
  def build(*args, **kwargs):
    tx = factory(*args, **kwargs)
    method = kwargs.get("method", args[0] if args else None)

    def update(grads, state, params=None):
      updates, state = tx.update(grads, state, params)
      jax.debug.callback(lambda g, u: seen.append((method, g, u)), grads, updates)
      return updates, state
    return optax.GradientTransformation(tx.init, update)
  return build


def test_quick_start_runs(monkeypatch):
  """Whatever the quick start builds: every orthax orthogonalisation it runs (directly or inside
  an alias) returns numpy's polar factor of each kernel it changes (as a (fan-in, out) matrix) to
  float32's bound, or for an approximate method singular values in its band; biases pass
  through; and every `optax.apply_updates` moves the parameters."""
  seen, applied = [], []
  for name in ("orthogonalise", "orthogonalise_components"):
    original = getattr(orthax, name)
    for module in [m for n, m in sys.modules.items() if n.startswith("orthax")]:
      if getattr(module, name, None) is original:
        monkeypatch.setattr(module, name, recording(original, seen))
  apply = optax.apply_updates

  def recorded_apply(params, updates):
    new = apply(params, updates)
    applied.append((params, new))
    return new
  monkeypatch.setattr(optax, "apply_updates", recorded_apply)

  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert blocks, "README.md has no python block"
  namespace = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)
  jax.effects_barrier()

  assert seen, "the quick start runs no orthax orthogonalisation"
  for method, grads, updates in seen:
    for g, u in zip(jax.tree.leaves(grads), jax.tree.leaves(updates), strict=True):
      g, u = np.asarray(g, np.float64), np.asarray(u, np.float64)
      if g.ndim < 2:
        np.testing.assert_array_equal(u, g)  # A bias passes through.
        continue
      if np.array_equal(u, g):
        continue  # Masked out.
      g, u = g.reshape(-1, g.shape[-1]), u.reshape(-1, g.shape[-1])
      if method in EXACT:
        np.testing.assert_allclose(u, polar_reference(g),
                                   atol=polar_tol(condition_number(g), max(g.shape)))
      else:  # Newton-Schulz's documented band, which holds Polar Express's.
        s = np.linalg.svd(u, compute_uv=False)
        assert 0.4 <= s.min() and s.max() <= 1.25, (method, s.min(), s.max())
  assert applied, "the quick start applies no update"
  for before, after in applied:
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(after))
    assert any(not np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))
