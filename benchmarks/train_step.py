"""Q3: a full training step (forward, backward, update): SGDM vs Orthogonal-SGDM vs Muon.

    python -m benchmarks.train_step                        # BasicCNN, ResNet-20 at batch 1024
    python -m benchmarks.train_step --models resnet50      # ResNet-50 at batch 256 (slow on CPU)
    python -m benchmarks.train_step --contenders "sgdm,orthogonal-sgdm auto,muon"

The paper's hyper-parameters (lr 1e-2, momentum 0.9, weight decay 5e-4) on random 32x32 inputs;
every contender runs the same jitted step but for its optimiser, timed interleaved. "vs sgdm" is
the step-time ratio to SGDM measured in the same run. Memory is XLA's buffer plan for the compiled
step (arguments + outputs + temporaries - aliased), per contender, on every backend; "temp MiB" is
the temporaries alone, where the orthogonalisation's working memory shows.
"""

from __future__ import annotations

import jax
import optax

from benchmarks import common
from examples.lib import optimizers
from examples.models import convnets
from orthax.polar import single_thread_cpu_lapack

CONTENDERS = {
    "sgdm": ("sgdm", "auto"),
    "orthogonal-sgdm auto": ("orthogonal-sgdm", "auto"),
    "orthogonal-sgdm svd": ("orthogonal-sgdm", "svd"),
    "orthogonal-sgdm eigh": ("orthogonal-sgdm", "eigh"),
    "orthogonal-sgdm newton_schulz": ("orthogonal-sgdm", "newton_schulz"),
    "orthogonal-sgdm qdwh": ("orthogonal-sgdm", "qdwh"),
    "orthogonal-sgdm polar_express": ("orthogonal-sgdm", "polar_express"),
    "orthogonal-sgdm polar_express7": ("orthogonal-sgdm", "polar_express", 7),
    "muon": ("muon", "auto"),
}  # label: (optimiser, method[, steps of the approximate method])
# The smoke run: the baseline every row is divided by and one orthax contender (each compiles a
# training step; the contenders differ only in the optimiser they build).
SMOKE = ("sgdm", "orthogonal-sgdm auto")
BATCH = {"basic_cnn": 1024, "resnet20": 1024, "resnet50": 256}  # the batch sizes


def make_step(model, tx):
  def loss_fn(params, batch_stats, images, labels):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                  train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates["batch_stats"]

  def step(params, batch_stats, opt_state, images, labels):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  return step


def planned_memory_mib(compiled) -> tuple[float, float]:
  """(total, temporaries) of XLA's buffer plan for a compiled function, in MiB."""
  m = compiled.memory_analysis()
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return (total - m.alias_size_in_bytes) / 2**20, m.temp_size_in_bytes / 2**20


def main(argv: list[str] | None = None) -> None:
  p = common.parser(__doc__)
  p.add_argument("--models", default="basic_cnn,resnet20",
                  help=f"comma-separated, from {list(BATCH)} (default basic_cnn,resnet20)")
  p.add_argument("--contenders", default=",".join(CONTENDERS),
                 help="comma-separated, from the names in CONTENDERS (sgdm is always timed)")
  args = p.parse_args(argv)
  single_thread_cpu_lapack()
  if unknown := set(args.models.split(",")) - set(BATCH):
    p.error(f"unknown models {sorted(unknown)}; choose from {list(BATCH)}")
  cases = [(name, BATCH[name]) for name in args.models.split(",")]
  chosen = ["sgdm"] + [c for c in args.contenders.split(",") if c != "sgdm"]
  if unknown := set(chosen) - set(CONTENDERS):
    p.error(f"unknown contenders {sorted(unknown)}; choose from {list(CONTENDERS)}")
  if args.smoke:
    cases, chosen = [("basic_cnn", 8)], list(SMOKE)
  rows = []
  for name, batch in cases:
    model = convnets.MODELS[name](num_classes=10)
    key = jax.random.key(0)
    images = jax.random.normal(key, (batch, 32, 32, 3))
    labels = jax.random.randint(key, (batch,), 0, 10)
    variables = model.init(key, images[:2], train=False)
    contenders = {k: CONTENDERS[k] for k in chosen}
    compiled, compile_s, inputs = {}, {}, {}
    for label, (optimizer, method, *steps) in contenders.items():
      tx = optimizers.make_optimizer(optimizer, learning_rate=1e-2, momentum=0.9,
                                     weight_decay=5e-4, method=method, steps=(steps or [None])[0])
      inputs[label] = (variables["params"], variables["batch_stats"],
                       tx.init(variables["params"]), images, labels)
      compiled[label], compile_s[label] = common.compile_seconds(
          make_step(model, tx), *inputs[label])
    times = common.time_interleaved(compiled, inputs, 1 if args.smoke else args.repeats)
    memory = {label: planned_memory_mib(fn) for label, fn in compiled.items()}
    for label in contenders:
      rows.append({"model": name, "batch": batch, "optimiser": label,
                   "step ms": 1e3 * times[label], "vs sgdm": times[label] / times["sgdm"],
                   "compile s": compile_s[label], "memory MiB": memory[label][0],
                   "temp MiB": memory[label][1],
                   "memory vs sgdm": memory[label][0] / memory["sgdm"][0]})
    print(name, {k: f"{v / times['sgdm']:.3f}" for k, v in times.items()}, flush=True)
  print(common.write("train_step", rows, args.out))


if __name__ == "__main__":
  main()
