"""Where a component transformation's work runs on a device mesh, and what sharding it returns.

A decomposition needs whole matrices, so a sharded gradient is gathered before it is decomposed.
These helpers make that explicit where JAX requires it (mesh axes of `AxisType.Explicit`, where
the sharding is part of the type and an ambiguous reshape is an error), give every update the
sharding of its gradient, and optionally split a stack of matrices over the devices so that each
device decomposes only its share.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

Array = jax.Array


def explicit_sharding(x: Array) -> NamedSharding | None:
  """The sharding in `x`'s type when its mesh has explicit axes (sharding in types), else None."""
  sharding = jax.typeof(x).sharding
  if isinstance(sharding, NamedSharding) and sharding.mesh.explicit_axes:
    return sharding
  return None


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


def split_over_devices(
    matrix_fn: Callable[[Array], Array], mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh
) -> Callable[[Array], Array]:
  """`matrix_fn` on a (B, P, N) stack, with the B matrices split over all of `mesh`'s devices.

  The stack is padded with zero matrices (every orthax method maps zero to zero) to a multiple
  of the device count, each device applies `matrix_fn` to its B / D matrices, and the results
  are reassembled. Without this, every device decomposes every matrix.
  """
  axes = tuple(mesh.axis_names)
  devices = mesh.size
  spec = PartitionSpec(axes)
  split = jax.shard_map(matrix_fn, mesh=mesh, in_specs=spec, out_specs=spec)
  explicit = bool(mesh.explicit_axes)

  def fn(x: Array) -> Array:
    count = x.shape[0]
    padding = -count % devices
    if padding:
      x = jnp.concatenate([x, jnp.zeros((padding,) + x.shape[1:], x.dtype)])
    if explicit:
      x = jax.sharding.reshard(x, NamedSharding(mesh, spec))
    out = split(x)
    if explicit:
      out = jax.sharding.reshard(out, NamedSharding(mesh, PartitionSpec()))
    return out[:count]

  return fn
