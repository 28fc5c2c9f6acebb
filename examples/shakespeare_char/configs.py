"""The character-level GPT's configuration, and the learning-rate sweep and finals as presets.

`Config` is one comparison: the GPT trained with each of `optimizers`, once per seed; its fields
are the command line's flags (`examples.lib.config`). Defaults: nanoGPT's `shakespeare_char`
configuration for a CPU (4 layers, 4 heads, width 128, context 64, batch 12, 2,000 steps; AdamW
lr 1e-3, 100 warm-up steps, cosine decay to lr / 10, betas (0.9, 0.99), weight decay 0.1 on
matrices, gradient clipping at 1.0, no dropout).

An optimiser label is a name with optional settings after `@` (`examples.lib.compare`), e.g.
`orthax-muon@method=polar_express@layout=heads@lr=0.02`. The presets:

- `sweep`: every optimiser of `SETTINGS` at each rate of its grid, one seed, `SWEEP_STEPS` steps
  with the schedule scaled to them.
- `finals`: the chosen optimisers at their best rates (from the sweep's `best_lrs.json`, named by
  `--best-lrs`), three seeds, the full 2,000 steps.
- `fair_sweep`, `fair_finals`: the same for the fair comparison of issue 22: `FAIR_ADAMS` over
  `FAIR_ADAM_RATES`, the muons (`FAIR_MUONS`) over their rate and their AdamW part's rate
  `adam_lr`; the finals take every one at its best pair.

`CONFIGS` holds them by name for `python -m examples.shakespeare_char.main --config NAME`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from examples.lib.config import Comparison, Preset, lay, setting
from examples.lib.optimizers import LAYOUTS, MASKS, OPTIMIZERS


@dataclasses.dataclass(frozen=True)
class Config(Comparison):
  """One comparison of optimisers on the character-level GPT."""

  optimizers: tuple[str, ...] = setting(
      ("adamw", "muon"),
      f"comma-separated labels name[@field=value...], name one of {', '.join(OPTIMIZERS)}; e.g. "
      "orthax-muon@method=polar_express@layout=heads@lr=0.02")
  seeds: tuple[int, ...] = setting((0,), "comma-separated seeds", flags=("--seeds", "--seed"))
  steps: int = 2000
  batch_size: int = 12
  context: int = 64
  layers: int = 4
  heads: int = 4
  width: int = 128
  learning_rate: float = setting(1e-3, "peak rate", flags=("--lr", "--learning-rate"))
  adam_lr: float | None = setting(
      None, "peak rate of the muons' AdamW part (embeddings, lm_head, norms), scheduled as lr",
      unset="lr")
  warmup_steps: int = setting(100, "linear warm-up from 0")
  final_lr_fraction: float = setting(0.1, "cosine decay to this fraction of the peak rate")
  momentum: float = setting(0.9, "Adam's b1 (also of the muons' AdamW part); SGD's momentum")
  b2: float = setting(0.99, "Adam's b2")
  muon_beta: float = setting(0.95, "the muons' momentum")
  weight_decay: float = setting(0.1, "decoupled (AdamW, muons) or L2 (SGDM) decay")
  clip: float = setting(1.0, "clip the gradient's global norm to this (0: no clipping)")
  method: str = setting("auto", "orthax method: auto, svd, eigh, newton_schulz, polar_express")
  mask: str = setting("hidden", "the matrices to orthogonalise", choices=tuple(MASKS))
  layout: str = setting("whole", "attention kernels as matrices", choices=LAYOUTS)
  normuon_beta2: float | None = setting(
      None, "orthax-muon: NorMuon's second-moment decay (orthax.muon's normuon_beta2), one moment "
      "per output feature (normuon_axis='components', the paper's neuron)", unset="no NorMuon")
  qk_clip: float | None = setting(
      None, "QK-clip threshold tau (orthax.qk_clip after the optimiser, fed each head's max "
      "attention logit of the step's batch)", unset="no clip")
  log_max_logit: bool = setting(
      False, "record the largest attention logit of every step's batch in history.json (always "
      "with qk_clip)")
  eval_every: int = setting(100, "steps between validation losses")
  eval_windows: int = setting(256, "fixed validation windows, evenly spaced")
  target: float | None = setting(None, "validation loss for 'steps to' (default: the first "
                                 "optimiser's final mean)")
  sample_chars: int = setting(300, "characters generated at the end (0: none)")
  data: str | None = setting(
      None, "Tiny Shakespeare's input.txt",
      unset="$ORTHAX_TINY_SHAKESPEARE, tensorflow-datasets, the local copy, then the download")
  synthetic: bool = setting(False, "a synthetic corpus (tests; no meaningful loss)")
  workdir: str | None = setting(None, "where runs go", unset="runs/shakespeare_char/<time>")


# The optimisers of the comparison: (label without lr, the rates swept).
ADAM_RATES = (5e-4, 1e-3, 2e-3, 4e-3)
MUON_RATES = (0.01, 0.02, 0.04, 0.08)
SGD_RATES = (0.01, 0.03, 0.1, 0.3)
SETTINGS = {
    # AdamW's best rate of the first four at 400 steps was the largest (4e-3): 8e-3 added, as for
    # orthogonal-adamw below.
    "adamw": (*ADAM_RATES, 8e-3),
    "muon": MUON_RATES,
    "orthax-muon@method=polar_express@layout=whole": MUON_RATES,
    "orthax-muon@method=svd@layout=whole": MUON_RATES,
    "orthax-muon@method=newton_schulz@layout=heads": MUON_RATES,
    "orthax-muon@method=polar_express@layout=heads": MUON_RATES,
    "orthax-muon@method=svd@layout=heads": MUON_RATES,
    "orthogonal-adamw@method=svd@layout=whole": (*ADAM_RATES, 8e-3),
    "orthogonal-adamw@method=svd@layout=heads": (*ADAM_RATES, 8e-3),
    # The paper's SGDM setting: L2 decay 5e-4 (0.1 would be coupled decay far stronger than
    # AdamW's decoupled 0.1 x lr).
    "orthogonal-sgdm@method=svd@layout=whole@weight_decay=0.0005": SGD_RATES,
    "orthogonal-sgdm@method=svd@layout=heads@weight_decay=0.0005": SGD_RATES,
}
SWEEP_STEPS = 400

# The fair comparison (issue 22): every contender at its own rates, and the muons' AdamW part
# (embeddings, lm_head, norms) at its own rate `adam_lr`, swept rather than tied to the muon rate.
# AdamW's rates bracket the old sweep's best (8e-3, the largest it tried).
FAIR_ADAM_RATES = (4e-3, 8e-3, 1.6e-2)
FAIR_MUON_RATES = (0.02, 0.04)
FAIR_ADAM_PART_RATES = (1e-3, 3e-3, 8e-3)
FAIR_ADAMS = (
    "adamw",
    "orthogonal-adamw@method=svd@layout=whole",  # the paper's order, exact U V^T
    "orthogonal-adamw@method=polar_express@layout=whole",
)
FAIR_MUONS = (
    "muon",  # optax.contrib.muon
    "orthax-muon@method=polar_express@layout=whole",
    "speedrun-muon",
    # NorMuon alone: one second moment per output feature (normuon_axis="components").
    "orthax-muon@method=polar_express@layout=whole@normuon_beta2=0.95",
)


def fair_sweep_labels() -> tuple[str, ...]:
  return (tuple(f"{name}@lr={rate:g}" for name in FAIR_ADAMS for rate in FAIR_ADAM_RATES)
          + tuple(f"{name}@lr={rate:g}@adam_lr={adam:g}" for name in FAIR_MUONS
                  for rate in FAIR_MUON_RATES for adam in FAIR_ADAM_PART_RATES))


def sweep(**changes) -> Config:
  """Every setting at every rate of its grid: one seed, `SWEEP_STEPS` steps, the warm-up scaled
  with them (100 / 2,000 of the run)."""
  labels = tuple(f"{name}@lr={rate:g}" for name, rates in SETTINGS.items() for rate in rates)
  config = Config(optimizers=labels, steps=SWEEP_STEPS, warmup_steps=SWEEP_STEPS // 20,
                  eval_every=SWEEP_STEPS // 2, sample_chars=0)
  return dataclasses.replace(config, **changes)


def fair_sweep(**changes) -> Config:
  """The fair comparison's sweep: `FAIR_ADAMS` at each of `FAIR_ADAM_RATES`, `FAIR_MUONS` at
  each (lr, adam_lr) of `FAIR_MUON_RATES` x `FAIR_ADAM_PART_RATES`; as `sweep` otherwise."""
  return sweep(optimizers=fair_sweep_labels(), **changes)


def rates_label(name: str, rates: float | dict[str, float]) -> str:
  """`name@lr=...` (and `@adam_lr=...`) from a best_lrs.json entry: a rate, or {"lr": ...,
  "adam_lr": ...}."""
  if not isinstance(rates, dict):
    rates = {"lr": rates}
  return name + "".join(f"@{key}={rates[key]:g}" for key in ("lr", "adam_lr") if key in rates)


def finals(best: dict[str, float | dict[str, float]], names: tuple[str, ...] | None = None,
           **changes) -> Config:
  """`names` (default every setting in `best`) at their best rates (a rate, or {"lr", "adam_lr"}),
  seeds 0, 1, 2, 2,000 steps; AdamW first, so that 'steps to target' counts to AdamW's final
  loss."""
  names = names or tuple(best)
  names = tuple(sorted(names, key=lambda n: n != "adamw"))
  config = Config(optimizers=tuple(rates_label(n, best[n]) for n in names), seeds=(0, 1, 2))
  return dataclasses.replace(config, **changes)


def add_flags(parser: argparse.ArgumentParser) -> None:
  """The presets' own flag: the sweep's result that `finals` starts from."""
  parser.add_argument("--best-lrs", help="the sweep's best_lrs.json (for --config finals)")


def finals_preset(flags: dict, args: argparse.Namespace) -> list[Config]:
  if not args.best_lrs:
    raise ValueError("--config finals needs --best-lrs (the sweep's best_lrs.json)")
  return lay([finals(json.loads(Path(args.best_lrs).read_text()))], flags)


def fair_finals_preset(flags: dict, args: argparse.Namespace) -> list[Config]:
  if not args.best_lrs:
    raise ValueError("--config fair_finals needs --best-lrs (fair_sweep's best_lrs.json)")
  best = json.loads(Path(args.best_lrs).read_text())
  missing = [name for name in (*FAIR_ADAMS, *FAIR_MUONS) if name not in best]
  if missing:
    raise ValueError(f"{args.best_lrs} has no best rates for {missing}: run --config fair_sweep")
  return lay([finals(best, (*FAIR_ADAMS, *FAIR_MUONS))], flags)


CONFIGS: dict[str, Preset] = {
    "sweep": lambda flags, args: lay([sweep()], flags),
    "finals": finals_preset,
    "fair_sweep": lambda flags, args: lay([fair_sweep()], flags),
    "fair_finals": fair_finals_preset,
}
SWEEPS = ("sweep", "fair_sweep")  # the presets whose table is the sweep's
