"""Optimizers and schedules from config, checked against formulas and optax itself."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl.config import base_config
from jaxdl.errors import ConfigError
from jaxdl.train.optim import make_optimizer, make_schedule


def _opt_config(**overrides):
  cfg = base_config().optimizer
  cfg.update(overrides)
  return cfg


def test_constant_schedule_with_warmup():
  schedule = make_schedule(_opt_config(learning_rate=0.1, warmup_steps=10), total_steps=100)
  np.testing.assert_allclose([schedule(s) for s in (0, 5, 10, 50, 99)],
                             [0.0, 0.05, 0.1, 0.1, 0.1], rtol=1e-6)


def test_cosine_schedule_matches_formula():
  peak, end, warmup, total = 0.1, 0.01, 10, 110
  schedule = make_schedule(_opt_config(schedule="cosine", learning_rate=peak, warmup_steps=warmup,
                                       end_learning_rate=end), total_steps=total)
  for step in (0, 4, 10, 35, 60, 109, 110, 200):
    if step < warmup:
      expected = peak * step / warmup
    else:
      progress = min(step - warmup, total - warmup) / (total - warmup)
      expected = end + (peak - end) * 0.5 * (1 + np.cos(np.pi * progress))
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), step


def test_cosine_decay_steps_decouple_schedule_from_run_length():
  cfg = _opt_config(schedule="cosine", learning_rate=1.0, decay_steps=100)
  assert float(make_schedule(cfg, total_steps=10)(50)) == pytest.approx(0.5, rel=1e-5)


def _one_update(tx, grads, params):
  updates, _ = tx.update(grads, tx.init(params), params)
  return optax.apply_updates(params, updates)


@pytest.mark.parametrize("name, overrides, reference", [
    ("adam", {}, lambda: optax.adam(1e-3)),
    ("adamw", {"weight_decay": 0.1, "weight_decay_mask": "all"},
     lambda: optax.adamw(1e-3, weight_decay=0.1)),
    ("sgd", {"momentum": 0.9, "nesterov": True},
     lambda: optax.sgd(1e-3, momentum=0.9, nesterov=True)),
    ("sgd", {}, lambda: optax.sgd(1e-3)),
])
def test_optimizers_equal_optax(name, overrides, reference):
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
  tx, _ = make_optimizer(_opt_config(name=name, learning_rate=1e-3, **overrides), total_steps=10)
  ours, theirs = params, params
  tx_ref = reference()
  state, state_ref = tx.init(params), tx_ref.init(params)
  for _ in range(3):  # Several steps, so momentum and Adam's moments matter.
    updates, state = tx.update(grads, state, ours)
    ours = optax.apply_updates(ours, updates)
    updates, state_ref = tx_ref.update(grads, state_ref, theirs)
    theirs = optax.apply_updates(theirs, updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)


def test_sgd_weight_decay_adds_to_gradient():
  params = {"w": jnp.array([2.0])}
  tx, _ = make_optimizer(_opt_config(name="sgd", learning_rate=0.5, weight_decay=0.1,
                                     weight_decay_mask="all"), 10)
  new = _one_update(tx, {"w": jnp.array([1.0])}, params)
  assert float(new["w"][0]) == pytest.approx(2.0 - 0.5 * (1.0 + 0.1 * 2.0))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_skips_biases_and_norms_by_default(name):
  """The default mask decays matrices (kernels, embeddings) only, as GPT-2 and BERT do."""
  params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  tx, _ = make_optimizer(_opt_config(name=name, learning_rate=0.5, weight_decay=0.1), 10)
  new = _one_update(tx, zero_grads, params)
  np.testing.assert_allclose(new["bias"], 2.0)  # No gradient, no decay: unchanged.
  np.testing.assert_allclose(new["kernel"], 2.0 - 0.5 * 0.1 * 2.0, rtol=1e-6)


def test_gradient_clipping_by_global_norm():
  params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
  grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}  # Global norm 5.
  tx, _ = make_optimizer(_opt_config(name="sgd", learning_rate=1.0, grad_clip_norm=1.0), 10)
  new = _one_update(tx, grads, params)
  np.testing.assert_allclose(new["a"], [-0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(new["b"], [-0.8], rtol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"name": "adamm"}, "Unknown optimizer.name 'adamm'"),
    ({"schedule": "linear"}, "Unknown optimizer.schedule"),
    ({"schedule": "cosine", "warmup_steps": 20}, "must exceed optimizer.warmup_steps"),
    ({"name": "adam", "nesterov": True}, "applies to sgd only"),
    ({"name": "adamw", "weight_decay_mask": "biases"}, "Unknown optimizer.weight_decay_mask"),
])
def test_bad_optimizer_config(overrides, message):
  with pytest.raises(ConfigError, match=message):
    make_optimizer(_opt_config(**overrides), total_steps=10)


def test_step_schedule_drops_at_fractions_of_the_run():
  cfg = _opt_config(schedule="step", learning_rate=0.1, decay_boundaries=[0.5, 0.75],
                    decay_factor=0.1)
  schedule = make_schedule(cfg, total_steps=100)
  np.testing.assert_allclose([schedule(s) for s in (0, 49, 50, 74, 75, 99)],
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5)
  warm = make_schedule(_opt_config(schedule="step", learning_rate=0.1, warmup_steps=10), 100)
  np.testing.assert_allclose([warm(s) for s in (0, 5, 10, 49, 50, 75)],
                             [0.0, 0.05, 0.1, 0.1, 0.01, 0.001], rtol=1e-5)
  with pytest.raises(ConfigError, match="decay_boundaries"):
    make_schedule(_opt_config(schedule="step", decay_boundaries=[50]), 100)
