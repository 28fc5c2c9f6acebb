"""`auto`, `svd` and `eigh` on a CIFAR-10 convnet's real gradients, on this backend.

    python -m benchmarks.cnn_gradients [--model basic_cnn] [--steps 40] [--data cifar10_jpeg.npz]

Trains the model (`examples.models.convnets`, batch 1024) with the paper's Orthogonal-SGDM
(lr 1e-2, momentum 0.9, weight decay 5e-4, exact `svd`) for `--steps` steps on CIFAR-10's
training images (normalised, no augmentation), then takes the gradient of the next batch. For
each kernel, as orthax views it (a (kh kw in) x out matrix, tall side first): its aspect, the
method `auto` picks on this backend, its condition number over the directions kept at the
default `rtol`, and whether `eigh`'s Gram route is accurate for it or `eigh` sends it to SVD
(condition number above `EIGH_MAX_CONDITION`). Then, side by side in one process (interleaved,
median): SGDM's training step, Orthogonal-SGDM's with `auto`, `svd` and `eigh`, and the update
alone (`orthogonalise_components`) on the gradient tree with each method; and each method's
distance (spectral norm, worst kernel) to the float64 polar factor with the same `rtol`.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import orthax
from benchmarks import common
from benchmarks.lm_gradients import reference
from benchmarks.train_step import make_step
from examples.lib import cifar10, data
from examples.lib import optimizers as optimizers_lib
from examples.models import convnets
from orthax import polar
from orthax._src import polar_conventions, polar_exact

BATCH = 1024
METHODS = ("auto", "svd", "eigh")


def kernels(tree) -> list[tuple[str, np.ndarray]]:
  """(name, tall matrix) per kernel, as orthax views it: (kh kw in) x out, transposed if wide."""
  out = []
  for path, g in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if g.ndim < 2:
      continue
    m = np.asarray(g).reshape(-1, g.shape[-1])
    out.append((jax.tree_util.keystr(path), m.T if m.shape[0] < m.shape[1] else m))
  return out


def picks(shape: tuple[int, int]) -> str:
  """The method `auto` picks for a P x N matrix on this backend."""
  rule = polar.AUTO_RULES.get(jax.default_backend())
  if rule is None:
    return "svd"
  return "eigh" if max(shape) / min(shape) >= rule.eigh_aspect else rule.method


def gram_accurate(m: np.ndarray) -> bool:
  """Whether `eigh`'s Gram route keeps this matrix (else `eigh` decomposes it by SVD)."""
  x = jnp.asarray(m)[None]
  rtol = polar.default_rtol(x.shape, jnp.float32)
  _, accurate = polar_exact._gram_polar(polar_conventions.scale_to_unit(x), rtol,
                                        jnp.ones((1,), bool))
  return bool(accurate[0])


def main(argv: list[str] | None = None) -> None:
  p = common.parser(__doc__)
  p.add_argument("--model", default="basic_cnn", choices=sorted(convnets.MODELS))
  p.add_argument("--steps", type=int, default=40, help="Orthogonal-SGDM steps before the gradient")
  p.add_argument("--data", default=None, help="cifar10_jpeg.npz (default: as the examples find "
                 "it)")
  args = p.parse_args(argv)
  polar.single_thread_cpu_lapack()
  batch, steps = (8, 0) if args.smoke else (BATCH, args.steps)
  if batch * (steps + 1) > cifar10.TRAIN_SPLIT:
    p.error(f"--steps {steps}: at most {cifar10.TRAIN_SPLIT // batch - 1} batches of {batch} "
            "fit the training split")
  dataset = cifar10.load(args.data, train_size=batch * (steps + 1), validation_size=0,
                         test_size=0, synthetic=args.smoke)
  images = data.normalise(jnp.asarray(dataset.train.images), dataset.mean, dataset.std)
  labels = jnp.asarray(dataset.train.labels)
  model = convnets.MODELS[args.model](num_classes=10)
  variables = model.init(jax.random.key(0), images[:2], train=False)

  def tx(name: str, method: str = "svd"):
    return optimizers_lib.make_optimizer(name, learning_rate=1e-2, momentum=0.9,
                                         weight_decay=5e-4, method=method)

  train_tx = tx("orthogonal-sgdm")
  step = jax.jit(make_step(model, train_tx))
  params, stats, opt_state = variables["params"], variables["batch_stats"], None
  opt_state = train_tx.init(params)
  for i in range(steps):
    params, stats, opt_state, _ = step(params, stats, opt_state,
                                       images[i * batch:(i + 1) * batch],
                                       labels[i * batch:(i + 1) * batch])
  x, y = images[steps * batch:(steps + 1) * batch], labels[steps * batch:(steps + 1) * batch]

  def loss_fn(params):
    logits = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                         mutable=["batch_stats"])[0]
    return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

  grads = jax.grad(loss_fn)(params)

  # Timing: whole steps and the update alone, every contender in one interleaved loop.
  fns, inputs = {}, {}
  for label, (name, method) in {"sgdm step": ("sgdm", "svd"),
                                **{f"orthogonal-sgdm step, {m}": ("orthogonal-sgdm", m)
                                   for m in (METHODS[:1] if args.smoke else METHODS)}}.items():
    t = tx(name, method)
    inputs[label] = (params, stats, t.init(params), x, y)
    fns[label], _ = common.compile_seconds(make_step(model, t), *inputs[label])
  for m in METHODS:
    update = orthax.orthogonalise_components(m)
    inputs[f"update alone, {m}"] = (grads,)
    fns[f"update alone, {m}"], _ = common.compile_seconds(
        lambda g, u=update: u.update(g, u.init(g))[0], grads)
  times = common.time_interleaved(fns, inputs, 1 if args.smoke else args.repeats)
  sgdm = times["sgdm step"]

  outputs = {m: kernels(fns[f"update alone, {m}"](grads)) for m in METHODS}
  rows = []
  for i, (name, g) in enumerate(kernels(grads)):
    rtol = polar.default_rtol(g.shape, jnp.float32)
    truth, s = reference(g, rtol)
    kept = int(np.sum(s > rtol * s[0]))
    row = {"kernel": name, "matrix": f"{g.shape[0]} x {g.shape[1]}",
           "aspect": g.shape[0] / g.shape[1], "auto picks": picks(g.shape),
           "kept rank": kept, "condition number (kept)": float(s[0] / s[kept - 1]),
           "eigh's Gram route": "accurate" if gram_accurate(g) else "sent to SVD"}
    for m in METHODS:
      o = np.asarray(outputs[m][i][1], np.float64)
      row[f"dist {m}"] = float(np.linalg.norm(o - truth, 2))
    rows.append(row)
  timing = [{"timed": label, "ms": 1e3 * t, "vs sgdm step": t / sgdm} for label, t in times.items()]
  command = "python -m benchmarks.cnn_gradients " + " ".join(argv if argv is not None else
                                                            sys.argv[1:])
  notes = (f"{args.model}, batch {batch}, gradient after {steps} Orthogonal-SGDM (svd) steps on "
           f"{dataset.source} training images; `auto` here: {jax.default_backend()}'s rule.")
  print(common.write(f"cnn_gradients_{args.model}", rows, args.out, notes, command))
  print(common.write(f"cnn_gradients_{args.model}_times", timing, args.out,
                     f"Interleaved, median of {1 if args.smoke else args.repeats}.", command))


if __name__ == "__main__":
  main()
