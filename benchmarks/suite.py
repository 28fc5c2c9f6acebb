"""Every benchmark in one process, for a machine with an accelerator (or `--smoke` anywhere).

    python -m benchmarks.suite                    # writes results/<platform>/*.md and *.json
    python -m benchmarks.suite --smoke --out DIR  # smallest sizes (the test runs this)

Runs Q1 with the width-4096 transformer shapes, Q2, Q3 with ResNet-50 at batch 256, Q4, `eigh`'s
per-matrix fallback, the Gram vs plain matrix-product methods and Q5
(Q5 on the local devices: with one device there is nothing to split over, so it is skipped), and
prints each part's wall time. Sized to finish in minutes on one H100/H200-class GPU.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax

from benchmarks import (
    common,
    compile_time,
    distributed,
    eigh_fallback,
    gram_iterations,
    matrix_methods,
    train_step,
    tree_update,
)

PARTS = [
    (matrix_methods, ["--large"]),
    (tree_update, []),
    (train_step, ["--models", "basic_cnn,resnet20,resnet50"]),
    (compile_time, []),
    (eigh_fallback, []),
    (gram_iterations, []),
    (distributed, []),
]


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", type=pathlib.Path, default=None,
                 help="default: benchmarks/results/<platform>")
  args = p.parse_args(argv)
  out = args.out or common.RESULTS / jax.default_backend()
  walls = {}
  for module, flags in PARTS:
    name = module.__name__.rsplit(".", 1)[1]
    if module is distributed and jax.device_count() == 1 and not args.smoke:
      print(f"{name}: skipped (one device; on CPU run `python -m benchmarks.distributed` alone)")
      continue
    part_argv = ["--out", str(out), "--repeats", str(args.repeats)]
    part_argv += ["--smoke"] if args.smoke else flags
    start = time.perf_counter()
    module.main(part_argv)
    walls[name] = time.perf_counter() - start
    print(f"{name}: {walls[name]:.0f} s", flush=True)
  print("suite wall time:", ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()),
        f"total {sum(walls.values()):.0f} s")


if __name__ == "__main__":
  main()
