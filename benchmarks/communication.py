"""What one orthogonalised update moves between devices: every collective of the compiled program.

    nice -n 10 python -m benchmarks.communication     # 8 simulated CPU devices

A 24-block, 768-wide transformer's kernels (q, k, v, out, and a 4x MLP: 144 matrices of 3 shapes,
170 M floats) are sharded FSDP-style along their first axis over all devices. For one update,
each contender is compiled for that sharding (nothing is run), and the compiled HLO is read:
every all-gather, all-reduce, reduce-scatter, all-to-all and collective-permute, counted as often
as it runs (a collective inside a loop counts once per iteration), with the bytes each device
receives by the usual algorithms for a group of g devices:

- all-gather: (g - 1) / g of its result; all-to-all: (g - 1) / g of its operands;
- reduce-scatter: (g - 1) times its result; all-reduce: 2 (g - 1) / g of its operand (a
  reduce-scatter, then an all-gather);
- collective-permute: its result, on the devices that receive one.

The contenders: orthax's default (every device decomposes every matrix) and `mesh=`, with the
SVD and with Newton-Schulz; `optax.contrib.muon`; and a reference of the stack-axis resharding
that MaxText's sharding-aware Muon does (same-shape leaves stacked, the stack resharded along its
matrix axis, Newton-Schulz on each device's matrices, the results resharded back). The lower
bound beside them: each matrix gathered once to the one device that decomposes it, and its
result sent back once: 2 (D - 1) / D of the tree over all D devices, 2 (D - 1) / D^2 of it per
device.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import orthax
from benchmarks import common
from benchmarks.distributed import simulate_devices

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2,
         "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1}
_SHAPE = re.compile(r"\b(" + "|".join(BYTES) + r")\[([\d,]*)\]")
_OP = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) (" + "|".join(COLLECTIVES)
                 + r")(?:-start)?\((.*)$")


def shape_bytes(text: str) -> int:
  """Bytes of every array shape in `text` (one shape, or a tuple of them)."""
  return sum(BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in _SHAPE.findall(text))


def group_size(attributes: str, devices: int) -> tuple[int, float]:
  """(devices per group, fraction of devices that receive) from an op's attributes."""
  pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", attributes)
  if pairs:
    return 2, len(re.findall(r"\{\d+,\d+", pairs.group(0))) / devices
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", attributes)
  if iota:
    return int(iota.group(2)), 1.0
  listed = re.search(r"replica_groups=\{\{([\d,]*)\}", attributes)
  if listed:
    return len(listed.group(1).split(",")), 1.0
  named = re.search(r"replica_groups=mesh\[(.*?)\] \{(.*?)\}", attributes)
  if named:
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", named.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", named.group(2))), 1.0
  return devices, 1.0  # no groups: every device


def received_bytes(kind: str, result: str, operands: str, attributes: str, devices: int) -> float:
  g, receiving = group_size(attributes, devices)
  out = shape_bytes(result)
  if kind == "all-gather":
    return out * (g - 1) / g
  if kind == "all-to-all":
    return out * (g - 1) / g
  if kind == "reduce-scatter":
    return out * (g - 1)
  if kind == "all-reduce":
    return 2 * out * (g - 1) / g
  return out * receiving  # collective-permute


def computations(hlo: str) -> tuple[dict[str, list[str]], str]:
  """The HLO module's computations by name, and the entry computation's name."""
  comps: dict[str, list[str]] = {}
  entry, name = "", None
  for line in hlo.splitlines():
    head = re.match(r"^(ENTRY )?%(\S+) .*\{\s*$", line)
    if head:
      name = head.group(2)
      comps[name] = []
      entry = name if head.group(1) else entry
    elif line.startswith("}"):
      name = None
    elif name is not None:
      comps[name].append(line)
  return comps, entry


def collectives(hlo: str, devices: int) -> dict[str, list[float]]:
  """Per kind of collective: the bytes each device receives, one entry per execution."""
  comps, entry = computations(hlo)

  def walk(name: str, repeat: int, found: dict[str, list[float]]) -> None:
    for line in comps.get(name, []):
      op = _OP.match(line)
      if op:
        result, kind, rest = op.groups()
        operands, _, attributes = rest.partition(")")
        found[kind] += [received_bytes(kind, result, operands, attributes, devices)] * repeat
        continue
      loop = re.search(r"\bwhile\(.*body=%([\w.\-]+)", line)
      if loop:
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        if not trips:
          raise ValueError(f"a loop of unknown trip count: {line[:200]}")
        walk(loop.group(1), repeat * int(trips.group(1)), found)
        continue
      branches = re.search(r"branch_computations=\{([^}]*)\}", line) or re.search(
          r"true_computation=%([\w.\-]+), false_computation=%([\w.\-]+)", line)
      if branches:  # the most that any branch moves
        names = re.findall(r"%?([\w.\-]+)", ",".join(branches.groups()))
        options = []
        for branch in names:
          options.append({k: [] for k in COLLECTIVES})
          walk(branch, repeat, options[-1])
        busiest = max(options, key=lambda o: sum(sum(v) for v in o.values()))
        for k in COLLECTIVES:
          found[k] += busiest[k]
        continue
      call = re.search(r"\bcall\(.*to_apply=%([\w.\-]+)", line)
      if call:
        walk(call.group(1), repeat, found)

  found: dict[str, list[float]] = {k: [] for k in COLLECTIVES}
  walk(entry, 1, found)
  return found


def stack_axis_resharding(mesh, specs: dict, steps: int = 5) -> Callable:
  """A reference of MaxText's sharding-aware Muon, orthogonalisation only: same-shape leaves
  stacked, the stack resharded along its matrix axis (padded to a multiple of the devices),
  Newton-Schulz on each device's matrices, each result resharded to its leaf's sharding
  (`specs`, per leaf)."""
  axes = tuple(mesh.axis_names)
  if mesh.explicit_axes:
    def to(x, spec):
      return jax.sharding.reshard(x, NamedSharding(mesh, spec))
  else:
    def to(x, spec):
      return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  def update(grads: dict) -> dict:
    groups: dict[tuple, list[str]] = {}
    for key, g in grads.items():
      groups.setdefault(g.shape, []).append(key)
    out = {}
    for shape, keys in groups.items():
      stack = jnp.stack([grads[k] for k in keys])
      pad = -len(keys) % mesh.size
      stack = jnp.pad(stack, [(0, pad)] + [(0, 0)] * len(shape)) if pad else stack
      result = orthax.polar.newton_schulz(to(stack, P(axes)), steps=steps)
      result = to(result, P(None, *specs[keys[0]]))
      for i, k in enumerate(keys):
        out[k] = to(result[i], specs[k])
    return out

  return update


def contenders(mesh, specs: dict, methods: tuple[str, ...] = ("svd", "newton_schulz")
               ) -> dict[str, Callable]:
  """name -> a function of the gradients giving one update."""
  def orthax_update(method, distributed):
    tx = orthax.orthogonalise_components(method, mesh=mesh if distributed else None)
    return lambda g: tx.update(g, optax.EmptyState())[0]

  def optax_muon(grads):
    tx = optax.contrib.muon(0.02)
    return tx.update(grads, tx.init(grads), grads)[0]

  updates = {}
  for method in methods:
    updates[f"orthax {method} (default)"] = orthax_update(method, False)
    updates[f"orthax {method}, mesh="] = orthax_update(method, True)
  return {
      **updates,
      "optax.contrib.muon": optax_muon,
      "stack-axis resharding (MaxText)": stack_axis_resharding(mesh, specs),
  }


def fsdp_tree(shapes, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract float32 kernels sharded along their first axis over every device."""
  spec = P(tuple(mesh.axis_names))
  return {f"{i:03d}": jax.ShapeDtypeStruct(s, jnp.float32, sharding=NamedSharding(mesh, spec))
          for i, s in enumerate(shapes)}


def count(fn: Callable, tree: dict, mesh) -> dict[str, float]:
  """Collectives and bytes of fn's compiled program for the abstract tree."""
  with jax.set_mesh(mesh):
    hlo = jax.jit(fn).lower(tree).compile().as_text()
  found = collectives(hlo, mesh.size)
  row: dict[str, float] = {"collectives": sum(len(v) for v in found.values())}
  for kind in COLLECTIVES:
    row[kind] = len(found[kind])
  row["MB / device"] = sum(sum(v) for v in found.values()) / 1e6
  return row


def main(argv: list[str] | None = None) -> None:
  p = common.parser(__doc__)
  p.add_argument("--devices", type=int, default=8, help="simulated CPU devices (default 8)")
  p.add_argument("--width", type=int, default=768)
  p.add_argument("--layers", type=int, default=24)
  p.add_argument("--axes", default="auto,explicit", help="mesh axis types: auto, explicit")
  args = p.parse_args(argv)
  methods = ("svd", "newton_schulz")
  if args.smoke:  # 48 kernels: every shape group still divides among 8 devices
    args.width, args.layers, methods = 16, 8, ("svd",)
  simulate_devices(args.devices)
  shapes = common.transformer_kernel_shapes(args.width, args.layers)
  devices = jax.device_count()
  tree_bytes = sum(4 * math.prod(s) for s in shapes)
  bound = 2 * (devices - 1) / devices**2 * tree_bytes / 1e6
  rows = []
  for axis_type in args.axes.split(","):
    kind = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}[axis_type]
    mesh = jax.make_mesh((devices,), ("fsdp",), axis_types=(kind,))
    tree = fsdp_tree(shapes, mesh)
    specs = {k: x.sharding.spec for k, x in tree.items()}
    for name, fn in contenders(mesh, specs, methods).items():
      try:
        row = count(fn, tree, mesh)
      except Exception as e:  # e.g. a program that this sharding makes illegal
        row = {"collectives": "fails: " + str(e).splitlines()[0][:80]}
      rows.append({"axes": axis_type, "update": name, **row})
      if isinstance(row.get("MB / device"), float):
        rows[-1]["x lower bound"] = row["MB / device"] / bound
      print(rows[-1], flush=True)
    rows.append({"axes": axis_type, "update": "lower bound (one owner per matrix)",
                 "collectives": "", "MB / device": bound, "x lower bound": 1.0})
  columns = ["axes", "update", "collectives", *COLLECTIVES, "MB / device", "x lower bound"]
  rows = [{c: row.get(c, "") for c in columns} for row in rows]
  command = " ".join(["nice -n 10 python -m benchmarks.communication",
                      *(sys.argv[1:] if argv is None else argv)])
  notes = (f"{len(shapes)} kernels of the {args.layers}-block, {args.width}-wide transformer "
           f"({tree_bytes / 1e6:.0f} MB float32), sharded along their first axis over "
           f"{devices} devices; one update, counted from the compiled HLO. `MB / device`: what "
           "each device receives (the per-collective rule is in the module's docstring); the "
           "lower bound: each matrix gathered once to one device and its result sent back.")
  print(common.write("communication", rows, args.out, notes, command=command))


if __name__ == "__main__":
  sys.exit(main())
