"""A GPT for characters in Flax NNX: nanoGPT's model, with attention that keeps a heads axis.

Pre-LayerNorm decoder-only transformer: token and position embeddings, `layers` blocks of causal
multi-head self-attention and a GELU MLP of 4x width, each added to the residual stream, a final
LayerNorm and an untied output head `lm_head` (nanoGPT ties it to the token embedding; untied,
every hidden matrix is a `kernel` and the head is found by name, as `orthax.masks.
hidden_matrices()` expects). No biases and no dropout (nanoGPT's `shakespeare_char` on CPU).

Attention is `nnx.MultiHeadAttention`, whose query, key and value kernels are (width, heads,
head_dim) and whose out kernel is (heads, head_dim, width): the heads axis is explicit, so
`orthax.attention_layout` can orthogonalise each head, the heads as components, or each
projection whole. Initialisation follows nanoGPT: normal(0.02) for every matrix, and
normal(0.02 / sqrt(2 * layers)) for the two projections that write into the residual stream.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


class Block(nnx.Module):
  """x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x))."""

  def __init__(self, width: int, heads: int, layers: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    residual_init = nnx.initializers.normal(0.02 / math.sqrt(2 * layers))
    self.attention_norm = nnx.LayerNorm(width, use_bias=False, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
        num_heads=heads, in_features=width, use_bias=False, kernel_init=init,
        out_kernel_init=residual_init, decode=False, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(width, use_bias=False, rngs=rngs)
    self.fc = nnx.Linear(width, 4 * width, use_bias=False, kernel_init=init, rngs=rngs)
    self.proj = nnx.Linear(4 * width, width, use_bias=False, kernel_init=residual_init,
                           rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attention(self.attention_norm(x), mask=mask)
    return x + self.proj(jax.nn.gelu(self.fc(self.mlp_norm(x)), approximate=False))


class GPT(nnx.Module):
  """tokens (batch, time) int -> logits (batch, time, vocab)."""

  def __init__(self, vocab: int, *, context: int = 64, layers: int = 4, heads: int = 4,
               width: int = 128, rngs: nnx.Rngs):
    if width % heads:
      raise ValueError(f"width {width} does not split into {heads} heads.")
    embed_init = nnx.initializers.normal(0.02)
    self.context = context
    self.token_embed = nnx.Embed(vocab, width, embedding_init=embed_init, rngs=rngs)
    self.position_embed = nnx.Embed(context, width, embedding_init=embed_init, rngs=rngs)
    self.blocks = nnx.List([Block(width, heads, layers, rngs=rngs) for _ in range(layers)])
    self.final_norm = nnx.LayerNorm(width, use_bias=False, rngs=rngs)
    self.lm_head = nnx.Linear(width, vocab, use_bias=False, kernel_init=embed_init, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    time = tokens.shape[-1]
    if time > self.context:
      raise ValueError(f"{time} tokens exceed the model's context of {self.context}.")
    x = self.token_embed(tokens) + self.position_embed(jnp.arange(time))
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.lm_head(self.final_norm(x))


def logits_and_max_attention_logits(model: nnx.Module, tokens: jax.Array
                                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`model(tokens)`, and each attention module's largest pre-softmax logit per head.

  The input of `orthax.qk_clip`: keyed by the module's path ("blocks/0/attention"), each a
  (heads,) array, max over batch, query and key positions of q . k / sqrt(head_dim) where the mask
  lets a query see a key. It wraps every `nnx.MultiHeadAttention`'s `attention_fn` for the one call
  (and puts it back), so the model itself is unchanged; the score matrix is computed once more.
  """
  found: dict[str, jax.Array] = {}
  wrapped = []
  for path, module in nnx.iter_modules(model):
    if not isinstance(module, nnx.MultiHeadAttention):
      continue
    name, attend = "/".join(str(p) for p in path), module.attention_fn

    def recording(query, key, value, *args, mask=None, _name=name, _attend=attend, **kwargs):
      scores = jnp.einsum("...qhd,...khd->...hqk", query / jnp.sqrt(query.shape[-1]), key)
      if mask is not None:
        scores = jnp.where(mask, scores, -jnp.inf)
      found[_name] = jnp.max(jnp.moveaxis(scores, -3, -1).reshape(-1, scores.shape[-3]), axis=0)
      return _attend(query, key, value, *args, mask=mask, **kwargs)

    wrapped.append((module, attend))
    module.attention_fn = recording
  try:
    logits = model(tokens)
  finally:
    for module, attend in wrapped:
      module.attention_fn = attend
  return logits, found
