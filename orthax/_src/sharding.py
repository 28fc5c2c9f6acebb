"""Where a component transformation's work runs on a device mesh, and what sharding it returns.

A decomposition needs whole matrices, so a sharded gradient is gathered before it is decomposed.
These helpers make that explicit where JAX requires it (mesh axes of `AxisType.Explicit`, where
the sharding is part of the type and an ambiguous reshape is an error), give every update the
sharding of its gradient, and optionally deal the matrices out to the devices so that each device
decomposes only its share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

Array = jax.Array


def gather(x: Array) -> Array:
  """`x` replicated over the mesh in its type (if any), for a decomposition of whole matrices.

  Explicit axes need it (a reshape of a sharded axis is a type error). Under automatic axes it
  keeps sharding propagation from carrying one leaf's sharding through the stack of its shape
  group to every other leaf of the group.
  """
  sharding = jax.typeof(x).sharding
  if not isinstance(sharding, NamedSharding) or not sharding.mesh.axis_names:
    return x
  replicated = NamedSharding(sharding.mesh, PartitionSpec())
  if sharding.mesh.explicit_axes:
    return jax.sharding.reshard(x, replicated) if any(sharding.spec) else x
  return jax.lax.with_sharding_constraint(x, replicated)


def like(update: Array, gradient: Array) -> Array:
  """`update` (computed from whole matrices) with `gradient`'s sharding.

  Explicit axes: the sharding is in the gradient's type; reshard to it. Automatic axes: a traced
  gradient's type names its mesh but not its sharding, so the update is pinned replicated and
  then tied to the gradient elementwise (`update + 0 * gradient`, which XLA does not fold away
  for floats); sharding propagation then gives the sum the gradient's sharding. A non-finite
  gradient entry already makes its whole matrix NaN, so the tie changes no value.
  """
  sharding = jax.typeof(gradient).sharding
  if not isinstance(sharding, NamedSharding) or not sharding.mesh.axis_names:
    return update
  if sharding.mesh.explicit_axes:
    return jax.sharding.reshard(update, sharding)
  update = jax.lax.with_sharding_constraint(update, NamedSharding(sharding.mesh, PartitionSpec()))
  return update + jnp.zeros((), update.dtype) * gradient


def cost(p: int, n: int) -> int:
  """Relative work of one P x N polar factor: min(P, N)^2 max(P, N), for every method."""
  return min(p, n) ** 2 * max(p, n)


def assign(counts: Sequence[Sequence[int]], devices: int) -> list[list[list[int]]]:
  """Deals whole matrices to devices so that each device's share of the work is about equal.

  Args:
    counts: per shape group, (number of matrices, P, N).
    devices: number of devices.

  Returns:
    `table[d][g]`: the indices of group g's matrices that device d decomposes. Largest first,
    each to the device with the least work so far (greedy longest-processing-time scheduling:
    within 4/3 of the best possible balance). No split of one matrix is possible, so the
    largest matrix bounds the gain.
  """
  table: list[list[list[int]]] = [[[] for _ in counts] for _ in range(devices)]
  load = [0] * devices
  order = sorted(((cost(p, n), g, i) for g, (b, p, n) in enumerate(counts) for i in range(b)),
                 key=lambda item: (-item[0], item[1], item[2]))
  for work, g, i in order:
    d = min(range(devices), key=lambda k: (load[k], k))
    table[d][g].append(i)
    load[d] += work
  return table


def distribute(
    matrix_fn: Callable[[Array], Array], mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh
) -> Callable[[list[Array]], list[Array]]:
  """`matrix_fn` on every (B, P, N) stack of a list, its matrices dealt out to `mesh`'s devices.

  Each device decomposes only the matrices `assign` gives it, writes them into per-group slots of
  equal size on every device, and the slots are gathered and put back in order. Without this,
  every device decomposes every matrix.

  One program serves every device: it reads its matrices' indices from a table by its device
  index, so the program does not grow with the mesh. Per group, the slots that every device
  fills are decomposed as one stack; the few that only some devices fill (at most one per device
  when the group's matrices are of one shape) each sit behind a `lax.cond` on whether this device
  has a matrix there, so no device decomposes padding.
  """
  axes = tuple(mesh.axis_names)
  devices = mesh.size
  shards = PartitionSpec(axes)
  explicit = bool(mesh.explicit_axes)

  def fn(stacks: list[Array]) -> list[Array]:
    if devices == 1:
      return [matrix_fn(x) for x in stacks]
    table = assign([x.shape for x in stacks], devices)
    slots = [max(len(row[g]) for row in table) for g in range(len(stacks))]
    full = [min(len(row[g]) for row in table) for g in range(len(stacks))]
    # indices[g][d, j]: the matrix in device d's slot j of group g; -1 where that slot is empty.
    indices = [np.array([row[g] + [-1] * (slots[g] - len(row[g])) for row in table], np.int32)
               for g in range(len(stacks))]

    def per_device(xs: list[Array]) -> list[Array]:
      device = jax.lax.axis_index(axes)
      out = []
      for x, mine, filled in zip(xs, indices, full, strict=True):
        slots_here = jnp.asarray(mine)[device]
        parts = [matrix_fn(x[slots_here[:filled]])] if filled else []
        if slots_here.shape[0] > filled:
          parts.append(jax.lax.map(lambda i, x=x: _one_or_zeros(matrix_fn, x, i, axes),
                                    slots_here[filled:]))
        out.append(jnp.concatenate(parts) if len(parts) > 1 else parts[0])
      return out

    parts = jax.shard_map(per_device, mesh=mesh, in_specs=PartitionSpec(),
                          out_specs=shards)(list(stacks))
    results = []
    for g, part in enumerate(parts):
      if explicit:
        part = jax.sharding.reshard(part, NamedSharding(mesh, PartitionSpec()))
      where = np.empty(stacks[g].shape[0], np.int32)
      for d in range(devices):
        for slot, i in enumerate(table[d][g]):
          where[i] = d * slots[g] + slot
      results.append(part[where])
    return results

  return fn


def _one_or_zeros(
    matrix_fn: Callable[[Array], Array], x: Array, i: Array, axes: tuple[str, ...]) -> Array:
  """`matrix_fn` of matrix i of the stack x, or zeros (and no work) where i is -1.

  Inside `shard_map` the result varies over the devices, so the zeros are marked so too.
  """
  def zeros():
    return jax.lax.pcast(jnp.zeros(x.shape[1:], x.dtype), axes, to="varying")

  return jax.lax.cond(i >= 0, lambda: matrix_fn(x[jnp.maximum(i, 0)][None])[0], zeros)
