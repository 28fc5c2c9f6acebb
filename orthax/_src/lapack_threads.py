"""CPU LAPACK threading, and running a LAPACK-backed function one matrix at a time on CPU."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax

Array = jax.Array


@functools.cache
def single_thread_cpu_lapack() -> None:
  """Runs the OpenBLAS that jaxlib's CPU LAPACK kernels call (SciPy's) on one thread.

  XLA already runs independent decompositions on its own thread pool; a multi-threaded OpenBLAS
  under it oversubscribes the cores, and its spinning workers stalled whole updates for seconds
  (benchmarks/README.md; tests/test_cpu_hazards.py). orthax calls this once, before its first CPU
  decomposition, so it is on by default; call it yourself to get the same setting for other code
  (e.g. a benchmark's other LAPACK users). Only libraries shipped inside SciPy's wheel are
  changed. The environment variable ORTHAX_LAPACK_THREADS sets another thread count, or `keep`
  to change nothing. Later calls do nothing.
  """
  setting = os.environ.get("ORTHAX_LAPACK_THREADS", "1")
  if setting == "keep":
    return
  try:
    import scipy
    import scipy.linalg.cython_lapack  # noqa: F401  Loads the library jaxlib will call.
    import threadpoolctl
  except ImportError:
    return
  scipy_root = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
  controller = threadpoolctl.ThreadpoolController()
  for lib in controller.select(user_api="blas").lib_controllers:
    path = os.path.abspath(lib.filepath or "")
    if os.path.relpath(path, scipy_root).startswith("scipy"):
      lib.set_num_threads(int(setting))


def map_matrices(fn: Callable, *xs: Array):
  """Applies a LAPACK-backed `fn` to matrix b of each (B, ...) stack in `xs`, for every b; the
  first stack holds finite matrices.

  The caller guarantees finiteness (`polar_conventions.prepare` zeroes a matrix with a non-finite
  entry before any method sees it): LAPACK's SVD never returns on inf or NaN.

  On CPU each matrix is its own LAPACK call, in a `lax.map` loop (none for a stack of one: its
  slicing and writing back would be kernels of their own). A batched call would let jaxlib
  (0.10 and older) split the batch over XLA's CPU thread pool and block a pool thread waiting for
  it; a few such calls running at once in one program exhaust the pool and deadlock (ResNet-50's
  21 shape groups hung: tests/test_cpu_hazards.py). Other backends get the batched call.
  """
  if jax.default_backend() == "cpu":
    single_thread_cpu_lapack()
  return jax.lax.platform_dependent(*xs, cpu=functools.partial(each, fn), default=jax.vmap(fn))


def each(fn: Callable, *xs: Array):
  """`fn` on matrix b of each (B, ...) stack in `xs`, one b at a time, in a `lax.map` loop; no
  loop for a stack of one (its slicing and writing back would be kernels of their own)."""
  if xs[0].shape[0] == 1:
    return jax.tree.map(lambda o: o[None], fn(*(x[0] for x in xs)))
  return jax.lax.map(lambda xs: fn(*xs), xs)
