"""QK-clip (MuonClip): rescales a head's query and key weights when its attention logits grow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from orthax._src.paths import path_names

# The axes of one layer's Flax kernel (embed, heads, head_dim) and bias (heads, head_dim): both
# keep the heads on axis -2; any axes before these stack layers.
_OWN_AXES = {"kernel": 3, "bias": 2}


def qk_clip(
    threshold: float | jax.Array = 100.0, *, query: str = "query", key: str = "key"
) -> optax.GradientTransformationExtraArgs:
  """Shrinks each attention head whose largest logit exceeds `threshold` back onto it.

  With Muon, attention logits can grow without bound and training then diverges. Kimi K2's
  QK-clip (MuonClip) measures each head's largest pre-softmax logit S_h = max q_i . k_j /
  sqrt(head_dim) over the batch in the forward pass and, after the optimiser's step, multiplies
  that head's query and key weights by sqrt(gamma_h), gamma_h = min(1, threshold / S_h), so that
  the same inputs would give a largest logit of at most `threshold`. Heads at or below the
  threshold are left alone, and no gradient or forward pass changes.

  In optax terms the rescaling acts on the new parameters, not on the step: this transformation
  must come last (after the learning rate), and for a clipped head it emits
  u' = u * s + x * (s - 1), s = sqrt(gamma_h), so that x + u' = s * (x + u); every other entry
  passes through unchanged. The logits arrive through `update`'s keyword `max_logits`
  (`optax.GradientTransformationExtraArgs`): a mapping from the "/"-joined path of each attention
  module (e.g. `"blocks/0/attention"` for `params["blocks"][0]["attention"]`) to its largest logit
  per head, shaped (..., heads) with the leading axes of a stacked kernel. In that module the
  `query` and `key` submodules' `kernel` (Flax's (..., embed, heads, head_dim)) and `bias`
  ((..., heads, head_dim)), where present, are scaled per head; scaling the biases too keeps the
  logits' bound exact. Pass the maximum over every micro-batch of the step: inside
  `optax.MultiSteps` this runs on the last micro-batch's call with that call's `max_logits`.

  Kimi K2 attends with multi-head latent attention and scales its shared rotary key not at all;
  for Flax's multi-head attention every head has its own query and key, and both take sqrt(gamma).

  Args:
    threshold: tau, the largest logit allowed (Kimi K2's 100); may be an array, e.g. from
      `optax.inject_hyperparams`.
    query: the name of the query projection's module in each attention module (Flax's).
    key: the name of the key projection's module (Flax's).

  Returns:
    A stateless `optax.GradientTransformationExtraArgs` whose `update` needs `params` and
    `max_logits`.

  Examples:
    >>> import jax.numpy as jnp, optax, orthax
    >>> params = {"attn": {"query": {"kernel": jnp.ones((4, 2, 3))},
    ...                    "key": {"kernel": jnp.ones((4, 2, 3))}}}
    >>> tx = optax.chain(optax.sgd(0.0), orthax.qk_clip(100.0))
    >>> max_logits = {"attn": jnp.array([50.0, 400.0])}  # head 1 is 4x over: sqrt(1/4) = 0.5
    >>> updates, _ = tx.update(params, tx.init(params), params, max_logits=max_logits)
    >>> optax.apply_updates(params, updates)["attn"]["key"]["kernel"][0].tolist()
    [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5]]

  References:
    Kimi Team, `Kimi K2: Open Agentic Intelligence <https://arxiv.org/abs/2507.20534>`_, 2025
  """
  for what, name in (("query", query), ("key", key)):
    if not isinstance(name, str) or not name:
      raise ValueError(f"qk_clip({what}=...) must be a module name such as {what!r}, got {name!r}.")

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, max_logits: Mapping[str, Any] | None = None,
                **extra_args):
    del extra_args
    if params is None or max_logits is None:
      raise ValueError(
          "qk_clip rescales the new parameters by each head's largest attention logit: call "
          "update(updates, state, params, max_logits={module path: (..., heads) array}).")
    found: dict[str, set[str]] = {module: set() for module in max_logits}

    def clip(key_path, u, x):
      names = path_names(key_path)
      if len(names) < 3 or names[-1] not in _OWN_AXES or names[-2] not in (query, key):
        return u
      module = "/".join(names[:-2])
      if module not in max_logits:
        return u
      if names[-1] == "kernel":
        found[module].add(names[-2])
      logits = jnp.asarray(max_logits[module])
      stack, heads = u.shape[:u.ndim - _OWN_AXES[names[-1]]], u.shape[-2]
      if logits.shape != stack + (heads,):
        raise ValueError(
            f"qk_clip: max_logits[{module!r}] has shape {logits.shape}, but "
            f"{jax.tree_util.keystr(key_path)} of shape {u.shape} needs {stack + (heads,)}: one "
            "logit per head (after the kernel's stacking axes).")
      dtype = jnp.promote_types(u.dtype, jnp.float32)
      logits = logits.astype(dtype)
      scale = jnp.where(logits > threshold, jnp.sqrt(threshold / logits), 1).astype(dtype)
      scale = scale[..., None, :, None] if names[-1] == "kernel" else scale[..., :, None]
      return (u.astype(dtype) * scale + x.astype(dtype) * (scale - 1)).astype(u.dtype)

    new = jax.tree_util.tree_map_with_path(clip, updates, params)
    missing = [module for module, kernels in found.items() if kernels != {query, key}]
    if missing:
      raise ValueError(
          f"qk_clip: max_logits names {missing}, but no {query!r} and {key!r} kernels were found "
          "under those paths; key max_logits by the attention module's path, e.g. "
          "'blocks/0/attention'.")
    return new, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
