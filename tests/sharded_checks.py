"""Sharded and distributed orthogonalisation on 8 simulated CPU devices.

Run by tests/test_sharding.py in a subprocess started with
`XLA_FLAGS=--xla_force_host_platform_device_count=8` (the device count is fixed when jax first
starts, so these cannot run in the main test process); its name keeps the main run from
collecting it.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import orthax
from orthax._src import sharding as sharding_lib
from tests import helpers

METHODS = ["auto", "svd", "eigh", "newton_schulz", "polar_express"]
AXIS_TYPES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
  if jax.device_count() != 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


def gradients() -> dict[str, np.ndarray]:
  """Leaves of several shape groups: two dense kernels of one shape (one FSDP-sharded, one
  replicated), a conv kernel sharded on two axes, a stack of 11 matrices (not divisible by 8),
  a lone matrix, a bias."""
  rng = np.random.default_rng(0)
  shapes = {"conv": (3, 3, 8, 16), "dense": (64, 32), "dense2": (64, 32), "stack": (11, 24, 16),
            "lone": (5, 7, 3), "bias": (32,)}
  return {k: helpers.random_matrix(rng, s) for k, s in shapes.items()}


SPECS = {  # FSDP-style: kernels sharded along one axis (or two); the rest replicated.
    "conv": P(None, None, "data", "model"), "dense": P("data", None), "dense2": P(),
    "stack": P(None, "model", None), "lone": P(), "bias": P("data"),
}
LAYOUT = {"conv": None, "dense": None, "dense2": None, "stack": orthax.Layout(batch=0),
          "lone": None, "bias": None}


def make_mesh(axis_type: str) -> jax.sharding.Mesh:
  kind = AXIS_TYPES[axis_type]
  return jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))


def place(tree, mesh, specs=SPECS):
  return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)


@functools.cache
def single_device(method: str):
  tx = orthax.orthogonalise_components(method, layout=LAYOUT)
  with jax.default_device(jax.devices()[0]):
    return tx.update(jax.tree.map(jnp.asarray, gradients()), optax.EmptyState())[0]


@functools.cache
def tolerance(method: str) -> float:
  """Two float32 updates of gradients() by one method (sharded, and on one device): each within
  the method's bound of exact arithmetic, so within twice it of each other. The bound, at the
  largest condition number and longest side of the matrices (each 3-D leaf read both ways):
  polar_tol for the exact methods, iteration_tol of 5 steps for the iterations."""
  g = {k: np.asarray(v, np.float64) for k, v in gradients().items()}
  matrices = [g["conv"].reshape(72, 16), g["dense"], g["dense2"], *g["stack"],
              g["lone"].reshape(35, 3), g["lone"].reshape(5, 21)]
  kappa = max(helpers.condition_number(m) for m in matrices)
  s_min = min(float(np.linalg.svd(m, compute_uv=False)[-1] / np.linalg.norm(m)) for m in matrices)
  coefficients = {"newton_schulz": helpers.NEWTON_SCHULZ_5,
                  "polar_express": np.asarray(orthax.polar.polar_express_coefficients(5))}
  if method in coefficients:
    return 2 * helpers.iteration_tol(coefficients[method], 72, s_min)
  return 2 * helpers.polar_tol(kappa, 72)


def assert_same_shardings(actual, expected):
  for key in expected:
    a, e = actual[key].sharding, expected[key].sharding
    assert a.is_equivalent_to(e, expected[key].ndim), (key, a, e)


# A covering design, not the full product (each combination compiles for 8 devices): every
# method on both axis types and both routes, and all four (axis type, route) pairs, in 10 runs
# instead of 20. The method only chooses the matrix function that each route applies to whole
# stacks; the axis type and the route decide where the stacks are gathered and sent.
COMBINATIONS = [(method, axis_type, distributed)
                for i, method in enumerate(METHODS)
                for axis_type, distributed in (("auto", i % 2 == 1), ("explicit", i % 2 == 0))]


@pytest.mark.parametrize("method, axis_type, distributed", COMBINATIONS,
                         ids=[f"{m}-{a}-{'distributed' if d else 'plain'}"
                              for m, a, d in COMBINATIONS])
def test_jit_keeps_shardings_and_values(method, axis_type, distributed):
  mesh = make_mesh(axis_type)
  grads = place(gradients(), mesh)
  tx = orthax.orthogonalise_components(
      method, layout=LAYOUT, mesh=mesh if distributed else None)
  updates, _ = jax.jit(tx.update)(grads, tx.init(grads))
  assert_same_shardings(updates, grads)
  helpers.assert_trees_allclose(updates, single_device(method), rtol=0, atol=tolerance(method))


# Outside jit (op by op on 8 devices, the slow part) or jitted under jax.set_mesh: a covering
# design of (axis type, route, call) in 4 runs instead of 8, in which every pair of two of them
# occurs.
CALLS = [("auto", False, "eager"), ("auto", True, "set_mesh"), ("explicit", False, "set_mesh"),
         ("explicit", True, "eager")]


@pytest.mark.parametrize("axis_type, distributed, call", CALLS,
                         ids=[f"{a}-{'distributed' if d else 'plain'}-{c}" for a, d, c in CALLS])
def test_outside_jit_and_under_set_mesh(axis_type, distributed, call):
  mesh = make_mesh(axis_type)
  grads = place(gradients(), mesh)
  tx = orthax.orthogonalise_components("svd", layout=LAYOUT, mesh=mesh if distributed else None)
  context, fn = ((contextlib.nullcontext(), tx.update) if call == "eager"
                 else (jax.set_mesh(mesh), jax.jit(tx.update)))
  with context:
    updates, _ = fn(grads, optax.EmptyState())
  assert_same_shardings(updates, grads)
  helpers.assert_trees_allclose(updates, single_device("svd"), rtol=0, atol=tolerance("svd"))


def test_distributed_svd_equals_plain_bit_for_bit_on_cpu():
  # The same LAPACK call decomposes each matrix, only on another device. (Matrix-product methods
  # agree to round-off: XLA may partition their products differently.)
  mesh = make_mesh("auto")
  grads = place(gradients(), mesh)
  plain = orthax.orthogonalise_components("svd", layout=LAYOUT)
  split = orthax.orthogonalise_components("svd", layout=LAYOUT, mesh=mesh)
  helpers.assert_trees_equal(jax.jit(split.update)(grads, optax.EmptyState())[0],
                             jax.jit(plain.update)(grads, optax.EmptyState())[0])


@pytest.mark.parametrize("counts", [[1], [7], [9], [17], [3, 1, 2], [1] * 11])
def test_each_device_decomposes_only_its_share(counts):
  mesh = make_mesh("auto")
  done = []

  def matrix_fn(x):
    # Runs where a device decomposes x: records how many matrices, once per execution.
    jax.debug.callback(lambda: done.append(x.shape[0]))
    return orthax.polar.svd(x)

  rng = np.random.default_rng(len(counts))
  stacks = [jnp.asarray(helpers.random_matrix(rng, (b, 12 + g, 5))) for g, b in enumerate(counts)]
  out = jax.block_until_ready(jax.jit(sharding_lib.distribute(matrix_fn, mesh))(stacks))
  jax.effects_barrier()
  assert sum(done) == sum(counts)  # every matrix decomposed once, on one device; no padding
  per_device = [sum(len(i) for i in row) for row in sharding_lib.assign(
      [x.shape for x in stacks], 8)]
  assert max(per_device) == -(-sum(counts) // 8)  # similar shapes: dealt out evenly
  for o, x in zip(out, stacks, strict=True):
    np.testing.assert_array_equal(np.asarray(o), np.asarray(orthax.polar.svd(x)))


@pytest.mark.parametrize("method", ["svd", "eigh", "newton_schulz"])
def test_one_program_for_every_device_count(method):
  """The distributed update lowers to one program that reads each device's matrices from a
  table: its conditionals, decompositions and products do not grow with the mesh. (Per group
  it holds at most two calls of the matrix function: the slots every device fills, as one
  stack, and one slot that only some fill, behind a `lax.cond`.)"""
  rng = np.random.default_rng(11)
  stacks = [jnp.asarray(helpers.random_matrix(rng, s)) for s in
            [(11, 24, 16), (3, 40, 8), (1, 64, 32), (17, 12, 12)]]
  sizes = {}
  for devices in (2, 4, 8):
    mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices])
    fn = sharding_lib.distribute(getattr(orthax.polar, method), mesh)
    text = jax.jit(fn).lower(stacks).as_text()
    sizes[devices] = (text.count("stablehlo.case"), text.count("stablehlo.custom_call"),
                      text.count("stablehlo.dot_general"))
  plain = jax.jit(lambda xs: [getattr(orthax.polar, method)(x) for x in xs]).lower(stacks)
  plain = plain.as_text()
  bound = tuple(2 * plain.count(op) + len(stacks) * (op == "stablehlo.case")
                for op in ("stablehlo.case", "stablehlo.custom_call", "stablehlo.dot_general"))
  for devices in (4, 8):
    assert all(a <= b for a, b in zip(sizes[devices], sizes[2], strict=True)), sizes
  assert all(a <= b for a, b in zip(sizes[2], bound, strict=True)), (sizes, bound)


@pytest.mark.parametrize("axis_type", list(AXIS_TYPES))
def test_training_keeps_parameter_and_state_shardings(axis_type):
  """A jitted SGDM step after the orthogonalisation, as in an FSDP training loop."""
  mesh = make_mesh(axis_type)
  params = place(gradients(), mesh)
  tx = optax.chain(orthax.orthogonalise_components(layout=LAYOUT, mesh=mesh),
                   optax.sgd(1e-2, momentum=0.9))

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(p)))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state)
  assert_same_shardings(params, place(gradients(), mesh))
  assert_same_shardings(state[1][0].trace, params)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_a_naive_batched_matmul_is_rejected_under_explicit_axes():
  """Why orthax gathers first: a reshape of a sharded axis has no defined sharding."""
  mesh = make_mesh("explicit")
  conv = place({"conv": gradients()["conv"]}, mesh, {"conv": SPECS["conv"]})["conv"]
  with pytest.raises(Exception, match="reshape"):
    jax.jit(lambda g: g.reshape(-1, g.shape[-1]))(conv)
  tx = orthax.orthogonalise_components()
  update = jax.jit(tx.update)({"conv": conv}, optax.EmptyState())[0]["conv"]
  assert update.sharding.is_equivalent_to(conv.sharding, conv.ndim)
