"""Tests of the character-level GPT example: data, model, optimisers by name, training, main.

A tiny GPT (1 layer, width 16, 2 heads, context 16) on the synthetic corpus keeps each compile
to seconds on a 2-core CPU; the loader test reads the local Tiny Shakespeare copy when present.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from optax.contrib import MuonDimensionNumbers

from examples.lib import compare as compare_lib
from examples.lib import config as config_lib
from examples.lib import download, optimizers
from examples.shakespeare_char import configs, data, main, train
from examples.shakespeare_char.model import GPT, logits_and_max_attention_logits
from tests.helpers import (
  assert_orthonormal_columns,
  condition_number,
  eps,
  muon_matrices,
  polar_tol,
  round_off,
  two_muons_tol,
)

pytestmark = pytest.mark.examples

LOCAL_TEXT = download.LOCAL_COPIES / "tinyshakespeare" / "input.txt"
TINY = configs.Config(
    optimizers=("adamw", "orthax-muon@layout=heads@lr=0.02"), seeds=(0, 1), steps=6,
    warmup_steps=2, batch_size=4, context=16, layers=1, heads=2, width=16, eval_every=3,
    eval_windows=8, synthetic=True, sample_chars=20)


@pytest.fixture(scope="module")
def corpus():
  return data.load(synthetic=True)


# --- data ----------------------------------------------------------------------------------------


def test_vocabulary_split_and_round_trip():
  corpus = data.from_text("hello world\n" * 10, "test")
  assert corpus.chars == "\n dehlorw"
  assert len(corpus.train) == 108 and len(corpus.validation) == 12  # nanoGPT's 90 % / 10 %
  assert corpus.decode(corpus.encode("hold or\n")) == "hold or\n"
  np.testing.assert_array_equal(np.concatenate([corpus.train, corpus.validation]),
                                corpus.encode("hello world\n" * 10))


@pytest.mark.skipif(not LOCAL_TEXT.is_file(), reason="no local Tiny Shakespeare copy")
def test_loader_reads_the_local_copy():
  corpus = data.load(str(LOCAL_TEXT))
  assert corpus.vocab == 65
  assert len(corpus.train) + len(corpus.validation) == 1_115_394
  assert len(corpus.train) == 1_003_854
  assert corpus.decode(corpus.train[:14]) == "First Citizen:"


def test_windows_are_consecutive_characters(corpus):
  ids = jnp.asarray(corpus.train)
  inputs, targets = data.random_windows(ids, jax.random.key(3), 5, 16)
  assert inputs.shape == targets.shape == (5, 16)
  np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
  text = "".join(corpus.chars[i] for i in corpus.train)
  for row, target in zip(np.asarray(inputs), np.asarray(targets), strict=True):
    window = corpus.decode(row) + corpus.decode(target[-1:])
    assert window in text
  val_inputs, val_targets = data.fixed_windows(corpus.validation, 8, 16)
  assert val_inputs.shape == (8, 16)
  np.testing.assert_array_equal(val_inputs[:, 1:], val_targets[:, :-1])


# --- model and optimisers ------------------------------------------------------------------------


def logits_tol(largest: float, layers: int, width: int) -> float:
  """Bound on float32's round-off in every entry of a GPT's logits, `largest` the largest logit's
  magnitude: each is the end of a chain of 2 + 6 layers products (the embeddings, per block the
  projections, the scores, their weighted sum, out, fc, proj, then the head) of length at most
  4 width, each rounding round_off(4 width) of what it sums, at first order; those sums are taken
  as `largest` times a stated margin of 10 (LayerNorm keeps each block's inputs at unit scale)."""
  return 10 * (2 + 6 * layers) * round_off(4 * width) * largest


def test_model_is_causal_and_keeps_a_heads_axis():
  model = GPT(11, context=8, layers=2, heads=2, width=16, rngs=nnx.Rngs(0))
  state = nnx.to_pure_dict(nnx.split(model)[1])
  assert state["blocks"][0]["attention"]["query"]["kernel"].shape == (16, 2, 8)
  assert state["blocks"][0]["attention"]["out"]["kernel"].shape == (2, 8, 16)
  tokens = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8]])
  changed = tokens.at[0, 5].set(9)
  logits = nnx.jit(lambda m, t: m(t))(model, jnp.concatenate([tokens, changed]))
  assert logits.shape == (2, 8, 11)
  np.testing.assert_array_equal(logits[0, :5], logits[1, :5])  # no look-ahead
  # Positions 5-7 see the changed token: each moves by more than 10 times what round-off could.
  moved = np.abs(logits[0, 5:] - logits[1, 5:]).max(axis=-1)
  assert (moved > 10 * logits_tol(float(np.abs(logits).max()), layers=2, width=16)).all(), moved
  with pytest.raises(ValueError, match="context"):
    model(jnp.zeros((1, 9), jnp.int32))


def gpt_params():
  return nnx.to_pure_dict(nnx.split(GPT(11, context=8, layers=2, heads=2, width=16,
                                        rngs=nnx.Rngs(0)))[1])


def test_hidden_mask_leaves_embeddings_head_and_norms_out():
  mask = optimizers.MASKS["hidden"](gpt_params())
  assert mask["blocks"][1]["attention"]["key"]["kernel"] and mask["blocks"][0]["fc"]["kernel"]
  assert not mask["lm_head"]["kernel"] and not mask["token_embed"]["embedding"]
  assert not mask["blocks"][0]["mlp_norm"]["scale"]
  assert sum(jax.tree.leaves(mask)) == 12  # 6 matrices per block


def test_muon_by_name_matches_orthax_muon_with_newton_schulz_whole():
  """optax.contrib.muon with the example's dimension numbers and orthax's Muon-order alias with
  Newton-Schulz on whole projections are the same optimiser: same updates over three steps,
  each of Muon's matrices to the bound on two float32 Muon updates in the spectral norm
  (`helpers.two_muons_tol`, as tests/test_muon.py), AdamW's leaves bit for bit (the same
  elementwise operations)."""
  params = gpt_params()
  options = dict(learning_rate=0.02, momentum=0.9, weight_decay=0.1, mask="hidden", b2=0.99,
                 muon_beta=0.95)
  specs = jax.tree.leaves(optimizers.muon_dimension_numbers("hidden")(params),
                         is_leaf=lambda v: v is None or isinstance(v, MuonDimensionNumbers))
  reference = optimizers.make_optimizer("muon", **options)
  ours = optimizers.make_optimizer("orthax-muon", method="newton_schulz", layout="whole",
                                   **options)
  states = [reference.init(params), ours.init(params)]
  updates = [jax.jit(reference.update), jax.jit(ours.update)]
  for step in range(3):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(step), len(leaves))
    grads = treedef.unflatten(
        [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)])
    (u1, states[0]), (u2, states[1]) = (
        update(grads, s, params) for update, s in zip(updates, states, strict=True))
    flat = jax.tree_util.tree_flatten_with_path(u1)[0]
    for (path, a), b, spec, x in zip(
        flat, jax.tree.leaves(u2), specs, jax.tree.leaves(params), strict=True):
      where = f"step {step}: {jax.tree_util.keystr(path)}"
      if spec is None:
        np.testing.assert_array_equal(a, b, err_msg=where)
        continue
      tol = two_muons_tol(step, options["learning_rate"], options["weight_decay"],
                          muon_matrices(x, spec))
      for am, bm in zip(muon_matrices(a, spec), muon_matrices(b, spec), strict=True):
        assert np.linalg.norm(am - bm, 2) <= tol, (where, np.linalg.norm(am - bm, 2), tol)
    params = optax.apply_updates(params, u1)


def test_whole_heads_and_components_layouts_differ_on_attention_only():
  params = gpt_params()
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), params)
  updates = {}
  for layout in ("whole", "heads", "components"):
    tx = optimizers.make_direction("orthogonal-adamw", method="svd", mask="hidden", layout=layout)
    updates[layout] = jax.jit(tx.update)(grads, tx.init(params), params)[0]
  # Two float32 polar factors of the same fc gradient: twice polar_tol apart at most; each
  # polar factor's O^T O = I to twice polar_tol and its square, at its own condition number.
  g_fc = np.asarray(grads["blocks"][0]["fc"]["kernel"], np.float64)
  fc = [u["blocks"][0]["fc"]["kernel"] for u in updates.values()]
  np.testing.assert_allclose(fc[0], fc[1], rtol=0,
                             atol=2 * polar_tol(condition_number(g_fc), max(g_fc.shape)))
  g_query = np.asarray(grads["blocks"][0]["attention"]["query"]["kernel"], np.float64)
  query = updates["heads"]["blocks"][0]["attention"]["query"]["kernel"]  # (16, 2, 8)
  head_tols = [polar_tol(condition_number(g_query[:, head]), 16) for head in range(2)]
  for head, tol in enumerate(head_tols):  # each head's (16, 8) block is semi-orthogonal
    assert_orthonormal_columns(query[:, head], 2 * tol + tol**2)
  whole = updates["whole"]["blocks"][0]["attention"]["query"]["kernel"].reshape(16, 16)
  whole_tol = polar_tol(condition_number(g_query.reshape(16, 16)), 16)
  assert_orthonormal_columns(whole, 2 * whole_tol + whole_tol**2)
  # The two layouts' factors differ by more than 100 times what their float32 errors (polar_tol
  # each, in every entry) could make of equal exact factors.
  difference = np.abs(np.asarray(query, np.float64).reshape(16, 16) - whole).max()
  assert difference > 100 * (max(head_tols) + whole_tol), difference


def test_bad_settings_are_refused_before_training():
  with pytest.raises(ValueError, match="optax.contrib.muon views each matrix whole"):
    train.check(dataclasses.replace(TINY, optimizers=("muon@layout=heads",)))
  with pytest.raises(ValueError, match="Unknown layout"):
    train.check(dataclasses.replace(TINY, optimizers=("adamw@layout=rows",)))
  with pytest.raises(ValueError, match="warmup_steps"):
    train.check(dataclasses.replace(TINY, warmup_steps=6))


# --- training and comparison ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, corpus):
  workdir = tmp_path_factory.mktemp("lm")
  config = dataclasses.replace(TINY, workdir=str(workdir))
  return workdir, main.compare(config, corpus, time_steps=2)


def test_compare_trains_every_optimizer_and_seed_on_the_same_batches(comparison):
  workdir, summary = comparison
  results = summary["results"]
  assert list(results) == list(TINY.optimizers)
  for runs in results.values():
    assert [r["eval_steps"] for r in runs] == [[0, 3, 6]] * 2
    assert all(np.isfinite(r["val_loss"]).all() for r in runs)
    assert runs[0]["val_loss"][-1] < runs[0]["val_loss"][0]  # it learns
    assert runs[0]["val_loss"][0] != runs[1]["val_loss"][0]  # seeds differ
  # The training loss (means over steps 1-3 and 4-6, the same batches for every optimiser) falls
  # for Muon: 2.377 -> 2.319 and 2.388 -> 2.353 for the two seeds here; at lr=0 these batches'
  # losses rise (2.386 -> 2.402, 2.397 -> 2.399). AdamW's lr (1e-3, warmed up over 2 of 6 steps)
  # moves it by less than the batches differ: its validation loss (fixed windows) is checked above.
  assert all(r["train_loss"][-1] < r["train_loss"][1] for r in results[TINY.optimizers[1]])
  # Same seed, same initialisation: the step-0 losses agree across optimisers.
  assert results["adamw"][0]["val_loss"][0] == results[TINY.optimizers[1]][0]["val_loss"][0]
  assert (workdir / "curves.png").stat().st_size > 0
  assert json.loads((workdir / "results.json").read_text())["sample"]["text"]
  assert len(summary["sample"]["text"]) == 20
  assert set(summary["step_ms"]) == set(TINY.optimizers)


def test_a_finished_run_is_read_back_not_retrained(comparison, corpus, monkeypatch):
  workdir, summary = comparison

  def refuse(*args, **kwargs):
    raise AssertionError("trained again")

  monkeypatch.setattr(train, "Run", refuse)
  config = dataclasses.replace(TINY, workdir=str(workdir), sample_chars=0)
  again = main.run_all(config, corpus, workdir)
  assert again == summary["results"]
  with pytest.raises(AssertionError, match="trained again"):  # other settings: a new run
    main.run_all(dataclasses.replace(config, steps=7), corpus, workdir)


def test_one_step_lowers_the_loss_on_its_batch(corpus):
  config = compare_lib.run_config(TINY, "adamw@lr=0.01", 0)
  run = train.Run(dataclasses.replace(config, warmup_steps=0), corpus, 0)
  inputs, targets = data.random_windows(run.ids, jax.random.fold_in(run.key, 0), 4, 16)
  before = train.eval_loss(run.params, inputs, targets, graphdef=run.graphdef)
  # Two float32 evaluations of the same loss: each within twice its logits' round-off of the
  # exact one (log-sum-exp and the target's logit are 1-Lipschitz in the max norm), plus the
  # mean over the tokens' rounding. The logits are at most sqrt(width) max_c ||gamma W[:, c]||
  # (the final LayerNorm has no bias: its output's norm is at most sqrt(width) times its scale
  # gamma; the head W has none either), read before the step donates the params.
  gamma = np.asarray(run.params["final_norm"]["scale"], np.float64)
  head = np.asarray(run.params["lm_head"]["kernel"], np.float64)
  largest = np.sqrt(16) * np.linalg.norm(gamma[:, None] * head, axis=0).max()
  tol = 2 * (2 * logits_tol(largest, layers=1, width=16) + round_off(inputs.size) * float(before))
  assert float(run.step()) == pytest.approx(float(before), rel=0, abs=tol)
  assert train.eval_loss(run.params, inputs, targets, graphdef=run.graphdef) < before


def test_steps_to_interpolates_between_evaluations():
  history = {"eval_steps": [0, 100, 200], "val_loss": [4.0, 3.0, 2.0]}
  # float64 arithmetic on numbers exact in binary: a few roundings of eps(float64) at most.
  assert main.steps_to(history, 2.5) == pytest.approx(150.0, rel=4 * eps(np.float64))
  assert main.steps_to(history, 3.0) == pytest.approx(100.0, rel=4 * eps(np.float64))
  assert main.steps_to(history, 1.9) is None


def test_sweep_table_picks_the_lowest_final_loss_and_counts_divergence_as_worst():
  def runs(final):
    return [{"eval_steps": [0, 6], "val_loss": [4.0, final]}]

  results = {"adamw@lr=0.001": runs(2.0), "adamw@lr=0.002": runs(1.9),
             "adamw@lr=0.004": runs(float("nan")), "muon@lr=0.02": runs(1.7)}
  table, best = main.sweep_table(TINY, results)
  assert best == {"adamw": 0.002, "muon": 0.02}
  assert "**0.002: 1.900**" in table


def test_presets():
  sweep = configs.sweep()
  assert len(sweep.optimizers) == sum(len(r) for r in configs.SETTINGS.values())
  assert sweep.steps == configs.SWEEP_STEPS and sweep.warmup_steps == configs.SWEEP_STEPS // 20
  finals = configs.finals({"muon": 0.02, "adamw": 0.002})
  assert finals.optimizers == ("adamw@lr=0.002", "muon@lr=0.02")
  assert finals.seeds == (0, 1, 2) and finals.steps == 2000
  for label in sweep.optimizers:  # every label of the sweep is a valid run
    train.check(dataclasses.replace(sweep, optimizers=(label,)))


def test_command_line(tmp_path, capsys):
  code = main.main(["--synthetic", "--optimizers", "adamw", "--steps", "4", "--warmup-steps",
                       "1", "--batch-size", "2", "--context", "8", "--layers", "1", "--width",
                       "8", "--heads", "2", "--eval-every", "2", "--eval-windows", "4",
                       "--time-steps", "0", "--sample-chars", "5", "--workdir", str(tmp_path)])
  assert code == 0
  out = capsys.readouterr().out
  assert "| adamw | 0.001 |" in out and "sample from adamw" in out
  with pytest.raises(SystemExit) as exit_:
    main.main(["--config", "finals"])  # needs --best-lrs
  assert exit_.value.code == 2 and "--best-lrs" in capsys.readouterr().err
  best = tmp_path / "best_lrs.json"
  best.write_text(json.dumps({"adamw": 0.002}))
  _, _, (finals,) = config_lib.command_line(
      configs.Config, configs.CONFIGS, ["--config", "finals", "--best-lrs", str(best),
                                        "--steps", "10"], None, extra_flags=main.add_flags)
  assert finals.optimizers == ("adamw@lr=0.002",) and finals.steps == 10
  code = main.main(["--synthetic", "--optimizers", "adamw,muon", "--time-only",
                       "--time-steps", "1", "--context", "8", "--layers", "1", "--width", "8",
                       "--heads", "2"])
  assert code == 0
  out = capsys.readouterr().out
  assert "| adamw |" in out and "| muon |" in out and "1.00x" in out and "GFLOP/s" in out


def test_runs_of_one_setting_share_one_compiled_step(corpus):
  """The compile cache belongs to the comparison (no module state): two seeds of a setting
  compile once, into the cache they were given."""
  config = compare_lib.run_config(TINY, "adamw", 0)
  cache = train.StepCache()
  first, second = train.Run(config, corpus, 0, cache), train.Run(config, corpus, 1, cache)
  assert first.compiled_step is second.compiled_step and len(cache.entries) == 1


# --- the fair comparison (issue 22): the muons' AdamW rate, the presets, QK-clip -----------------


def first_step(label: str, corpus):
  """(params before, params after, gradient) of the first step of `label` on TINY without
  warm-up or weight decay (so that the step is the rate times Adam's or Muon's direction)."""
  config = compare_lib.run_config(
      dataclasses.replace(TINY, warmup_steps=0, weight_decay=0.0, clip=0.0), label, 0)
  run = train.Run(config, corpus, 0)
  before = jax.tree.map(np.array, run.params)  # the step donates its params
  inputs, targets = data.random_windows(run.ids, jax.random.fold_in(run.key, 0), 4, 16)
  grads = jax.grad(train.loss_fn)(run.params, run.graphdef, inputs, targets)
  run.step()
  return before, jax.tree.map(np.array, run.params), jax.tree.map(np.array, grads)


ADAM_PART = (("token_embed", "embedding"), ("position_embed", "embedding"),
             ("lm_head", "kernel"))


@pytest.mark.parametrize("name", ["muon", "orthax-muon", "speedrun-muon"])
def test_adam_lr_is_the_rate_of_the_muons_adamw_part(corpus, name):
  """With adam_lr = a, the first step moves each AdamW leaf (embeddings, lm_head) by Nesterov
  Adam's first step, -a (1 + b1 / (1 + b1)) sign(g) where |g| >> Adam's eps (0 where g = 0);
  the hidden matrices move as without adam_lr (by the muon rate lr)."""
  lr, b1 = 0.02, TINY.momentum
  steps = {adam_lr: first_step(f"{name}@lr={lr}" + (f"@adam_lr={adam_lr}" if adam_lr else ""),
                               corpus) for adam_lr in (None, 0.003, 0.0005)}
  for adam_lr, (before, after, grads) in steps.items():
    rate = lr if adam_lr is None else adam_lr
    for module, leaf in ADAM_PART:
      x0, x1, g = before[module][leaf], after[module][leaf], grads[module][leaf]
      step = x1 - x0
      # x1 - x0's round-off; Adam's epsilon (at most 1e-8 in the three) moves g / (|g| + eps)
      # from sign(g) by eps / |g| <= 1e-5 of the step where |g| > 1e-3, and the step's float32
      # operations (moments, bias corrections, the Nesterov sum, root, division, rate) round it
      # by eps / 2 each, 8 eps in all.
      large, zero = np.abs(g) > 1e-3, g == 0
      slack = (2 * eps() * np.abs(x0).max()
               + rate * (1 + b1 / (1 + b1)) * (1e-8 / 1e-3 + 8 * eps()))
      assert large.sum() > 10
      np.testing.assert_allclose(step[large], -rate * (1 + b1 / (1 + b1)) * np.sign(g[large]),
                                 atol=slack, rtol=0, err_msg=f"{name} adam_lr={adam_lr} {module}")
      np.testing.assert_allclose(step[zero], 0, atol=slack)
  # The hidden matrices' step does not depend on adam_lr: same inputs, same operations (only
  # XLA's fusion of the two programs may differ, a few round-offs of the update of size ~lr).
  hidden = [("blocks", 0, "attention", "query", "kernel"), ("blocks", 0, "fc", "kernel")]
  for path in hidden:
    deltas = []
    for before, after, _ in steps.values():
      a, b = before, after
      for key in path:
        a, b = a[key], b[key]
      deltas.append(b - a)
    assert np.abs(deltas[0]).max() > lr / 100  # it moved
    for delta in deltas[1:]:
      np.testing.assert_allclose(delta, deltas[0], atol=lr * 16 * round_off(4 * TINY.width))


def test_adam_schedule_is_the_learning_rate_schedule_scaled():
  config = dataclasses.replace(TINY, steps=50, warmup_steps=5, learning_rate=0.02)
  main_schedule, adam_schedule = train.make_schedule(config), train.make_schedule(config, 0.003)
  for step in (0, 2, 5, 20, 49, 50):
    assert float(adam_schedule(step)) == pytest.approx(0.003 / 0.02 * float(main_schedule(step)),
                                                       rel=4 * eps(), abs=1e-12)
  assert float(adam_schedule(5)) == pytest.approx(0.003, rel=4 * eps())
  assert float(adam_schedule(50)) == pytest.approx(0.0003, rel=4 * eps())


def test_adam_lr_and_normuon_are_refused_where_they_do_nothing():
  with pytest.raises(ValueError, match="adam_lr is the rate of a muon's AdamW part"):
    train.check(dataclasses.replace(TINY, optimizers=("adamw@adam_lr=0.001",)))
  with pytest.raises(ValueError, match="normuon_beta2 is orthax-muon's option"):
    train.check(dataclasses.replace(TINY, optimizers=("muon@normuon_beta2=0.95",)))
  with pytest.raises(ValueError, match="qk_clip must be a threshold > 0"):
    train.check(dataclasses.replace(TINY, optimizers=("muon@qk_clip=0",)))


def test_fair_presets():
  sweep = configs.fair_sweep()
  assert sweep.steps == configs.SWEEP_STEPS and sweep.seeds == (0,)
  assert sweep.warmup_steps == configs.SWEEP_STEPS // 20
  settings = {main.setting_of(label) for label in sweep.optimizers}
  assert settings == {*configs.FAIR_ADAMS, *configs.FAIR_MUONS} and len(settings) == 7
  assert len(sweep.optimizers) == 3 * 3 + 4 * 2 * 3
  rates = [main.rates_of(sweep, label) for label in sweep.optimizers]
  assert {(r["lr"], r.get("adam_lr")) for r, label in zip(rates, sweep.optimizers, strict=True)
          if main.setting_of(label) == "speedrun-muon"} == {
              (lr, a) for lr in (0.02, 0.04) for a in (1e-3, 3e-3, 8e-3)}
  assert {r["lr"] for r, label in zip(rates, sweep.optimizers, strict=True)
          if main.setting_of(label) == "adamw"} == {4e-3, 8e-3, 1.6e-2}
  assert all("adam_lr" not in r for r, label in zip(rates, sweep.optimizers, strict=True)
             if main.setting_of(label) in configs.FAIR_ADAMS)
  for label in sweep.optimizers:  # every label is a valid run
    train.check(dataclasses.replace(sweep, optimizers=(label,)))
  normuon = compare_lib.run_config(sweep, sweep.optimizers[-1], 0)
  assert normuon.normuon_beta2 == 0.95 and normuon.adam_lr == 8e-3 and normuon.learning_rate == 0.04


def test_fair_finals_read_the_sweeps_best_pair(tmp_path, capsys):
  def runs(final):
    return [{"eval_steps": [0, 400], "val_loss": [4.0, final]}]

  sweep = configs.fair_sweep()
  results = {label: runs(2.0 + 0.001 * i) for i, label in enumerate(sweep.optimizers)}
  results["muon@lr=0.04@adam_lr=0.003"] = runs(1.5)
  table, best = main.sweep_table(sweep, results)
  assert best["muon"] == {"lr": 0.04, "adam_lr": 0.003}
  assert best["adamw"] == 0.004 and best["speedrun-muon"] == {"lr": 0.02, "adam_lr": 0.001}
  assert "**lr 0.04, adam_lr 0.003: 1.500**" in table
  path = tmp_path / "best_lrs.json"
  path.write_text(json.dumps(best))
  _, _, (finals,) = config_lib.command_line(
      configs.Config, configs.CONFIGS, ["--config", "fair_finals", "--best-lrs", str(path)], None,
      extra_flags=main.add_flags)
  assert finals.seeds == (0, 1, 2) and finals.steps == 2000 and len(finals.optimizers) == 7
  assert finals.optimizers[0] == "adamw@lr=0.004"
  assert "muon@lr=0.04@adam_lr=0.003" in finals.optimizers
  del best["speedrun-muon"]
  path.write_text(json.dumps(best))
  with pytest.raises(SystemExit):
    main.main(["--config", "fair_finals", "--best-lrs", str(path)])
  assert "speedrun-muon" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_qk_clip_in_the_example_brings_the_clipped_heads_logit_down_to_tau(corpus, name):
  """A case built to clip: the query and key kernels scaled up 100x (head 1's query 400x), tau
  between the two heads' largest logits on the step's batch, the rate 0 (so only QK-clip moves
  the weights). After the step the same batch gives the clipped head a largest logit of tau
  (logits are bilinear in the two kernels, each scaled by sqrt(tau / S)), and the other head's is
  unchanged; without the clip both are as before."""
  base = compare_lib.run_config(
      dataclasses.replace(TINY, warmup_steps=0, weight_decay=0.0), f"{name}@lr=0", 0)
  params = train.Run(base, corpus, 0).params
  for projection, scale in (("query", jnp.array([100.0, 400.0])[:, None]), ("key", 100.0)):
    kernel = params["blocks"][0]["attention"][projection]["kernel"]  # (width, heads, head_dim)
    params["blocks"][0]["attention"][projection]["kernel"] = scale * kernel
  params = jax.tree.map(np.array, params)
  run = train.Run(base, corpus, 0)
  inputs, _ = data.random_windows(run.ids, jax.random.fold_in(run.key, 0), 4, 16)

  def max_logits(params):
    model = nnx.merge(run.graphdef, params)
    return np.asarray(logits_and_max_attention_logits(model, inputs)[1]["blocks/0/attention"])

  before = max_logits(params)
  low, high = sorted(range(2), key=lambda h: before[h])
  assert before[high] > 2 * before[low] > 0, before  # room for a tau between them
  tau = float(np.sqrt(before[low] * before[high]))
  # Round-off of the measured logits (products of width and head_dim terms, twice: before and
  # after), with a margin of 8 for the cancellation in a dot product of random vectors.
  tol = 8 * 2 * (round_off(TINY.width) + round_off(TINY.width // TINY.heads))
  for clip in (None, tau):
    run = train.Run(dataclasses.replace(base, qk_clip=clip), corpus, 0)
    run.params = jax.tree.map(jnp.asarray, params)
    run.step()
    if clip is not None:
      assert float(run.max_logit) == pytest.approx(before.max(), rel=tol)  # recorded
    after = max_logits(jax.tree.map(np.array, run.params))
    np.testing.assert_allclose(after[low], before[low], rtol=tol)
    expected = before[high] if clip is None else tau
    np.testing.assert_allclose(after[high], expected, rtol=tol)


def test_wallclock_table_reads_each_curve_at_muons_time():
  """Muon: 100 ms a step, 2,000 steps = 200 s. A 2x slower optimiser runs 1,000 steps in that
  time (its loss there, read off its curve); a 2x faster one would run 4,000 (only an upper
  bound, its 2,000-step loss); the time to Muon's final loss is steps_to x step time / 200 s."""
  config = dataclasses.replace(TINY, steps=2000)

  def runs(losses):
    return [{"eval_steps": [0, 1000, 2000], "val_loss": losses}]

  results = {"muon@lr=0.04": runs([4.0, 2.0, 1.6]), "slow@lr=1": runs([4.0, 1.6, 1.4]),
             "fast@lr=1": runs([4.0, 2.2, 1.8])}
  table = main.wallclock_table(config, results, {"muon@lr=0.04": 100.0, "slow@lr=1": 200.0,
                                                 "fast@lr=1": 50.0})
  rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table.splitlines()
          if line.startswith("| ") and "---" not in line}
  assert rows["muon"][1:5] == ["100", "1.00x", "2000", "1.600"] and rows["muon"][5] == "1.00x |"
  # slow: 1,000 steps in 200 s, loss 1.6 there; reaches 1.6 at step 1,000 = 200 s: 1.00x.
  assert rows["slow"][1:5] == ["200", "2.00x", "1000", "1.600"] and rows["slow"][5] == "1.00x |"
  # fast: 4,000 steps in 200 s, only 2,000 run; never reaches 1.6.
  assert rows["fast"][3:5] == ["2000+", "< 1.800 (a)"] and rows["fast"][5] == "- |"
  assert "not reached in 2000 steps" in table
  assert main.loss_at_step(results["slow@lr=1"][0], 1500) == pytest.approx(
      1.5, rel=4 * eps(np.float64))  # np.interp in float64
