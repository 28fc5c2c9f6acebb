"""Q5: orthogonalisation on a device mesh, every device decomposing everything vs `mesh=` splitting.

    python -m benchmarks.distributed            # 8 simulated CPU devices unless XLA_FLAGS says

The ResNet-50 gradient tree and a 24-block transformer's of width 256 (random gradients; the
transformer has 144 matrices of 2 shapes, ResNet-50 54 of 21), laid out on a mesh of all devices:
data parallel (every leaf replicated) and FSDP-style (every kernel sharded along its last axis).
Per method, the jitted update without a mesh (each device decomposes every matrix) and with
`mesh=` (whole matrices dealt out to the devices, balancing their work) are timed interleaved; the
results must agree. The per-device decomposition work is measured apart, on one device: every
matrix against the busiest device's share.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import orthax
from benchmarks import common
from orthax._src import components, sharding
from orthax.polar import single_thread_cpu_lapack

METHODS = ["eigh", "svd", "newton_schulz"]
TREES = {
    "resnet50": common.resnet50_kernel_shapes,
    "transformer256x24": lambda: common.transformer_kernel_shapes(256, 24),
}


def simulate_devices(count: int) -> None:
  """Asks XLA for `count` CPU devices, if jax has not started its backend yet."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def layouts(tree: dict, mesh) -> dict[str, dict]:
  axes = tuple(mesh.axis_names)

  def fsdp(x):
    fits = x.ndim > 1 and x.shape[-1] % mesh.size == 0
    return P(*([None] * (x.ndim - 1)), axes) if fits else P()

  return {
      "data parallel": jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P())), tree),
      "fsdp": jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, fsdp(x))), tree),
  }


def shape_groups(tree: dict) -> list[tuple[int, int, int]]:
  """(B, P, N) per shape group, as `orthogonalise_components` stacks them."""
  groups: dict[tuple[int, int], int] = {}
  for x in tree.values():
    b, p, n = components.matrix_view(x.shape, orthax.Layout()).shape
    groups[(p, n)] = groups.get((p, n), 0) + b
  return [(b, p, n) for (p, n), b in groups.items()]


def busiest_share(groups: list[tuple[int, int, int]], devices: int) -> list[tuple[int, int, int]]:
  """The (B, P, N) groups of the device that `mesh=` gives the most work."""
  table = sharding.assign(groups, devices)
  loads = [sum(len(row[g]) * sharding.cost(p, n) for g, (_, p, n) in enumerate(groups))
           for row in table]
  row = table[int(np.argmax(loads))]
  return [(len(row[g]), p, n) for g, (_, p, n) in enumerate(groups) if row[g]]


def per_device_work(method: str, groups: list, devices: int, repeats: int) -> dict[str, float]:
  """Seconds to decompose every matrix vs the busiest device's share, on one device."""
  rng = np.random.default_rng(1)
  fn = getattr(orthax.polar, method)
  stacks = {
      name: [jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in shapes]
      for name, shapes in [("all", groups), ("share", busiest_share(groups, devices))]}
  decompose = jax.jit(lambda xs: [fn(x) for x in xs])
  compiled = {name: decompose.lower(xs).compile() for name, xs in stacks.items()}
  return common.time_interleaved(compiled, {k: (v,) for k, v in stacks.items()}, repeats)


def compare(tree: dict, method: str, mesh, repeats: int) -> list[dict]:
  """One row per layout: the update with every device decomposing everything vs `mesh=`."""
  devices = mesh.size
  groups = shape_groups(tree)
  work = per_device_work(method, groups, devices, repeats)
  contenders = {"every device": orthax.orthogonalise_components(method),
                "mesh=": orthax.orthogonalise_components(method, mesh=mesh)}
  rows = []
  for layout, grads in layouts(tree, mesh).items():
    compiled, compile_s = {}, {}
    for label, tx in contenders.items():
      compiled[label], compile_s[label] = common.compile_seconds(
          lambda g, tx=tx: tx.update(g, optax.EmptyState())[0], grads)
    times = common.time_interleaved(compiled, {k: (grads,) for k in compiled}, repeats)
    outs = {label: fn(grads) for label, fn in compiled.items()}
    difference = max(float(jnp.max(jnp.abs(a - b)))
                     for a, b in zip(jax.tree.leaves(outs["mesh="]),
                                     jax.tree.leaves(outs["every device"]), strict=True))
    same_shardings = all(
        o.sharding.is_equivalent_to(g.sharding, g.ndim)
        for out in outs.values()
        for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads), strict=True))
    rows.append({
        "method": method, "layout": layout, "devices": devices,
        "matrices per device": f"{sum(b for b, _, _ in groups)} -> "
                               f"{sum(b for b, _, _ in busiest_share(groups, devices))}",
        "decomposition ms / device": f"{1e3 * work['all']:.3g} -> {1e3 * work['share']:.3g}",
        "work ratio": work["all"] / work["share"],
        "every device ms": 1e3 * times["every device"], "mesh= ms": 1e3 * times["mesh="],
        "speed-up": times["every device"] / times["mesh="],
        "compile s": f"{compile_s['every device']:.1f} / {compile_s['mesh=']:.1f}",
        "max abs diff": difference, "shardings kept": same_shardings})
  return rows


def main(argv: list[str] | None = None) -> None:
  p = common.parser(__doc__)
  p.add_argument("--devices", type=int, default=8, help="simulated CPU devices (default 8)")
  p.add_argument("--trees", default=",".join(TREES), help=f"comma-separated, from {list(TREES)}")
  p.add_argument("--methods", default=",".join(METHODS))
  args = p.parse_args(argv)
  simulate_devices(args.devices)
  single_thread_cpu_lapack()
  mesh = jax.make_mesh((jax.device_count(),), ("devices",))
  trees = {name: TREES[name]() for name in args.trees.split(",")}
  methods = args.methods.split(",")
  if args.smoke:
    trees, methods = {"resnet20[:4]": common.resnet20_kernel_shapes()[:4]}, ["svd"]
  rows = []
  for name, shapes in trees.items():
    tree = {k: jnp.asarray(v) for k, v in common.random_tree(shapes).items()}
    for method in methods:
      for row in compare(tree, method, mesh, 1 if args.smoke else args.repeats):
        rows.append({"tree": f"{name} ({len(shapes)} kernels)", **row})
        print(rows[-1], flush=True)
  notes = ("`work ratio`: the decomposition time of all matrices over that of the busiest "
           "device's share, both on one device.")
  print(common.write("distributed", rows, args.out, notes))


if __name__ == "__main__":
  sys.exit(main())
