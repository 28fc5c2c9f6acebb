"""Q4: compile time of the update: per method against the per-leaf SVD loop, and as a model deepens.

    python -m benchmarks.compile_time

Table `compile_methods`: the jitted update of the ResNet-50 and the 24-block width-256
transformer gradient trees, each orthax method against the authors' per-leaf `jnp.linalg.svd`
loop (compile time, then run time timed interleaved; ratios to the loop).

Table `compile_time`: a transformer of width 256 with L = 1..24 blocks (6 kernels each, 2
distinct shapes). orthax stacks same-shape leaves, so its update holds 2 decompositions at every
depth; the per-leaf form (orthax's own `polar.eigh` called on each leaf in a loop) holds 6 L.

Where the time goes (XLA CPU, jax 0.10): HLO passes take well under a second; nearly all of it is
LLVM compiling the elementwise kernels (fusions), one per distinct fusion (identical ones are
compiled once), so compile time follows the number of distinct kernels, not the matrix sizes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import orthax
from benchmarks import common, tree_update

METHODS = ["auto", "svd", "eigh", "newton_schulz", "polar_express"]
TREES = {"resnet50": common.resnet50_kernel_shapes,
         "transformer256x24": lambda: common.transformer_kernel_shapes(256, 24)}


def per_leaf(tree):
  return {k: orthax.polar.eigh(v) for k, v in tree.items()}


def compile_methods(trees: dict, repeats: int, out) -> str:
  """Compile and run time of each method's update and of the per-leaf SVD loop, per tree."""
  contenders = {m: tree_update.orthax_update(m) for m in METHODS}
  contenders["per-leaf svd loop"] = tree_update.per_leaf_svd
  rows = []
  for name, shapes in trees.items():
    tree = {k: jnp.asarray(v) for k, v in common.random_tree(shapes).items()}
    compiled, seconds = {}, {}
    for label, fn in contenders.items():
      jax.clear_caches()
      compiled[label], seconds[label] = common.compile_seconds(fn, tree)
      print(name, label, f"compile {seconds[label]:.1f} s", flush=True)
    times = common.time_interleaved(compiled, {k: (tree,) for k in compiled}, repeats)
    loop = "per-leaf svd loop"
    for label in contenders:
      rows.append({"tree": name, "contender": label, "compile s": seconds[label],
                   "compile vs loop": seconds[label] / seconds[loop],
                   "run ms": 1e3 * times[label], "run vs loop": times[label] / times[loop]})
  return common.write("compile_methods", rows, out)


def main(argv: list[str] | None = None) -> None:
  p = common.parser(__doc__)
  p.add_argument("--trees", default=",".join(TREES), help=f"comma-separated, from {list(TREES)}")
  p.add_argument("--depths", action="store_true", help="only the table over depths")
  p.add_argument("--methods-only", action="store_true", help="only the table over methods")
  args = p.parse_args(argv)
  repeats = 1 if args.smoke else args.repeats
  if not args.depths:
    trees = {name: TREES[name]() for name in args.trees.split(",")}
    if args.smoke:
      trees = {"resnet20[:4]": common.resnet20_kernel_shapes()[:4]}
    print(compile_methods(trees, repeats, args.out))
  if args.methods_only:
    return
  depths = [1] if args.smoke else [1, 2, 4, 8, 16, 24]  # smoke: one row runs every line
  grouped_tx = orthax.orthogonalise_components("eigh")
  rows = []
  for depth in depths:
    tree = {k: jnp.asarray(v) for k, v in
            common.random_tree(common.transformer_kernel_shapes(256, depth)).items()}
    grouped, grouped_s = common.compile_seconds(
        lambda t: grouped_tx.update(t, optax.EmptyState())[0], tree)
    looped, looped_s = common.compile_seconds(per_leaf, tree)
    times = common.time_interleaved({"grouped": grouped, "per-leaf": looped},
                                    {"grouped": (tree,), "per-leaf": (tree,)},
                                    repeats)
    rows.append({"blocks": depth, "leaves": len(tree), "grouped compile s": grouped_s,
                 "per-leaf compile s": looped_s, "grouped run ms": 1e3 * times["grouped"],
                 "per-leaf run ms": 1e3 * times["per-leaf"]})
    print(rows[-1], flush=True)
  print(common.write("compile_time", rows, args.out))


if __name__ == "__main__":
  main()
