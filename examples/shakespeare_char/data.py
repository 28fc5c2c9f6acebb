"""Tiny Shakespeare as characters: the vocabulary, nanoGPT's 90 % / 10 % split, and batches.

The text comes from `examples.lib.download.tiny_shakespeare` (a named file, tensorflow-datasets,
the local copy, or the download, in that order). Characters are numbered in sorted order (65 of
them). Training batches are random windows drawn on the device from (seed, step), so every
optimiser of a comparison sees the same batches for the same seed; validation uses fixed,
evenly spaced windows of the last 10 %.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from examples.lib import download


@dataclasses.dataclass(frozen=True)
class Corpus:
  train: np.ndarray  # int32 character ids
  validation: np.ndarray
  chars: str  # id -> character
  source: str

  @property
  def vocab(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(self.chars)}
    return np.array([index[c] for c in text], np.int32)

  def decode(self, ids) -> str:
    return "".join(self.chars[int(i)] for i in ids)


def from_text(text: str, source: str, train_fraction: float = 0.9) -> Corpus:
  chars = "".join(sorted(set(text)))
  ids = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  table = np.zeros(max(map(ord, chars)) + 1, np.int32)
  table[[ord(c) for c in chars]] = np.arange(len(chars))
  ids = table[ids]
  split = int(train_fraction * len(ids))
  return Corpus(ids[:split], ids[split:], chars, source)


def synthetic_text(length: int = 20_000, seed: int = 0) -> str:
  """Random words over a small alphabet (tests: fast, no meaningful loss)."""
  rng = np.random.default_rng(seed)
  words = ["".join(rng.choice(list("abcdefgh"), size=rng.integers(2, 7))) for _ in range(50)]
  text = []
  while sum(map(len, text)) < length:
    text.append(str(rng.choice(words)) + rng.choice([" ", " ", "\n", ", "]))
  return "".join(text)[:length]


def load(path: str | None = None, *, synthetic: bool = False) -> Corpus:
  """The corpus: synthetic text, or Tiny Shakespeare from `path` or the loader's sources."""
  if synthetic:
    return from_text(synthetic_text(), "synthetic")
  text = download.tiny_shakespeare(path)
  return from_text(text, f"Tiny Shakespeare ({len(text):,} characters)")


def random_windows(ids: jax.Array, key: jax.Array, batch_size: int, context: int):
  """(inputs, targets), each (batch_size, context): windows starting at random positions."""
  starts = jax.random.randint(key, (batch_size,), 0, ids.shape[0] - context)
  windows = jax.vmap(lambda s: jax.lax.dynamic_slice(ids, (s,), (context + 1,)))(starts)
  return windows[:, :-1], windows[:, 1:]


def fixed_windows(ids: np.ndarray, count: int, context: int) -> tuple[np.ndarray, np.ndarray]:
  """`count` evenly spaced (inputs, targets) windows covering `ids` (fewer if it is short)."""
  starts = np.unique(np.linspace(0, len(ids) - context - 1, count).astype(np.int64))
  windows = ids[starts[:, None] + np.arange(context + 1)]
  return windows[:, :-1], windows[:, 1:]
