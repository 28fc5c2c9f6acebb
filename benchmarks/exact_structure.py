"""The exact update's lowered structure for accelerators: solver calls and loops per shape group.

    python -m benchmarks.exact_structure [--smoke] [--out DIR]

No accelerator is needed: `jax.export` lowers for `cuda` and `tpu` on any machine. For ResNet-50's
kernels and a width-768 transformer block (the trees of `benchmarks.common`), the update of
`orthax.orthogonalise_components(method=...)` is lowered with `svd` (the exact default on GPU and
TPU before `qdwh`), `qdwh`, and `auto` (the default: `AUTO_RULES`' method for the platform), and the
StableHLO is searched for custom calls (by target) and `while` loops. Counts are of the program
text: a call inside a loop body is counted once. Which custom calls loop over the batch inside the
kernel is for the device's library to say; the table only shows which calls there are.
"""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp

import orthax
from benchmarks import common
from orthax import polar

TREES = {
    "resnet50": common.resnet50_kernel_shapes,
    "transformer768": lambda: common.transformer_kernel_shapes(768),
}
SMOKE_TREES = {"resnet20": common.resnet20_kernel_shapes}
METHODS = ("svd", "qdwh", "auto")
PLATFORMS = ("cuda", "tpu")
# Custom-call targets that are not solvers (sharding annotations and the like).
NOT_SOLVERS = ("Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape", "annotate")


def lowered_text(shapes, method: str, platform: str) -> tuple[str, int]:
  """The update's StableHLO for `platform`, and its number of shape groups (stack shapes the
  method is traced for; it may be traced more than once for each)."""
  groups = set()
  matrix_fn = getattr(polar, method)

  def recording(x, *, compute_dtype=jnp.float32):
    groups.add(x.shape)
    return matrix_fn(x, compute_dtype=compute_dtype)

  opt = orthax.orthogonalise_components(method=recording)
  tree = {f"{i:03d}": jax.ShapeDtypeStruct(s, jnp.float32) for i, s in enumerate(shapes)}
  state = opt.init(tree)
  exported = jax.export.export(jax.jit(lambda g: opt.update(g, state)[0]),
                               platforms=[platform])(tree)
  return exported.mlir_module(), len(groups)


def count(text: str) -> tuple[dict[str, int], int]:
  """Solver custom calls by target, and `while` loops, in a StableHLO text."""
  targets = re.findall(r"stablehlo\.custom_call @([A-Za-z0-9_.]+)", text)
  targets += re.findall(r'call_target_name = "([A-Za-z0-9_.]+)"', text)
  solvers = collections.Counter(t for t in targets if not t.startswith(NOT_SOLVERS))
  return dict(sorted(solvers.items())), len(re.findall(r"stablehlo\.while", text))


def main(argv: list[str] | None = None) -> None:
  p = common.parser(__doc__)
  args = p.parse_args(argv)
  trees = SMOKE_TREES if args.smoke else TREES
  rows = []
  for tree, shapes in trees.items():
    for platform in PLATFORMS:
      for method in METHODS:
        text, groups = lowered_text(shapes(), method, platform)
        solvers, loops = count(text)
        rows.append({"tree": tree, "platform": platform, "method": method,
                     "shape groups": groups, "solver calls": sum(solvers.values()),
                     "solver calls per group": round(sum(solvers.values()) / groups, 2),
                     "while loops": loops, "while loops per group": round(loops / groups, 2),
                     "targets": ", ".join(f"{t} x{n}" for t, n in solvers.items()) or "none"})
        print(rows[-1])
  print(common.write("exact_structure", rows, args.out,
                     notes="Counts are of the lowered program text (`jax.export`, no device)."))


if __name__ == "__main__":
  main()
