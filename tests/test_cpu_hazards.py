"""The two CPU hazards measured with jaxlib's LAPACK kernels, on a ResNet-50-shaped gradient.

1. Batched eigh/svd calls running at once in one program deadlocked XLA's CPU thread pool.
2. Multi-threaded OpenBLAS under XLA's own threads stalled single updates for 15-45 s.

Each runs in a subprocess with a time limit, so a hang fails the test instead of the CI job.
"""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp, numpy as np
    import orthax
    from benchmarks.common import resnet50_kernel_shapes
    from tests.helpers import assert_orthonormal_columns, condition_number, polar_tol

    rng = np.random.default_rng(0)
    grads = {}
    for i, shape in enumerate(resnet50_kernel_shapes()):
      grads[f"layer{i}"] = {
          "kernel": jnp.asarray(rng.standard_normal(shape), jnp.float32),
          "bias": jnp.ones(shape[-1]), "scale": jnp.ones(shape[-1])}
    for method in sys.argv[1:]:
      tx = orthax.orthogonalise_components(method)
      update = jax.jit(lambda g: tx.update(g, tx.init(g))[0])
      for repeat in range(2):
        start = time.perf_counter()
        out = jax.block_until_ready(update(grads))
        print(method, repeat, round(time.perf_counter() - start, 2), flush=True)
      # A float32 polar factor of the (576, 64) gradient: O^T O = I to twice polar_tol at its
      # condition number, and its square.
      g = np.asarray(grads["layer2"]["kernel"], np.float64).reshape(-1, 64)
      tol = polar_tol(condition_number(g), g.shape[0])
      assert_orthonormal_columns(np.asarray(out["layer2"]["kernel"]).reshape(-1, 64),
                                 2 * tol + tol**2)
      np.testing.assert_array_equal(out["layer2"]["bias"], grads["layer2"]["bias"])
    print("finished")
""")


@pytest.mark.slow
def test_resnet50_gradient_tree_updates_and_finishes():
  env = {k: v for k, v in os.environ.items()
         if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "ORTHAX_LAPACK_THREADS")}
  env["JAX_PLATFORMS"] = "cpu"
  try:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, "auto", "svd"], env=env, capture_output=True, text=True,
        timeout=240, cwd=ROOT)
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"the update did not finish in 240 s: {e.stdout!r}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("finished"), result.stdout


def test_scipy_openblas_runs_on_one_thread_after_a_decomposition():
  """The library jaxlib's LAPACK calls is limited before its first call, not after."""
  pytest.importorskip("threadpoolctl")
  script = textwrap.dedent("""
      import jax.numpy as jnp, orthax, threadpoolctl
      orthax.polar.svd(jnp.ones((4, 3))).block_until_ready()
      for lib in threadpoolctl.threadpool_info():
        if "scipy" in lib["filepath"] and "numpy" not in lib["filepath"]:
          print(lib["num_threads"])
  """)
  env = {k: v for k, v in os.environ.items() if k != "ORTHAX_LAPACK_THREADS"}
  env.update(JAX_PLATFORMS="cpu", OPENBLAS_NUM_THREADS="2")
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.split()
  if not out:
    pytest.skip("SciPy ships no OpenBLAS of its own here")
  assert out == ["1"] * len(out)
