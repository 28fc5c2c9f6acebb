"""Where a component transformation's work runs on a device mesh, and what sharding it returns.

A decomposition needs whole matrices. Without a mesh, a sharded gradient is gathered to every
device before it is decomposed. These helpers make that explicit where JAX requires it (mesh axes
of `AxisType.Explicit`, where the sharding is part of the type and an ambiguous reshape is an
error) and give every update the sharding of its gradient. With a mesh (`distribute`), the
matrices are dealt out to the devices instead: each matrix travels whole to the one device that
decomposes it, and its result travels back, by reshardings of the stacked matrices that JAX
compiles to all-to-alls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from orthax._src.components import MatrixView

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
  gradient entry already makes its whole matrix NaN, so the tie changes no value. (Neither a
  tie to a sharded update nor `shard_alike` does this reliably: propagation then gives some
  updates the sharding of their shape group's stack instead.)
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


def _put(x: Array, mesh, spec: PartitionSpec) -> Array:
  """`x` with sharding `spec` on `mesh`: resharded under explicit axes, constrained under auto."""
  sharding = NamedSharding(mesh, spec)
  if mesh.explicit_axes:
    return jax.sharding.reshard(x, sharding)
  return jax.lax.with_sharding_constraint(x, sharding)


def _sharded_axis(shape: Sequence[int], view: MatrixView, dim: int) -> int | None:
  """The axis of a parameter that leads its view's dim 1 (P) or 2 (N): the one to shard so
  that the view is split along that dim in contiguous blocks. None for a dim of size 1."""
  if view.shape[dim] == 1:
    return None
  permuted = [shape[a] for a in view.permutation]
  before = view.shape[0] * (view.shape[1] if dim == 2 else 1)
  start, size = 0, 1
  while size < before:
    size *= permuted[start]
    start += 1
  while permuted[start] == 1:  # axes of size 1 split nothing
    start += 1
  return view.permutation[start]


def _leaf_spec(shape: Sequence[int], view: MatrixView, spec: PartitionSpec) -> PartitionSpec:
  """The sharding of a parameter whose view has the stack sharding `spec`."""
  entries: list = [None] * len(shape)
  for dim in (1, 2):
    if len(spec) > dim and spec[dim] is not None:
      axis = _sharded_axis(shape, view, dim)
      assert axis is not None
      entries[axis] = spec[dim]
  return PartitionSpec(*entries)


def stack_spec(members: Sequence[tuple[Array, MatrixView]], mesh) -> PartitionSpec | None:
  """How a shape group's (B, P, N) stack is sharded on its way to and from the devices that
  decompose it: P split over every device (as FSDP splits a kernel's first axis) where each
  member's parameter axis that leads P divides evenly, else N, else replicated. None without a
  mesh; replicated on a mesh of automatic axes or of one device. Under explicit axes, a group
  whose members all already have one of these shardings keeps it (a replicated group stays
  replicated: its results must reach every device anyway).
  """
  if mesh is None:
    return None
  if not mesh.explicit_axes or mesh.size == 1:
    # A constraint more sharded than a gradient computed in the same program propagates back
    # into that computation (and to the parameters'); only explicit axes keep it local.
    return PartitionSpec()
  axes = tuple(mesh.axis_names)
  options = []
  for dim in (1, 2):
    spec = PartitionSpec(*[axes if d == dim else None for d in range(3)])
    fits = True
    for x, view in members:
      axis = _sharded_axis(x.shape, view, dim)
      fits = fits and axis is not None and x.shape[axis] % mesh.size == 0
    if fits:
      options.append(spec)
  options.append(PartitionSpec())
  if mesh.explicit_axes:
    current = [jax.typeof(x).sharding.spec for x, _ in members]
    for spec in options:
      wanted = [_leaf_spec(x.shape, view, spec) for x, view in members]
      if all(_same_spec(c, w, x.ndim) for c, w, (x, _) in zip(current, wanted, members,
                                                               strict=True)):
        return spec
  return options[0]


def _same_spec(a: PartitionSpec, b: PartitionSpec, ndim: int) -> bool:
  def norm(spec):
    entries = list(spec) + [None] * (ndim - len(spec))
    return [tuple(e) if isinstance(e, tuple) else ((e,) if e else ()) for e in entries]
  return norm(a) == norm(b)


def matrices(x: Array, view: MatrixView, spec: PartitionSpec | None, mesh) -> Array:
  """The (B, P, N) matrices of parameter `x`, sharded as `spec` (whole on every device when
  `spec` is None or replicated)."""
  if spec is None or not any(spec):
    return view.matrices(gather(x))
  x = jnp.transpose(_put(x, mesh, _leaf_spec(x.shape, view, spec)), view.permutation)
  if mesh.explicit_axes:
    return jax.lax.reshape(x, view.shape, out_sharding=NamedSharding(mesh, spec))
  return _put(x.reshape(view.shape), mesh, spec)


def restore(m: Array, view: MatrixView, shape: Sequence[int], spec: PartitionSpec | None,
            mesh) -> Array:
  """The parameter-shaped array of `m` (the inverse of `matrices`), sharded as `matrices` took
  it (replicated when `spec` is None or replicated)."""
  if spec is None or not any(spec) or not mesh.explicit_axes:
    return view.restore(m)
  inverse = tuple(sorted(range(len(view.permutation)), key=view.permutation.__getitem__))
  permuted = PartitionSpec(*[_leaf_spec(shape, view, spec)[a] if a < len(shape) else None
                             for a in view.permutation])
  m = jax.lax.reshape(m, view.permuted_shape, out_sharding=NamedSharding(mesh, permuted))
  return jnp.transpose(m, inverse)


def _rows(x: Array, order: Sequence[int]) -> Array:
  """`x[order]` along axis 0 from static indices, zeros where an index is -1: slices of runs
  of consecutive indices, so that no gather crosses a sharded axis."""
  parts, start, run = [], None, 0
  zero = jnp.zeros_like(x[:1])
  for i in list(order) + [None]:
    if start is not None and i is not None and i >= 0 and i == start + run:
      run += 1
      continue
    if start is not None:
      parts.append(x[start:start + run])
    start, run = (i, 1) if i is not None and i >= 0 else (None, 0)
    if i is not None and i < 0:
      parts.append(zero)
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def distribute(
    matrix_fn: Callable[[Array], Array], mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh
) -> Callable[..., list[Array]]:
  """`matrix_fn` on every (B, P, N) stack of a list, its matrices dealt out to `mesh`'s devices.

  Each device decomposes only the matrices `assign` gives it. Per group, the stack is put in
  device order with empty slots zero (a local reordering: the matrix axis is not sharded) and
  resharded along its matrix axis, so that each matrix travels once, whole, to the one device
  that decomposes it; the results are resharded back to `specs` (one per stack; default
  replicated) and put back in order. From stacks sharded along P or N (see `stack_spec`), both
  reshardings are all-to-alls: each matrix's shards go to its device, and its result's shards
  come back. From a replicated stack, each device takes its matrices locally and the results
  are gathered to every device. Without this, every device decomposes every matrix.

  One program serves every device: it reads its slots' occupancy from a table by its device
  index, so the program does not grow with the mesh. Per group, the slots that every device
  fills are decomposed as one stack; the few that only some devices fill (at most one per device
  when the group's matrices are of one shape) each sit behind a `lax.cond` on whether this device
  has a matrix there, so no device decomposes padding.
  """
  axes = tuple(mesh.axis_names)
  devices = mesh.size
  shards = PartitionSpec(axes)

  def fn(stacks: list[Array], specs: Sequence[PartitionSpec | None] | None = None) -> list[Array]:
    if devices == 1:
      return [matrix_fn(x) for x in stacks]
    targets = [s or PartitionSpec() for s in (specs or [None] * len(stacks))]
    table = assign([x.shape for x in stacks], devices)
    slots = [max(len(row[g]) for row in table) for g in range(len(stacks))]
    full = [min(len(row[g]) for row in table) for g in range(len(stacks))]
    # indices[g][d, j]: the matrix in device d's slot j of group g; -1 where that slot is empty.
    indices = [np.array([row[g] + [-1] * (slots[g] - len(row[g])) for row in table], np.int32)
               for g in range(len(stacks))]
    # A replicated stack goes in whole (each device picks its slots by index, with no
    # transfer); any other, in device order and resharded along its matrix axis.
    whole = [not any(t) for t in targets]
    dealt = [x if w else _put(_rows(x, mine.reshape(-1).tolist()), mesh, shards)
             for x, mine, w in zip(stacks, indices, whole, strict=True)]

    def per_device(xs: list[Array]) -> list[Array]:
      device = jax.lax.axis_index(axes)
      out = []
      for x, mine, filled, w in zip(xs, indices, full, whole, strict=True):
        if w:
          x = x[jnp.maximum(jnp.asarray(mine)[device], 0)]
        parts = [matrix_fn(x[:filled])] if filled else []
        if x.shape[0] > filled:
          present = jnp.asarray(mine)[device, filled:] >= 0
          parts.append(jax.lax.map(
              lambda slot: _one_or_zeros(matrix_fn, slot[0], slot[1], axes),
              (x[filled:], present)))
        out.append(jnp.concatenate(parts) if len(parts) > 1 else parts[0])
      return out

    parts = jax.shard_map(per_device, mesh=mesh, out_specs=shards,
                          in_specs=([PartitionSpec() if w else shards for w in whole],))(dealt)
    results = []
    for g, part in enumerate(parts):
      where = np.empty(stacks[g].shape[0], np.int32)
      for d in range(devices):
        for slot, i in enumerate(table[d][g]):
          where[i] = d * slots[g] + slot
      results.append(_rows(_put(part, mesh, targets[g]), where.tolist()))
    return results

  return fn


def _one_or_zeros(
    matrix_fn: Callable[[Array], Array], x: Array, present: Array, axes: tuple[str, ...]
) -> Array:
  """`matrix_fn` of the matrix x, or zeros (and no work) where the slot is empty.

  Inside `shard_map` the result varies over the devices, so the zeros are marked so too.
  """
  def zeros():
    return jax.lax.pcast(jnp.zeros(x.shape, x.dtype), axes, to="varying")

  return jax.lax.cond(present, lambda: matrix_fn(x[None])[0], zeros)
