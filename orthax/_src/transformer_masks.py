"""A ready mask for transformers: the hidden matrices, without embeddings and the output head."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from orthax._src.masks import exclude
from orthax._src.tree_specs import reject_step_count

OUTPUT_HEADS = ("lm_head", "head")


def _is_kernel(key_path, x: Any) -> bool:
  """Whether a leaf is a floating `kernel` of ndim >= 2 (in an nnx.State, its `.value`)."""
  if key_path and isinstance(key_path[-1], jax.tree_util.GetAttrKey):
    key_path = key_path[:-1]  # The .value of an nnx.Variable.
  name = getattr(key_path[-1], "key", getattr(key_path[-1], "name", None)) if key_path else None
  return bool(name == "kernel" and hasattr(x, "ndim") and x.ndim >= 2
              and jnp.issubdtype(jnp.result_type(x), jnp.floating))


def _kernels_by_name(params: Any) -> Any:
  reject_step_count(params, "orthax.masks.hidden_matrices()")
  return jax.tree_util.tree_map_with_path(_is_kernel, params)


def hidden_matrices(head: str | Sequence[str] = OUTPUT_HEADS) -> Callable[[Any], Any]:
  """A mask of a transformer's hidden matrices: every `kernel` except the output head's.

  Muon is meant for hidden layers only: Jordan et al. leave the input embedding, the output
  layer, gains and biases to AdamW, and Dion warns that orthogonalising embeddings and the
  language-model head "gives poor performance". This selects every floating leaf named `kernel`
  with two or more axes: Dense, DenseGeneral / LinearGeneral (attention's query, key, value and
  out), Conv, alone or stacked by `nn.scan` / `nnx.scan`. It leaves out token and position
  embeddings (`Embed`'s `embedding`, or any parameter not named `kernel`), biases, including
  attention's (heads, head_dim) ones that the default mask (ndim >= 2) would select, norm scales,
  and the output head, found by `head`.

  Args:
    head: patterns of the output head (as in `orthax.masks.exclude`: a module name on the path,
      or a glob of the `/`-joined path); default `("lm_head", "head")`. Give `()` when the model
      has no separate head (tied embeddings). A head under another name is selected like any
      other kernel: name it here.

  Returns:
    A callable params -> pytree of bools, for the `mask` argument of orthax's transformations
    and of `orthax.muon`; it works on linen `params` dicts and on `nnx.State`.

  Examples:
    >>> import jax.numpy as jnp, orthax
    >>> params = {"embed": {"embedding": jnp.ones((50, 8))},
    ...           "query": {"kernel": jnp.ones((8, 2, 4)), "bias": jnp.ones((2, 4))},
    ...           "lm_head": {"kernel": jnp.ones((8, 50))}}
    >>> mask = orthax.masks.hidden_matrices()(params)
    >>> mask["query"], mask["embed"], mask["lm_head"]
    ({'bias': False, 'kernel': True}, {'embedding': False}, {'kernel': False})

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024

    Ahn et al., `Dion: Distributed Orthonormalized Updates <https://arxiv.org/abs/2504.05295>`_,
    2025
  """
  head = (head,) if isinstance(head, str) else tuple(head)
  if not all(isinstance(p, str) and p for p in head):
    raise ValueError(
        f"hidden_matrices(head=...) must be a pattern or a sequence of non-empty patterns such "
        f"as 'lm_head', or () for no head; got {head!r}.")
  if not head:
    return _kernels_by_name
  return exclude(*head, base=_kernels_by_name)
