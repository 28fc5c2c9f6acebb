"""The NanoGPT speedrun's optimiser rebuilt from orthax's primitives."""

from __future__ import annotations

from typing import Any

import optax

from orthax._src.attention import attention_layout, group_heads
from orthax._src.muon import muon
from orthax._src.transform import Method


def speedrun_muon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: float = 0.95,
    normuon_beta2: float = 0.9,
    weight_decay: float = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.99,
    eps: float = 1e-10,
    adam_weight_decay: float = 0.0,
    mask: Any = None,
    layout: Any = None,
    head_group: int | None = None,
    method: Method = "polar_express",
    steps: int | None = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
  """The optimiser of modded-nanogpt's `train_gpt.py` (`NorMuonAndAdam`), as one orthax chain.

  The NanoGPT speedrun's hidden matrices take Nesterov momentum, Polar Express, NorMuon's
  normalisation along each matrix's longer side, Muon's sqrt(max(1, N / P)) scale and cautious
  weight decay; query and key are orthogonalised per pair of heads, value and out whole; every
  other parameter takes Adam with cautious weight decay. Built from the primitives, it is::

    orthax.group_heads(orthax.muon(
        learning_rate, beta=beta, method="polar_express", step_scale="muon",
        normuon_beta2=normuon_beta2, normuon_axis="longer", cautious_weight_decay=True,
        layout=orthax.attention_layout("heads", inputs=("query", "key"), outputs=(),
            base=orthax.attention_layout("whole", inputs=("value",), outputs=("out",),
                                         base=layout)),
        mask=mask, ...), head_group, inputs=("query", "key"), outputs=())

  Differences from `train_gpt.py` that remain:

  - Momentum is `orthax.muon_momentum`'s (optax's): bias-corrected, so the first steps weigh the
    gradient against the average differently; the speedrun's is the uncorrected
    (1 - beta) g + beta m, and it ramps beta from 0.85 to 0.95 at the start and back at the end;
    `beta` here is a constant.
  - Polar Express is `orthax.polar.polar_express` in float32 with its own normalisation and
    coefficients; the speedrun's runs in bfloat16 with its published coefficients.
  - NorMuon's eps: orthax divides by sqrt(v) + eps, the speedrun by sqrt(max(v, 1e-10)).
  - One learning rate and one decay for the hidden matrices and one pair for Adam: the speedrun
    multiplies them per parameter (twice the rate for the MLP's output projection, Adam's betas,
    rates and decays per embedding, head and scalar), which a user builds with
    `optax.partition` around this. Its Adam decay is lr^2 * weight_decay, here
    lr * adam_weight_decay, and its Adam mask is u * x > 0 where orthax's is >= 0 for both.
  - Its Adam parameters step only every other step, on two steps' summed gradients, and its
    embedding is tied to the head until a set step; here every parameter steps every step (wrap
    in `optax.MultiSteps` or `optax.partition` to reproduce such schedules).
  - Its bfloat16 parameters carry a float32 mantissa in the optimiser; orthax updates the params'
    own dtype.

  Args:
    learning_rate: the hidden matrices' rate (`train_gpt.py`: 0.023), a float or an optax
      schedule.
    beta: momentum decay (`train_gpt.py`: 0.95 at its plateau).
    normuon_beta2: NorMuon's second-moment decay (`train_gpt.py`: 0.9).
    weight_decay: cautious decay of the hidden matrices, times the learning rate
      (`train_gpt.py`: 1.2).
    adam_learning_rate: Adam's rate; default `learning_rate` (`train_gpt.py`: 0.008).
    adam_b1, adam_b2: Adam's betas (`train_gpt.py` uses (0.9, 0.99) for scalars and gates,
      (0.5, 0.95) for the embedding and head).
    eps: Adam's epsilon (`train_gpt.py`: 1e-10).
    adam_weight_decay: cautious decay of Adam's parameters, times Adam's rate.
    mask: which leaves are hidden matrices, as in `orthax.muon` (default
      `orthax.masks.hidden_matrices()`); the rest go to Adam.
    layout: the layout of every leaf that is not an attention kernel, as `orthax.muon`'s (e.g.
      `orthax.layout_by_path({"blocks": orthax.Layout(batch=0)})` for an `nn.scan` stack).
    head_group: heads per query/key group; None (default) is the speedrun's 2 (an int default
      would reach `optax.inject_hyperparams` as an array), 1 single heads.
    method: the orthogonaliser (default Polar Express), as in `orthax.muon`.
    steps: its iterations (default 5).
    mu_dtype: dtype of both branches' first moments.

  Returns:
    An `optax.GradientTransformation`.

  Examples:
    >>> import orthax
    >>> tx = orthax.speedrun_muon(0.023, weight_decay=1.2, adam_learning_rate=0.008)

  References:
    Jordan et al., `modded-nanogpt <https://github.com/KellerJordan/modded-nanogpt>`_, 2024-

    Li et al., `NorMuon: Making Muon more efficient and scalable
    <https://arxiv.org/abs/2510.05491>`_, 2025

    Chen et al., `Cautious Weight Decay <https://arxiv.org/abs/2510.12402>`_, 2025

    Amsel, Persson, Musco, Gower, `The Polar Express
    <https://arxiv.org/abs/2505.16932>`_, 2025
  """
  views = attention_layout(
      "heads", inputs=("query", "key"), outputs=(),
      base=attention_layout("whole", inputs=("value",), outputs=("out",), base=layout))
  return group_heads(
      muon(learning_rate, beta=beta, nesterov=True, method=method, steps=steps, mask=mask,
           layout=views, step_scale="muon", weight_decay=weight_decay, mu_dtype=mu_dtype,
           eps=eps, adam_b1=adam_b1, adam_b2=adam_b2, adam_weight_decay=adam_weight_decay,
           adam_learning_rate=adam_learning_rate, normuon_beta2=normuon_beta2,
           normuon_axis="longer", cautious_weight_decay=True),
      2 if head_group is None else head_group, inputs=("query", "key"), outputs=())
