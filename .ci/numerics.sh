#!/usr/bin/env bash
# The numerical tests under settings that change how float32 rounds (`make test-numerics`; not in
# CI, it runs them several times). A tolerance tuned to one CPU fails under one of these; one
# derived from an error bound (tests/helpers.py) holds under all. Usage:
#   .ci/numerics.sh [PYTHON] [PYTEST ARGS...]   e.g. .ci/numerics.sh .venv/bin/python -x
# It runs every library test file (those that import neither examples/ nor benchmarks/) in the
# fast tier, the set `make test-floors` runs.
# Prints one line per setting, PASS or FAIL, and exits 1 if any failed.
set -u
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
shift || true
# shellcheck disable=SC2207  # one word per file name
tests=(-m "not examples and not slow and not multidevice"
       $(grep -L -E '^(from|import) (examples|benchmarks)' tests/test_*.py))
# name | environment | command prefix | tests left out. Fast math lets XLA assume no NaN or inf,
# so the tests of non-finite input do not apply there.
settings=(
  "default|||"
  "fast-math|XLA_FLAGS=--xla_cpu_enable_fast_math=true||non_finite or inf_gradient or nan"
  "no-fast-math|XLA_FLAGS=--xla_cpu_enable_fast_math=false||"
  "one-thread|XLA_FLAGS=--xla_cpu_multi_thread_eigen=false|taskset -c 0|"
  "matmul-highest|JAX_DEFAULT_MATMUL_PRECISION=highest||"
)
failed=0
summary=()
for setting in "${settings[@]}"; do
  IFS="|" read -r name environment prefix skip <<< "$setting"
  deselect=()
  [[ -n $skip ]] && deselect=(-k "not ($skip)")
  if [[ -n $prefix ]] && ! command -v "${prefix%% *}" > /dev/null; then
    summary+=("$name: SKIPPED (no ${prefix%% *})")
    continue
  fi
  workers=(-n 2)
  [[ $name == one-thread ]] && workers=(-n 0)
  echo "== $name: ${environment:-(no change)} ${prefix}"
  start=$SECONDS
  # shellcheck disable=SC2086  # $environment and $prefix are words on purpose
  if env $environment $prefix "$python" -m pytest -p no:cacheprovider -q "${workers[@]}" \
      "${deselect[@]}" "${tests[@]}" "$@"; then
    summary+=("$name: PASS ($((SECONDS - start)) s)")
  else
    summary+=("$name: FAIL ($((SECONDS - start)) s)")
    failed=1
  fi
done
printf '%s\n' "${summary[@]}"
exit $failed
