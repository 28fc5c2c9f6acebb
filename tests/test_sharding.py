"""Orthogonalisation on device meshes: the 8-device checks, and what one process can check."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import orthax
from orthax._src import sharding as sharding_lib
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.multidevice
@pytest.mark.slow
def test_on_eight_simulated_devices():
  """Runs tests/sharded_checks.py with 8 simulated CPU devices (a fresh jax process)."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "tests/sharded_checks.py", "-q", "-p", "no:cacheprovider",
       "-o", "addopts=", "-rs"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
  assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def test_one_device_mesh_changes_nothing():
  mesh = jax.make_mesh((1,), ("data",))
  rng = np.random.default_rng(0)
  grads = {"w": jnp.asarray(helpers.random_matrix(rng, (3, 3, 4, 8))),
           "v": jnp.asarray(helpers.random_matrix(rng, (5, 7)))}
  plain = orthax.orthogonalise_components("svd")
  split = orthax.orthogonalise_components("svd", mesh=mesh)
  helpers.assert_trees_equal(jax.jit(split.update)(grads, optax.EmptyState())[0],
                             jax.jit(plain.update)(grads, optax.EmptyState())[0])


def test_unsharded_arrays_pass_through_the_sharding_helpers():
  x = jnp.ones((4, 3))
  assert sharding_lib.gather(x) is x
  assert sharding_lib.like(x, x) is x


def test_assign_deals_every_matrix_once_and_balances_the_work():
  rng = np.random.default_rng(0)
  counts = [(int(b), int(p), int(n)) for b, p, n in rng.integers(1, 40, size=(12, 3))]
  for devices in (1, 3, 8):
    table = sharding_lib.assign(counts, devices)
    for g, (b, _, _) in enumerate(counts):
      assert sorted(i for row in table for i in row[g]) == list(range(b))
    loads = [sum(len(row[g]) * sharding_lib.cost(p, n) for g, (_, p, n) in enumerate(counts))
             for row in table]
    largest = max(sharding_lib.cost(p, n) for _, p, n in counts)
    assert max(loads) <= sum(loads) / devices + largest  # greedy scheduling's bound


def test_assign_on_resnet50_kernels():
  """The largest kernel bounds the balance: 6.0x less work on the busiest of 8 devices."""
  from benchmarks import common
  counts = [(1, int(np.prod(s[:-1])), s[-1]) for s in common.resnet50_kernel_shapes()]
  table = sharding_lib.assign(counts, 8)
  loads = [sum(len(row[g]) * sharding_lib.cost(p, n) for g, (_, p, n) in enumerate(counts))
           for row in table]
  assert sum(loads) / max(loads) > 5.9


@pytest.mark.parametrize("mesh", ["data", 8, ("data",)])
def test_mesh_must_be_a_mesh(mesh):
  with pytest.raises(ValueError, match="mesh must be a jax.sharding.Mesh"):
    orthax.orthogonalise_components(mesh=mesh)
