"""Q4: compile time of the update as a model deepens: grouped by shape vs one call per leaf.

    python -m benchmarks.compile_time

A transformer of width 256 with L = 1..24 blocks (6 kernels each, 2 distinct shapes). orthax
stacks same-shape leaves, so its update holds 2 decompositions at every depth; the per-leaf form
(orthax's own `polar.eigh` called on each leaf in a loop) holds 6 L.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

import orthax
from benchmarks import common


def per_leaf(tree):
  return {k: orthax.polar.eigh(v) for k, v in tree.items()}


def main(argv: list[str] | None = None) -> None:
  args = common.parser(__doc__).parse_args(argv)
  depths = [1, 2] if args.smoke else [1, 2, 4, 8, 16, 24]
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
                                    1 if args.smoke else args.repeats)
    rows.append({"blocks": depth, "leaves": len(tree), "grouped compile s": grouped_s,
                 "per-leaf compile s": looped_s, "grouped run ms": 1e3 * times["grouped"],
                 "per-leaf run ms": 1e3 * times["per-leaf"]})
    print(rows[-1], flush=True)
  print(common.write("compile_time", rows, args.out))


if __name__ == "__main__":
  main()
