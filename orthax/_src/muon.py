"""Muon's order: momentum first, then orthogonalisation, with AdamW for the leaves left out."""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from orthax._src.alias import keep_state_dtypes, one_layer_mask
from orthax._src.attention import attention_layout
from orthax._src.cautious import add_cautious_decayed_weights
from orthax._src.components import select
from orthax._src.normuon import NeuronAxis, normalise_neurons
from orthax._src.transform import Method, StepScale, orthogonalise_components
from orthax._src.transformer_masks import hidden_matrices


class MuonMomentumState(NamedTuple):
  """State of `muon_momentum`: the step count and the momentum (an average of gradients)."""

  count: jax.Array  # type: ignore[assignment]  # shape=(), int32; shadows tuple.count as optax's states do
  mu: optax.Updates


def muon_momentum(
    beta: float = 0.95, *, nesterov: bool = True, mu_dtype: Any = None
) -> optax.GradientTransformation:
  """Bias-corrected exponential moving average of gradients, with Nesterov's look-ahead.

  Muon orthogonalises momentum rather than the gradient. This is the momentum of
  `optax.contrib.scale_by_muon`, step for step: m_t = beta m_{t-1} + (1 - beta) g_t and, with
  Nesterov, the update beta m_t / (1 - beta^(t+1)) + (1 - beta) g_t / (1 - beta^t) (NAdam's
  form); without, m_t / (1 - beta^t).

  Args:
    beta: decay rate of the average.
    nesterov: whether to look ahead as above.
    mu_dtype: dtype of the stored momentum; default the params' dtypes. It stays so through
      every update, whatever the gradients' dtype.

  Returns:
    An `optax.GradientTransformation` whose state is a `MuonMomentumState`.
  """
  mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

  def init_fn(params):
    return MuonMomentumState(
        count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params, dtype=mu_dtype))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, beta, 1)
    count = optax.safe_increment(state.count)
    if nesterov:
      mu_hat = jax.tree.map(
          lambda m, g: beta * m + (1 - beta) * g,
          optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
          optax.tree.bias_correction(updates, beta, count))
    else:
      mu_hat = optax.tree.bias_correction(mu, beta, count)
    # The stored dtypes stay init's (mu_dtype, else the params'): float32 gradients must not
    # promote a bfloat16 momentum (a second compilation, twice the memory).
    mu = jax.tree.map(lambda m, old: m.astype(old.dtype), mu, state.mu)
    return mu_hat, MuonMomentumState(count=count, mu=mu)

  return optax.GradientTransformation(init_fn, update_fn)


def _labels(mask: Any, layout: Any) -> Any:
  """params -> tree of 'orthogonal' / 'adam' labels from a mask (bools, one bool or callable).

  The mask sees each leaf as one layer under `layout`, as `orthogonalise_components` does.
  """

  def labels(params):
    chosen = select(mask, layout, params)[1]
    return jax.tree.unflatten(jax.tree.structure(params),
                              ["orthogonal" if c else "adam" for c in chosen])

  return labels


def muon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    beta: float = 0.95,
    nesterov: bool = True,
    method: Method = "newton_schulz",
    steps: int | None = None,
    rtol: float | None = None,
    mask: Any = None,
    layout: Any = None,
    step_scale: StepScale = "muon",
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    eps: float = 1e-8,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: float = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    compute_dtype: Any = None,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
    normuon_beta2: float | None = None,
    normuon_axis: NeuronAxis = "components",
    normuon_eps: float = 1e-10,
    cautious_weight_decay: bool = False,
) -> optax.GradientTransformation:
  """Muon's order with any orthax method and layout: momentum, then U V^T, then AdamW's rest.

  Two orders are in use. The paper (Tuddenham et al.; `orthogonal_sgd`, `orthogonal_adamw`)
  orthogonalises each step's gradient and accumulates momentum afterwards. Muon (Jordan et al.)
  accumulates Nesterov momentum first and orthogonalises the momentum, then scales the result by
  sqrt(max(1, N / P)), adds decoupled weight decay and applies the learning rate; every leaf the
  mask leaves out goes to AdamW. This alias is Muon's order::

    optax.partition({"orthogonal": optax.chain(
        orthax.muon_momentum(beta, nesterov=nesterov),
        orthax.orthogonalise_components(method, mask=True, layout=layout, step_scale=...),
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate)),
      "adam": optax.adamw(adam_learning_rate, adam_b1, adam_b2, eps, adam_eps_root,
                          weight_decay=adam_weight_decay, nesterov=nesterov)}, labels_from(mask))

  With the defaults (`method="newton_schulz"`, 5 steps), the same hyper-parameters and the same
  split of leaves it reproduces `optax.contrib.muon` to float32 round-off (tested over several
  steps), so one can move over and then change one argument: `method="polar_express"` or an
  exact polar factor (`"auto"`, `"svd"`, `"eigh"`), or `layout=orthax.attention_layout("heads")`
  for per-head matrices. One difference remains: optax divides each momentum matrix M by
  ||M||_F + eps (eps = 1e-8) before the iteration, orthax by ||M||_F exactly. That changes the
  update by a relative amount proportional to eps / ||M||_F: within float32 round-off unless
  ||M||_F is small (figures: benchmarks/results/design_figures.md).

  Under `optax.inject_hyperparams`, list a callable `mask`, `layout` or `weight_decay_mask` in
  `static_args`: optax takes every callable argument for a schedule of the step count (orthax's
  own mask and layout callables then raise a ValueError).

  Args:
    learning_rate: a float or an optax schedule.
    beta: momentum decay rate (optax.contrib.muon's `beta`).
    nesterov: Nesterov momentum, in both branches.
    method: as in `orthax.orthogonalise_components`; default Muon's `"newton_schulz"`.
    steps: iterations of the approximate methods (default 5).
    rtol: as in `orthax.orthogonalise_components` (exact methods only).
    mask: which leaves are orthogonalised; the rest go to AdamW. A pytree of bools, one bool or a
      callable params -> such a tree. Default `orthax.masks.hidden_matrices()`: every `kernel`
      except the output head's, Muon's practice (to match `optax.contrib.muon`'s default of every
      2-D leaf, pass `mask=lambda p: jax.tree.map(lambda x: x.ndim == 2, p)`). As in
      `orthax.orthogonalise_components`, the mask sees each leaf as one layer (without the axes
      that `layout` marks as a layer stack), so a scanned model splits as the same model unrolled.
    layout: how the orthogonalised leaves are viewed as matrices, as in
      `orthax.orthogonalise_components`. Default `orthax.attention_layout("whole")`: attention
      projections whole, as Muon, every other leaf `Layout()`. Layer stacks (`nn.scan`) other
      than attention kernels need `Layout(batch=0)`, e.g. through
      `orthax.attention_layout("whole", base=orthax.layout_by_path(...))`; without it orthax
      assumes each leaf is one layer (a stacked (layers, in, out) kernel is one matrix).
    step_scale: as in `orthax.orthogonalise_components`; default Muon's `"muon"`,
      sqrt(max(1, N / P)) (fan-out over fan-in); `"rms"` is optax's `consistent_rms=0.2`.
    weight_decay: decoupled weight decay of the orthogonalised leaves, times the learning rate.
    weight_decay_mask: as in `optax.add_decayed_weights`, for those leaves; a callable or tree
      sees each leaf as one layer under `layout`, as `mask` does.
    mu_dtype: dtype of both branches' first moments.
    eps: AdamW's epsilon.
    adam_b1, adam_b2, adam_eps_root, adam_weight_decay: AdamW's, for the leaves left out.
    adam_learning_rate: AdamW's learning rate; default `learning_rate`.
    compute_dtype: as in `orthax.orthogonalise_components`; default None, float32 (a dtype as
      default would reach `optax.inject_hyperparams` as a float and be turned into an array).
    mesh: as in `orthax.orthogonalise_components`.
    normuon_beta2: None (default) leaves NorMuon out; a decay rate (the paper's 0.95) adds
      `orthax.normalise_neurons(normuon_beta2, axis=normuon_axis, eps=normuon_eps)` after the
      orthogonalisation, with the same layout: each neuron's update over its root second moment,
      the matrix's norm kept.
    normuon_axis: which side of each matrix holds the neurons, as `normalise_neurons`' `axis`.
    normuon_eps: as `normalise_neurons`' `eps`.
    cautious_weight_decay: False (default) decays as optax does; True decays, in both branches,
      only the entries whose update and parameter agree in sign
      (`orthax.add_cautious_decayed_weights`, in place of `optax.add_decayed_weights`).

  Returns:
    An `optax.GradientTransformation`.

  Examples:
    >>> import orthax
    >>> tx = orthax.muon(0.02, weight_decay=0.01)  # Muon with Newton-Schulz, whole projections
    >>> tx = orthax.muon(0.02, method="polar_express", layout=orthax.attention_layout("heads"))

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024

    Tuddenham, Prügel-Bennett, Hare, `Orthogonalising gradients to speed up neural network
    optimisation <https://arxiv.org/abs/2202.07052>`_, 2022
  """
  if adam_learning_rate is None:
    adam_learning_rate = learning_rate
  if mask is None:
    mask = hidden_matrices()
  if layout is None:
    layout = attention_layout("whole")
  if isinstance(beta, numbers.Real) and not 0 <= beta < 1:
    raise ValueError(f"muon(beta=...) must be in [0, 1), got {beta=}.")
  decay = add_cautious_decayed_weights if cautious_weight_decay else optax.add_decayed_weights
  normuon = () if normuon_beta2 is None else (
      normalise_neurons(normuon_beta2, eps=normuon_eps, axis=normuon_axis, mask=True,
                        layout=layout),)
  if cautious_weight_decay:
    adam = optax.chain(
        optax.scale_by_adam(adam_b1, adam_b2, eps, adam_eps_root, mu_dtype=mu_dtype,
                            nesterov=nesterov),
        add_cautious_decayed_weights(adam_weight_decay),
        optax.scale_by_learning_rate(adam_learning_rate))
  else:
    adam = optax.adamw(
        learning_rate=adam_learning_rate, b1=adam_b1, b2=adam_b2, eps=eps,
        eps_root=adam_eps_root, weight_decay=adam_weight_decay, mu_dtype=mu_dtype,
        nesterov=nesterov)
  return keep_state_dtypes(optax.partition(
      {
          "orthogonal": optax.chain(
              muon_momentum(beta, nesterov=nesterov, mu_dtype=mu_dtype),
              orthogonalise_components(
                  method, mask=True, layout=layout, rtol=rtol, steps=steps,
                  step_scale=step_scale,
                  compute_dtype=jnp.float32 if compute_dtype is None else compute_dtype,
                  mesh=mesh),
              *normuon,
              decay(weight_decay, one_layer_mask(weight_decay_mask, layout)),
              optax.scale_by_learning_rate(learning_rate),
          ),
          "adam": adam,
      },
      _labels(mask, layout),
  ))
