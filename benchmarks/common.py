"""Timing, shapes and reporting shared by the benchmarks.

Every figure is the median of repeated calls of a jitted function after one warm-up call, with
`jax.block_until_ready`; compile time is measured apart. Ratios are taken between functions timed
in the same process, interleaved, since absolute times on shared machines drift.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def environment() -> dict[str, str]:
  device = jax.devices()[0]
  return {
      "device": f"{device.platform}: {getattr(device, 'device_kind', '')} x{jax.device_count()}",
      "host": f"{platform.processor() or platform.machine()}, {_cores()} cores",
      "jax": jax.__version__,
      "date": datetime.date.today().isoformat(),
  }


def _cores() -> int:
  import os
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def compile_seconds(fn: Callable, *args) -> tuple[Callable, float]:
  """Compiles jit(fn) for args; returns the compiled callable and the seconds it took."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def time_interleaved(fns: dict[str, Callable], args: dict[str, Sequence[Any]],
                     repeats: int) -> dict[str, float]:
  """Median seconds per call of each compiled fn, calls interleaved round-robin."""
  for name, fn in fns.items():
    jax.block_until_ready(fn(*args[name]))  # warm-up
  samples: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args[name]))
      samples[name].append(time.perf_counter() - start)
  return {name: statistics.median(s) for name, s in samples.items()}


def parser(description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--smoke", action="store_true", help="smallest sizes, one repeat (for tests)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", type=pathlib.Path, default=RESULTS)
  return p


def write(name: str, rows: list[dict], out: pathlib.Path, notes: str = "",
          command: str | None = None) -> str:
  """Writes rows as name.json and name.md under out (with the command, if given); returns the
  markdown."""
  env = environment()
  out.mkdir(parents=True, exist_ok=True)
  record = {"environment": env, **({"command": command} if command else {}), "rows": rows}
  (out / f"{name}.json").write_text(json.dumps(record, indent=1))
  columns = list(rows[0]) if rows else []
  lines = [f"| {' | '.join(columns)} |", f"| {' | '.join('---' for _ in columns)} |"]
  for row in rows:
    lines.append("| " + " | ".join(_format(row[c]) for c in columns) + " |")
  text = "\n".join(lines) + f"\n\n{env['device']}; {env['host']}; jax {env['jax']}; {env['date']}\n"
  if command:
    text += f"Command: `{command}`\n"
  if notes:
    text += notes + "\n"
  (out / f"{name}.md").write_text(text)
  return text


def _format(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
  return str(value)


def resnet20_kernel_shapes() -> list[tuple[int, ...]]:
  """He et al.'s CIFAR ResNet-20 (option A): 19 convolutions and the classifier."""
  shapes = [(3, 3, 3, 16)]
  inputs = 16
  for width in (16, 32, 64):
    for _ in range(3):
      shapes += [(3, 3, inputs, width), (3, 3, width, width)]
      inputs = width
  return shapes + [(64, 10)]


def resnet50_kernel_shapes() -> list[tuple[int, ...]]:
  """torchvision's ResNet-50: 53 convolutions and the 1000-way classifier."""
  shapes = [(7, 7, 3, 64)]
  inputs = 64
  for width, blocks in [(64, 3), (128, 4), (256, 6), (512, 3)]:
    for block in range(blocks):
      shapes += [(1, 1, inputs, width), (3, 3, width, width), (1, 1, width, 4 * width)]
      if block == 0:
        shapes.append((1, 1, inputs, 4 * width))
      inputs = 4 * width
  return shapes + [(2048, 1000)]


def transformer_kernel_shapes(width: int, layers: int = 1) -> list[tuple[int, ...]]:
  """One pre-LN transformer block per layer: q, k, v, out projections and a 4x MLP."""
  block = [(width, width)] * 4 + [(width, 4 * width), (4 * width, width)]
  return block * layers


def random_tree(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {f"{i:03d}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
