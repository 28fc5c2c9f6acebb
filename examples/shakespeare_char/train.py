"""Trains the character-level GPT with one optimiser and one seed; times and samples from it.

A run is a `Config` with one optimiser label and one seed (`examples.lib.compare.run_config`).
The step is one jitted function of (params, optimiser state, step, key): it draws its batch on
the device from fold_in(key(seed), step), so runs with the same seed see the same batches and
start from the same initialisation whatever their optimiser. Every `eval_every` steps (and at the
end) the model's mean loss over fixed validation windows is recorded.

Outputs, in the run's directory: `history.json` (config, validation losses, training loss per
interval, step time, compile time; with `qk_clip` or `log_max_logit`, `max_logit`: the largest
attention logit of each step's batch, before its update) and `params.npz`. A run whose
`history.json` exists with the same config is read back, not trained again, so an interrupted
comparison resumes run by run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import orthax
from examples.lib import compare, optimizers
from examples.lib.config import json_values
from examples.shakespeare_char import data
from examples.shakespeare_char.configs import Config
from examples.shakespeare_char.model import GPT, logits_and_max_attention_logits


def check(config: Config) -> None:
  """A ValueError for settings that cannot run, before any training."""
  if config.steps < 1 or config.eval_every < 1:
    raise ValueError(f"steps and eval_every must be >= 1, got {config.steps}, "
                     f"{config.eval_every}.")
  if not 0 <= config.warmup_steps < config.steps:
    raise ValueError(f"warmup_steps must be in [0, steps = {config.steps}), got "
                     f"{config.warmup_steps}; give --warmup-steps with a short --steps.")
  for label in config.optimizers:
    run = compare.run_config(config, label, 0)
    optimizers.check_name(run.optimizer, run.mask, run.layout)
    if run.adam_lr is not None and run.optimizer not in optimizers.MUONS:
      raise ValueError(f"{label}: adam_lr is the rate of a muon's AdamW part "
                       f"({', '.join(optimizers.MUONS)}); {run.optimizer} has none.")
    if run.normuon_beta2 is not None and run.optimizer != "orthax-muon":
      raise ValueError(f"{label}: normuon_beta2 is orthax-muon's option.")
    if run.qk_clip is not None and not run.qk_clip > 0:
      raise ValueError(f"{label}: qk_clip must be a threshold > 0, got {run.qk_clip}.")


def make_model(config: Config, vocab: int, seed: int) -> GPT:
  return GPT(vocab, context=config.context, layers=config.layers, heads=config.heads,
             width=config.width, rngs=nnx.Rngs(seed))


def make_schedule(config: Config, peak: float | None = None) -> optax.Schedule:
  """Linear warm-up from 0, then cosine decay to `final_lr_fraction` of the peak (nanoGPT's);
  the peak is `learning_rate` unless given."""
  peak = config.learning_rate if peak is None else peak
  return optax.warmup_cosine_decay_schedule(
      0.0, peak, config.warmup_steps, config.steps, end_value=config.final_lr_fraction * peak)


def make_optimizer(config: Config) -> optax.GradientTransformation:
  """The run's optimiser (`examples.lib.optimizers`), after clipping the gradient's norm; the
  muons' AdamW part on `make_schedule(config, adam_lr)` when `adam_lr` is given; `orthax.qk_clip`
  last when `qk_clip` is (its `update` then needs `max_logits=`)."""
  adam_schedule = None if config.adam_lr is None else make_schedule(config, config.adam_lr)
  tx = optimizers.make_optimizer(
      config.optimizer, learning_rate=make_schedule(config), momentum=config.momentum,
      weight_decay=config.weight_decay, method=config.method, mask=config.mask, b2=config.b2,
      layout=config.layout, muon_beta=config.muon_beta, adam_learning_rate=adam_schedule,
      normuon_beta2=config.normuon_beta2)
  chain = ([optax.clip_by_global_norm(config.clip)] if config.clip else []) + [tx]
  if config.qk_clip is not None:
    chain.append(orthax.qk_clip(config.qk_clip))
  return optax.chain(*chain) if len(chain) > 1 else tx


def records_logits(config: Config) -> bool:
  """Whether the run's step measures each head's largest attention logit (QK-clip needs it)."""
  return config.qk_clip is not None or config.log_max_logit


def loss_fn(params, graphdef, inputs, targets) -> jax.Array:
  logits = nnx.merge(graphdef, params)(inputs)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def loss_and_max_logits(params, graphdef, inputs, targets) -> tuple[jax.Array, dict]:
  """The loss, and each attention module's largest logit per head (`orthax.qk_clip`'s input)."""
  logits, max_logits = logits_and_max_attention_logits(nnx.merge(graphdef, params), inputs)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
  return loss, max_logits


@functools.partial(jax.jit, static_argnames=("graphdef", "tx", "batch_size", "context", "logits"),
                   donate_argnames=("params", "opt_state"))
def train_step(params, opt_state, ids, key, step, *, graphdef, tx, batch_size, context,
               logits="none"):
  """One step: (params, opt_state, loss, largest attention logit of the batch). `logits`:
  "none" (not measured: nan), "record" (measured), "clip" (measured and passed to the optimiser
  as `max_logits=`, for `orthax.qk_clip`)."""
  inputs, targets = data.random_windows(ids, jax.random.fold_in(key, step), batch_size, context)
  if logits == "none":
    loss, grads = jax.value_and_grad(loss_fn)(params, graphdef, inputs, targets)
    max_logit = jnp.full((), jnp.nan)
  else:
    (loss, max_logits), grads = jax.value_and_grad(loss_and_max_logits, has_aux=True)(
        params, graphdef, inputs, targets)
    max_logit = jnp.max(jnp.stack([jnp.max(m) for m in max_logits.values()]))
  extra = {"max_logits": max_logits} if logits == "clip" else {}
  updates, opt_state = tx.update(grads, opt_state, params, **extra)
  return optax.apply_updates(params, updates), opt_state, loss, max_logit


def logits_mode(config: Config) -> str:
  """`train_step`'s `logits` for `config`."""
  if config.qk_clip is not None:
    return "clip"
  return "record" if config.log_max_logit else "none"


@functools.partial(jax.jit, static_argnames="graphdef")
def eval_loss(params, inputs, targets, *, graphdef) -> jax.Array:
  return loss_fn(params, graphdef, inputs, targets)


def setting_key(config: Config) -> Config:
  """`config` without what differs between the seeds of one setting or does not train."""
  return dataclasses.replace(config, seeds=(0,), workdir=None, sample_chars=0, target=None)


class StepCache:
  """Each setting's optimiser and train step compiled ahead of time, built once per setting and
  shared by its seeds (`setting_key`); one per comparison, passed to the runs that share it."""

  def __init__(self):
    self.entries: dict[Config, tuple[optax.GradientTransformation, Any, float]] = {}

  def get(self, config: Config, graphdef, params, ids, key) -> tuple[Any, Any, float]:
    """(optimiser, compiled step, seconds its compilation took) of `config`'s setting, for
    these arguments' shapes."""
    setting = setting_key(config)
    if setting not in self.entries:
      tx = make_optimizer(setting)
      start = time.perf_counter()
      compiled = train_step.lower(
          params, tx.init(params), ids, key, 0, graphdef=graphdef, tx=tx,
          batch_size=config.batch_size, context=config.context,
          logits=logits_mode(config)).compile()
      self.entries[setting] = tx, compiled, time.perf_counter() - start
    return self.entries[setting]


class Run:
  """The model, optimiser and compiled step of one run: `step()` advances it by one step.

  `compiled_step` is the compiled train step (its `cost_analysis()` counts its FLOPs); `cache`
  shares the compiled steps between runs of one setting (default: a cache of its own).
  """

  def __init__(self, config: Config, corpus: data.Corpus, seed: int,
               cache: StepCache | None = None):
    model = make_model(config, corpus.vocab, seed)
    graphdef, state = nnx.split(model)
    self.graphdef, self.config = graphdef, config
    self.params = nnx.to_pure_dict(state)
    self.ids = jnp.asarray(corpus.train)
    self.key = jax.random.key(seed)
    self.count = 0
    self.tx, self.compiled_step, self.compile_s = (cache or StepCache()).get(
        config, graphdef, self.params, self.ids, self.key)
    self.opt_state = self.tx.init(self.params)

  def step(self) -> jax.Array:
    """One step; its training loss (and, in `max_logit`, the batch's largest attention logit,
    nan unless the config measures it)."""
    self.params, self.opt_state, loss, self.max_logit = self.compiled_step(
        self.params, self.opt_state, self.ids, self.key, self.count)
    self.count += 1
    return loss


# Fields that do not change what a run trains: a finished run is read back whatever they are.
NOT_TRAINING = ("workdir", "sample_chars", "target")


def same_training(a: dict[str, Any], b: dict[str, Any]) -> bool:
  return ({k: v for k, v in a.items() if k not in NOT_TRAINING}
          == {k: v for k, v in b.items() if k not in NOT_TRAINING})


def train(config: Config, corpus: data.Corpus, workdir: Path,
          cache: StepCache | None = None) -> dict[str, Any]:
  """Trains the one-run `config` (or reads back its finished run from `workdir`): its history.
  `cache` shares compiled steps with the other runs of the comparison."""
  workdir.mkdir(parents=True, exist_ok=True)
  record_path = workdir / "history.json"
  settings = json_values(config)
  if record_path.exists():
    history = json.loads(record_path.read_text())
    if same_training(history["config"], settings):
      return history
  (seed,) = config.seeds
  run = Run(config, corpus, seed, cache)
  compile_s = run.compile_s  # paid once per setting in a comparison
  val_inputs, val_targets = map(jnp.asarray, data.fixed_windows(
      corpus.validation, config.eval_windows, config.context))
  evaluate = functools.partial(eval_loss, inputs=val_inputs, targets=val_targets,
                               graphdef=run.graphdef)
  history: dict[str, Any] = {
      "config": settings, "eval_steps": [0], "val_loss": [float(evaluate(run.params))],
      "train_loss": [None]}
  if logits_mode(config) != "none":
    history["max_logit"] = []  # per step: the largest attention logit of its batch
  losses, max_logits, train_s = [], [], 0.0
  bar = tqdm(range(1, config.steps + 1), desc=f"{config.optimizer} seed {seed}", leave=False,
             file=sys.stderr)
  for step in bar:
    start = time.perf_counter()
    losses.append(run.step())
    max_logits.append(run.max_logit)
    if step % config.eval_every == 0 or step == config.steps:
      interval = np.asarray(jax.device_get(losses))
      if "max_logit" in history:
        history["max_logit"] += [float(m) for m in jax.device_get(max_logits)]
      train_s += time.perf_counter() - start  # the steps since the last evaluation, now done
      start = time.perf_counter()
      history["eval_steps"].append(step)
      history["train_loss"].append(float(interval.mean()))
      history["val_loss"].append(float(evaluate(run.params)))
      bar.set_postfix(val=f"{history['val_loss'][-1]:.3f}", refresh=False)
      losses, max_logits = [], []
    else:
      train_s += time.perf_counter() - start
  bar.close()
  if not np.isfinite(history["val_loss"][-1]):
    tqdm.write(f"{config.optimizer} seed {seed}: the loss diverged", file=sys.stderr)
  history.update(step_ms=1e3 * train_s / config.steps, compile_s=compile_s)
  save_params(workdir / "params.npz", run.params)
  record_path.write_text(json.dumps(history) + "\n")
  return history


def save_params(path: Path, params) -> None:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  np.savez(path, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})


def load_params(path: Path, config: Config, vocab: int):
  params = nnx.to_pure_dict(nnx.split(make_model(config, vocab, 0))[1])
  saved = np.load(path)
  return jax.tree_util.tree_map_with_path(
      lambda k, v: jnp.asarray(saved[jax.tree_util.keystr(k)]), params)


def generate(config: Config, params, corpus: data.Corpus, length: int, *, seed: int = 0,
             temperature: float = 0.8, prompt: str = "\n") -> str:
  """`length` characters sampled after `prompt` (nanoGPT's temperature 0.8, no top-k)."""
  graphdef = nnx.split(make_model(config, corpus.vocab, 0))[0]

  @jax.jit
  def next_id(params, window, position, key):
    logits = nnx.merge(graphdef, params)(window[None])[0, position]
    return jax.random.categorical(key, logits / temperature)

  ids = list(corpus.encode(prompt))
  key = jax.random.key(seed)
  for i in range(length):
    window = np.zeros(config.context, np.int32)
    recent = ids[-config.context:]
    window[:len(recent)] = recent
    ids.append(int(next_id(params, window, len(recent) - 1, jax.random.fold_in(key, i))))
  return corpus.decode(ids[len(prompt):])


def step_flops(run: Run) -> float:
  """Floating-point operations of one compiled step, as XLA counts them (nan if it does not)."""
  analysis = run.compiled_step.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return float((analysis or {}).get("flops", float("nan")))


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
  """The best rate of a float32 (size x size) @ (size x size) product on the default device,
  GFLOP/s: what a step made of large matrix products could reach."""
  x = jax.random.normal(jax.random.key(0), (size, size))
  product = jax.jit(lambda a: a @ a)
  jax.block_until_ready(product(x))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(product(x))
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best / 1e9


def time_steps(configs: dict[str, Config], corpus: data.Corpus, steps: int = 20,
               rounds: int = 3, cache: StepCache | None = None) -> dict[str, float]:
  """Milliseconds per training step of each one-run config, measured side by side in this
  process: `rounds` rounds, each running `steps` steps of every config in turn; the median."""
  cache = cache or StepCache()
  runs = {label: Run(config, corpus, 0, cache) for label, config in configs.items()}
  for run in runs.values():
    jax.block_until_ready(run.step())  # compiles
  times: dict[str, list[float]] = {label: [] for label in runs}
  for _ in range(rounds):
    for label, run in runs.items():
      start = time.perf_counter()
      for _ in range(steps):
        loss = run.step()
      jax.block_until_ready((loss, run.params))
      times[label].append(1e3 * (time.perf_counter() - start) / steps)
  return {label: float(np.median(t)) for label, t in times.items()}
