"""One of several jax processes on one host, as on a multi-host cluster; run by
tests/test_multiprocess.py (its name keeps pytest from collecting it).

    python -m tests.multiprocess_checks --process-id I --processes N --port P --workdir DIR

Each process has 2 CPU devices; one mesh spans every device of every process, and collectives
cross processes through gloo. Parameters and gradients are built from process-local data (FSDP
kernels sharded across the processes' devices, replicated kernels, a sharded bias). Three
optimisers run jitted steps with and without `mesh=`; every process checks the shards it can
address against a float64 numpy reference (numpy's SVD of the whole matrices), checks that
params, updates and optimiser state keep their shardings, and that an orbax checkpoint of the
optimiser state written by all processes restores bit for bit. Exits 0 when every check passes,
`SKIP` (77) when this jax has no CPU collectives to run them with.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import orthax

SKIP = 77
EPS = float(2.0**-23)  # float32's unit round-off (its machine epsilon is twice this)
MARGIN = 10.0  # stated margin over the first-order bounds below
STEPS = 3
LR, MOMENTUM, B1, B2, ADAM_EPS, WEIGHT_DECAY, BETA = 0.1, 0.9, 0.9, 0.99, 1e-8, 0.01, 0.95
DEVICES_PER_PROCESS = 2


def arguments(argv):
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--process-id", type=int, required=True)
  p.add_argument("--processes", type=int, required=True)
  p.add_argument("--port", type=int, required=True)
  p.add_argument("--workdir", type=pathlib.Path, required=True)
  return p.parse_args(argv)


def start(args):
  """jax.distributed with gloo CPU collectives, or exit SKIP saying why they are missing.

  (Options that shape the CPU backend must be set before its first use, as here.)"""
  jax.config.update("jax_num_cpu_devices", DEVICES_PER_PROCESS)
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except Exception as e:  # an old jax without the option, or without gloo
    print(f"SKIP: this jax cannot select gloo CPU collectives ({e})", flush=True)
    sys.exit(SKIP)
  jax.distributed.initialize(f"localhost:{args.port}", num_processes=args.processes,
                             process_id=args.process_id, initialization_timeout=60)
  try:
    multihost_utils.sync_global_devices("gloo works")
    total = jax.jit(lambda x: x.sum())(multihost_utils.host_local_array_to_global_array(
        np.ones(DEVICES_PER_PROCESS, np.float32), jax.make_mesh((jax.device_count(),), ("x",)),
        jax.sharding.PartitionSpec("x")))
    assert int(total) == jax.device_count()
  except Exception as e:
    if "gloo" in str(e).lower() or "collective" in str(e).lower():
      print(f"SKIP: CPU collectives across processes failed ({e})", flush=True)
      sys.exit(SKIP)
    raise


# Leaves and their FSDP-style shardings over the one mesh axis "fsdp" (4 devices in 2 processes).
SHAPES = {"a": (32, 16), "b": (32, 16), "wide": (24, 40), "conv": (3, 3, 4, 8), "bias": (16,)}
SPECS = {"a": ("fsdp", None), "b": (), "wide": (None, "fsdp"), "conv": (None, None, "fsdp", None),
         "bias": ("fsdp",)}


def matrices(x):
  """Orthax's default view of a kernel: every axis but the last holds a component's params."""
  return x.reshape(-1, x.shape[-1])


def numpy_tree(seed):
  rng = np.random.default_rng(seed)
  return {k: {"kernel" if len(s) > 1 else "bias": rng.standard_normal(s).astype("float32")}
          for k, s in SHAPES.items()}


# float64 references and first-order error bounds of the float32 computation, per entry.

def polar_and_bound(g):
  """U V^T of each kernel (numpy float64 SVD) and a bound on a float32 polar factor's error.

  A backward-stable decomposition in float32 is exact for G + E, |E| <= c max(P, N) eps |G|;
  the polar factor moves by at most 2 |E| / sigma_min (Li and Sun's bound for full rank), so by
  2 c max(P, N) eps kappa(G), c taken as 1 and the margin applied at the comparison.
  """
  m = matrices(np.asarray(g, np.float64))
  u, s, vt = np.linalg.svd(m, full_matrices=False)
  return (u @ vt).reshape(g.shape), 2 * max(m.shape) * EPS * s[0] / s[-1]


def reference(name, params, grads_per_step):
  """Per step, the float64 updates of the optimiser and a bound on each entry's float32 error."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  state = {k: {"m": np.zeros_like(v), "v": np.zeros_like(v), "err": 0.0} for k, v in p.items()}
  out = []
  for t, grads in enumerate(grads_per_step, start=1):
    updates, bounds = {}, {}
    for k, g in grads.items():
      g = np.asarray(g, np.float64)
      s = state[k]
      kernel = g.ndim > 1
      if name == "sgd":
        o, err = polar_and_bound(g) if kernel else (g, EPS * np.abs(g).max())
        s["m"] = o + MOMENTUM * s["m"]
        s["err"] = err + MOMENTUM * s["err"]
        updates[k], bounds[k] = -LR * s["m"], LR * s["err"] + 0 * g
      elif name == "adamw" or (name == "muon" and not kernel):
        o, err = polar_and_bound(g) if kernel and name == "adamw" else (g, EPS * np.abs(g).max())
        s["m"] = B1 * s["m"] + (1 - B1) * o
        s["v"] = B2 * s["v"] + (1 - B2) * o * o
        s["err"] = max(s["err"], err)  # bias-corrected moments are weighted means of the o's
        if name == "muon":  # optax.adamw(nesterov=True)
          m_hat = B1 * s["m"] / (1 - B1 ** (t + 1)) + (1 - B1) * o / (1 - B1**t)
        else:
          m_hat = s["m"] / (1 - B1**t)
        root = np.sqrt(s["v"] / (1 - B2**t)) + ADAM_EPS
        decay = WEIGHT_DECAY if name == "adamw" else 0.0
        updates[k] = -LR * (m_hat / root + decay * p[k])
        # |d m_hat| <= err (up to Nesterov's weights, summing to < 2); |d sqrt(v_hat)| <= err.
        bounds[k] = LR * (2 * s["err"] / root + 2 * np.abs(m_hat) * s["err"] / root**2)
      else:  # muon's kernels: momentum, then the polar factor, Muon's scale, decoupled decay
        s["m"] = BETA * s["m"] + (1 - BETA) * g
        mu_hat = BETA * s["m"] / (1 - BETA ** (t + 1)) + (1 - BETA) * g / (1 - BETA**t)
        o, err = polar_and_bound(mu_hat)
        scale = np.sqrt(max(1.0, matrices(g).shape[1] / matrices(g).shape[0]))
        updates[k] = -LR * (scale * o + WEIGHT_DECAY * p[k])
        bounds[k] = LR * scale * err + 0 * g
      p[k] = p[k] + updates[k]
    out.append((updates, bounds, dict(p)))
  return out


def optimiser(name, mesh):
  orthogonaliser = orthax.orthogonalise_components("svd", mesh=mesh)
  if name == "sgd":
    return orthax.orthogonal_sgd(LR, MOMENTUM, orthogonaliser=orthogonaliser)
  if name == "adamw":
    return orthax.orthogonal_adamw(LR, B1, B2, ADAM_EPS, weight_decay=WEIGHT_DECAY,
                                   orthogonaliser=orthogonaliser)
  return orthax.muon(LR, beta=BETA, method="svd", weight_decay=WEIGHT_DECAY, adam_b1=B1,
                     adam_b2=B2, eps=ADAM_EPS,
                     mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p), mesh=mesh)


def global_array(x, sharding):
  """A global array from this process's data only: sharded leaves from the rows (or columns)
  that its devices hold, replicated leaves from a callback that reads the whole array."""
  if not any(sharding.spec):
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  local = sharding.addressable_devices_indices_map(x.shape).values()
  axis = next(i for i, s in enumerate(sharding.spec) if s is not None)
  lo, hi = min(i[axis].start for i in local), max(i[axis].stop for i in local)
  part = x[tuple(slice(lo, hi) if a == axis else slice(None) for a in range(x.ndim))]
  return jax.make_array_from_process_local_data(sharding, part, x.shape)


def flat(tree):
  """{"a": {"kernel": x}} -> {"a": x}."""
  return {k: next(iter(v.values())) for k, v in tree.items()}


def check(actual, expected, bound, what):
  """Every addressable shard within MARGIN times its bound (plus round-off of the value)."""
  for key, a in flat(actual).items():
    e, b = np.asarray(expected[key]), np.broadcast_to(np.asarray(bound[key]), a.shape)
    for shard in a.addressable_shards:
      got = np.asarray(shard.data, np.float64)
      tol = MARGIN * (b[shard.index] + 4 * EPS * np.abs(e[shard.index]))
      excess = np.abs(got - e[shard.index]) - tol
      assert excess.max() <= 0, (what, key, float(excess.max()), float(tol.max()))


def same_shardings(tree, shardings, what):
  for key, x in flat(tree).items():
    want = flat(shardings)[key]
    assert x.sharding.is_equivalent_to(want, x.ndim), (what, key, x.sharding, want)


def main(argv=None) -> int:
  args = arguments(argv)
  start(args)
  assert jax.process_count() == args.processes and len(jax.local_devices()) == DEVICES_PER_PROCESS
  mesh = jax.make_mesh((jax.device_count(),), ("fsdp",))  # every device of every process
  with jax.set_mesh(mesh):
    steps_run = run_all(args, mesh)
  print(f"process {jax.process_index()}: {steps_run} steps checked", flush=True)
  jax.distributed.shutdown()
  return 0


def run_all(args, mesh) -> int:
  """Every optimiser, with and without `mesh=`, for STEPS jitted steps; returns steps checked."""
  params_np = numpy_tree(0)
  shardings = {k: {leaf: NamedSharding(mesh, P(*SPECS[k]))} for k, v in params_np.items()
               for leaf in v}

  def to_global(tree):
    return jax.tree.map(global_array, tree, shardings)

  grads_np = [numpy_tree(1 + t) for t in range(STEPS)]
  steps_run = 0
  for name in ("sgd", "adamw", "muon"):
    expected = reference(name, flat(params_np), [flat(g) for g in grads_np])
    for distributed in (None, mesh):
      tx = optimiser(name, distributed)
      what = f"{name}, mesh={'yes' if distributed else 'no'}"
      params = to_global(params_np)
      state = jax.jit(tx.init)(params)

      @jax.jit
      def step(params, state, grads, tx=tx):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

      for t, (updates_ref, bound, _) in enumerate(expected):
        params, state, updates = step(params, state, to_global(grads_np[t]))
        check(updates, updates_ref, bound, f"{what}, step {t + 1} update")
        for tree, label in [(params, "params"), (updates, "updates")]:
          same_shardings(tree, shardings, f"{what}, step {t + 1} {label}")
        steps_run += 1
      cumulative = {k: sum(b[k] for _, b, _ in expected) for k in expected[0][1]}
      check(params, expected[-1][2], cumulative, f"{what}, params after {STEPS} steps")
      for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        if leaf.ndim:  # a moment of a parameter: that parameter's sharding
          want = flat(shardings)[next(k for k in keys if k in SHAPES)]
          assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (what, path, leaf.sharding)
      if distributed is not None:
        checkpoint_round_trip(state, args.workdir / f"{name}", what)
  return steps_run


def checkpoint_round_trip(state, directory, what):
  """The optimiser state, saved by every process to one orbax checkpoint, restores bit for bit
  with the same shardings."""
  import orbax.checkpoint as ocp
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory, state)
  checkpointer.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = checkpointer.restore(directory, abstract)
  checkpointer.close()
  assert jax.tree.structure(restored) == jax.tree.structure(state), what
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    assert a.dtype == b.dtype and a.sharding.is_equivalent_to(b.sharding, b.ndim), what
    for sa, sb in zip(a.addressable_shards, b.addressable_shards, strict=True):
      assert sa.index == sb.index, what
      np.testing.assert_array_equal(np.asarray(sa.data), np.asarray(sb.data), err_msg=what)


if __name__ == "__main__":
  sys.exit(main())
