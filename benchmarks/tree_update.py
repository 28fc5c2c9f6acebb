"""Q2: orthogonalising a whole model's gradient tree: orthax vs the authors' loop vs optax's Muon.

    python -m benchmarks.tree_update

Per tree (ResNet-20, ResNet-50 and a 4-block transformer of width 768, random gradients):
- orthax, each method: `orthogonalise_components(method)`, same-shape leaves in one batched call;
- per-leaf SVD loop: the authors' PyTorch approach, one `jnp.linalg.svd` per leaf in a Python loop;
- optax Muon NS: `optax.contrib`'s Newton-Schulz orthogonalisation (the function `scale_by_muon`
  applies), leaf by leaf, with conv kernels viewed as (kh*kw*in, out) like orthax's.
All in one jitted function each. Errors are the worst leaf's ||O^T O - I||_F / sqrt(N) and
||O - U V^T||_F / sqrt(N).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import _muon

import orthax
from benchmarks import common
from benchmarks.matrix_methods import errors, reference
from orthax.polar import single_thread_cpu_lapack

ORTHAX_METHODS = ["auto", "svd", "eigh", "newton_schulz", "polar_express"]


def orthax_update(method):
  tx = orthax.orthogonalise_components(method)
  return lambda tree: tx.update(tree, optax.EmptyState())[0]


def per_leaf_svd(tree):
  def polar(g):
    m = g.reshape(-1, g.shape[-1])
    u, _, vt = jnp.linalg.svd(m, full_matrices=False)
    return (u @ vt).reshape(g.shape)
  return {k: polar(v) for k, v in tree.items()}


def optax_muon_ns(tree):
  coefficients = jnp.asarray(_muon._DEFAULT_NS_COEFFS)

  def leaf(g):
    numbers = _muon.MuonDimensionNumbers(reduction_axis=tuple(range(g.ndim - 1)),
                                         output_axis=g.ndim - 1)
    return _muon.orthogonalize_via_newton_schulz(g, coefficients, 5,
                                                 dimension_numbers=numbers)
  return {k: leaf(v) for k, v in tree.items()}


TREES = {
    "resnet20": common.resnet20_kernel_shapes,
    "resnet50": common.resnet50_kernel_shapes,
    "transformer768x4": lambda: common.transformer_kernel_shapes(768, 4),
}


def main(argv: list[str] | None = None) -> None:
  p = common.parser(__doc__)
  p.add_argument("--trees", default=",".join(TREES), help=f"comma-separated, from {list(TREES)}")
  args = p.parse_args(argv)
  single_thread_cpu_lapack()  # The same LAPACK threading for every contender.
  trees = {name: TREES[name]() for name in args.trees.split(",")}
  if args.smoke:
    trees = {"resnet20": common.resnet20_kernel_shapes()[:4]}
  contenders = {f"orthax {m}": orthax_update(m) for m in ORTHAX_METHODS}
  contenders["per-leaf svd loop"] = per_leaf_svd
  contenders["optax muon ns"] = optax_muon_ns
  rows = []
  for name, shapes in trees.items():
    tree = {k: jnp.asarray(v) for k, v in common.random_tree(shapes).items()}
    compiled, compile_s = {}, {}
    for label, fn in contenders.items():
      compiled[label], compile_s[label] = common.compile_seconds(fn, tree)
    times = common.time_interleaved(compiled, {k: (tree,) for k in compiled},
                                    1 if args.smoke else args.repeats)
    exact = {k: reference(np.asarray(v).reshape(-1, v.shape[-1])) for k, v in tree.items()}
    for label in contenders:
      out = compiled[label](tree)
      errs = [errors(np.asarray(out[k]).reshape(-1, v.shape[-1]), exact[k])
              for k, v in tree.items()]
      rows.append({"tree": name, "leaves": len(shapes), "contender": label,
                   "ms": 1e3 * times[label],
                   "vs per-leaf svd": times[label] / times["per-leaf svd loop"],
                   "vs optax muon": times[label] / times["optax muon ns"],
                   "compile s": compile_s[label], "orth err": max(e[0] for e in errs),
                   "dist to UV^T": max(e[1] for e in errs)})
    print(name, {k: f"{1e3 * v:.0f}ms" for k, v in times.items()}, flush=True)
  print(common.write("tree_update", rows, args.out))


if __name__ == "__main__":
  main()
