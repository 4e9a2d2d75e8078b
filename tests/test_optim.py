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
  np.testing.assert_allclose(
    [schedule(s) for s in (0, 5, 10, 50, 99)], [0.0, 0.05, 0.1, 0.1, 0.1], rtol=1e-6
  )


def test_cosine_schedule_matches_formula():
  peak, end, warmup, total = 0.1, 0.01, 10, 110
  schedule = make_schedule(
    _opt_config(schedule="cosine", learning_rate=peak, warmup_steps=warmup, end_learning_rate=end),
    total_steps=total,
  )
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


@pytest.mark.parametrize(
  "name, overrides, reference",
  [
    ("adam", {}, lambda: optax.adam(1e-3)),
    (
      "adamw",
      {"weight_decay": 0.1, "weight_decay_mask": "all"},
      lambda: optax.adamw(1e-3, weight_decay=0.1),
    ),
    (
      "sgd",
      {"momentum": 0.9, "nesterov": True},
      lambda: optax.sgd(1e-3, momentum=0.9, nesterov=True),
    ),
    ("sgd", {}, lambda: optax.sgd(1e-3)),
  ],
)
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
  tx, _ = make_optimizer(
    _opt_config(name="sgd", learning_rate=0.5, weight_decay=0.1, weight_decay_mask="all"), 10
  )
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


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"name": "adamm"}, "Unknown optimizer.name 'adamm'"),
    ({"schedule": "linear"}, "Unknown optimizer.schedule"),
    ({"schedule": "cosine", "warmup_steps": 20}, "must exceed optimizer.warmup_steps"),
    ({"name": "adam", "nesterov": True}, "applies to sgd only"),
    ({"name": "adamw", "weight_decay_mask": "biases"}, "Unknown optimizer.weight_decay_mask"),
  ],
)
def test_bad_optimizer_config(overrides, message):
  with pytest.raises(ConfigError, match=message):
    make_optimizer(_opt_config(**overrides), total_steps=10)


def test_step_schedule_drops_at_fractions_of_the_run():
  cfg = _opt_config(
    schedule="step", learning_rate=0.1, decay_boundaries=[0.5, 0.75], decay_factor=0.1
  )
  schedule = make_schedule(cfg, total_steps=100)
  np.testing.assert_allclose(
    [schedule(s) for s in (0, 49, 50, 74, 75, 99)], [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5
  )
  warm = make_schedule(_opt_config(schedule="step", learning_rate=0.1, warmup_steps=10), 100)
  np.testing.assert_allclose(
    [warm(s) for s in (0, 5, 10, 49, 50, 75)], [0.0, 0.05, 0.1, 0.1, 0.01, 0.001], rtol=1e-5
  )
  with pytest.raises(ConfigError, match="decay_boundaries"):
    make_schedule(_opt_config(schedule="step", decay_boundaries=[50]), 100)


# ------------------------------------------------ Selecting parameters: freeze, lr_multipliers,
# no_weight_decay. Paths as Flax names them: "encoder/kernel".

from jaxdl.train import optim, param_paths  # noqa: E402


def _net_params():
  key = jax.random.key(0)
  k1, k2, k3 = jax.random.split(key, 3)
  return {
    "encoder": {"kernel": jax.random.normal(k1, (3, 4)), "bias": jnp.full((4,), 0.5)},
    "head": {"kernel": jax.random.normal(k2, (4, 2)), "bias": jax.random.normal(k3, (2,))},
  }


def _grads(params, step):
  """Gradients that change from step to step but not with the parameters' values, so a reference
  run on part of the tree can be fed the same ones."""
  return jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size).reshape(p.shape) + step) + 0.3, params)


def _run(tx, params, steps=4):
  state = tx.init(params)
  for step in range(steps):
    updates, state = tx.update(_grads(params, step), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _array_leaves(state):
  return [x for x in jax.tree.leaves(state) if hasattr(x, "shape")]


@pytest.mark.parametrize(
  "overrides, reference",
  [
    ({"name": "adam"}, lambda: optax.adam(1e-2)),
    (
      {"name": "sgd", "momentum": 0.9, "weight_decay": 0.1},
      lambda: optax.chain(
        optax.add_decayed_weights(0.1, lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
        optax.sgd(1e-2, momentum=0.9),
      ),
    ),
  ],
)
def test_frozen_parameters_stay_put_and_keep_no_state(overrides, reference):
  params = _net_params()
  tx, _ = make_optimizer(_opt_config(learning_rate=1e-2, freeze=["encoder/.*"], **overrides), 10)
  new, state = _run(tx, params)
  _assert_bit_identical(new["encoder"], params["encoder"])
  # The trainable part moves exactly as the same optimizer on that part alone.
  ref_new, ref_state = _run(reference(), {"head": params["head"]})
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new["head"], ref_new["head"]
  )
  # No optimizer state for frozen leaves: every moment is MaskedNode there, and the state holds
  # as many parameter-sized numbers as the reference's on the head alone.
  with_paths = jax.tree_util.tree_flatten_with_path(
    state, is_leaf=lambda x: isinstance(x, optax.MaskedNode)
  )[0]
  frozen = [leaf for kp, leaf in with_paths if "encoder" in param_paths.path_str(kp)]
  assert frozen and all(isinstance(leaf, optax.MaskedNode) for leaf in frozen)
  sizes = lambda s: sum(x.size for x in _array_leaves(s) if x.ndim > 0)
  assert sizes(state) == sizes(ref_state) > 0


def _assert_bit_identical(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_no_selection_keys_leave_the_optimizer_as_before():
  """Configs written before these keys existed lack them; the state keeps its old structure."""
  params = _net_params()
  old_cfg = dict(_opt_config(name="adamw", weight_decay=0.1, grad_clip_norm=1.0))
  for key in ("freeze", "lr_multipliers", "no_weight_decay"):
    del old_cfg[key]
  tx_old, _ = make_optimizer(old_cfg, 10)
  tx_new, _ = make_optimizer(_opt_config(name="adamw", weight_decay=0.1, grad_clip_norm=1.0), 10)
  assert jax.tree.structure(tx_old.init(params)) == jax.tree.structure(tx_new.init(params))
  assert not any(jax.tree.leaves(optim.frozen_mask(old_cfg, params)))
  _assert_bit_identical(_run(tx_old, params)[0], _run(tx_new, params)[0])


def test_frozen_mask_marks_the_selected_parameters():
  mask = optim.frozen_mask(_opt_config(freeze=["encoder/kernel", "head/b.*"]), _net_params())
  assert param_paths.named_leaves(mask) == {
    "encoder/bias": False,
    "encoder/kernel": True,
    "head/bias": True,
    "head/kernel": False,
  }


def test_clipping_sees_only_trainable_gradients():
  params = {"encoder": {"w": jnp.zeros(2)}, "head": {"a": jnp.zeros(2), "b": jnp.zeros(1)}}
  grads = {
    "encoder": {"w": jnp.full((2,), 1e6)},  # Would dominate the global norm.
    "head": {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])},
  }  # Norm 5.
  tx, _ = make_optimizer(
    _opt_config(name="sgd", learning_rate=1.0, grad_clip_norm=1.0, freeze=["encoder/.*"]), 10
  )
  new = _one_update(tx, grads, params)
  np.testing.assert_allclose(new["head"]["a"], [-0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(new["head"]["b"], [-0.8], rtol=1e-6)
  np.testing.assert_array_equal(new["encoder"]["w"], [0.0, 0.0])


@pytest.mark.parametrize(
  "name, make_ref",
  [
    ("sgd", lambda lr: optax.sgd(lr)),
    ("adam", lambda lr: optax.adam(lr)),
    (
      "adamw",
      lambda lr: optax.adamw(
        lr, weight_decay=0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
      ),
    ),  # The decoupled decay scales with the rate, as in PyTorch.
  ],
)
def test_lr_multiplier_equals_a_lower_rate_for_that_layer(name, make_ref):
  lr, params = 1e-2, _net_params()
  extra = {"weight_decay": 0.1} if name == "adamw" else {}
  tx, _ = make_optimizer(
    _opt_config(name=name, learning_rate=lr, **extra, lr_multipliers=[("encoder/.*", 0.1)]), 10
  )
  new, _ = _run(tx, params)
  slow, _ = _run(make_ref(lr * 0.1), params)
  fast, _ = _run(make_ref(lr), params)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
    new["encoder"],
    slow["encoder"],
  )
  _assert_bit_identical(new["head"], fast["head"])


def test_first_matching_multiplier_wins():
  params = {"a": {"w": jnp.zeros(1)}, "b": {"w": jnp.zeros(1)}}
  tx, _ = make_optimizer(
    _opt_config(name="sgd", learning_rate=1.0, lr_multipliers=[["a/w", 0.5], [".*", 2.0]]), 10
  )
  new = _one_update(tx, {"a": {"w": jnp.ones(1)}, "b": {"w": jnp.ones(1)}}, params)
  np.testing.assert_allclose([new["a"]["w"][0], new["b"]["w"][0]], [-0.5, -2.0])


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_no_weight_decay_excludes_exactly_the_matched_parameters(name):
  params = _net_params()
  tx, _ = make_optimizer(
    _opt_config(
      name=name,
      learning_rate=1e-2,
      weight_decay=0.1,
      weight_decay_mask="all",
      no_weight_decay=["head/.*"],
    ),
    10,
  )
  mask = {"encoder": {"kernel": True, "bias": True}, "head": {"kernel": False, "bias": False}}
  if name == "adamw":
    ref = optax.adamw(1e-2, weight_decay=0.1, mask=mask)
  else:
    ref = optax.chain(optax.add_decayed_weights(0.1, mask), optax.sgd(1e-2))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
    _run(tx, params)[0],
    _run(ref, params)[0],
  )


def test_no_weight_decay_combines_with_the_matrices_mask_and_freeze():
  params = _net_params()
  tx, _ = make_optimizer(
    _opt_config(
      name="adamw",
      learning_rate=1e-2,
      weight_decay=0.1,
      no_weight_decay=["head/kernel"],
      freeze=["encoder/bias"],
    ),
    10,
  )
  mask = {"encoder": {"kernel": True}, "head": {"kernel": False, "bias": False}}
  ref_params = {"encoder": {"kernel": params["encoder"]["kernel"]}, "head": params["head"]}
  ref, _ = _run(optax.adamw(1e-2, weight_decay=0.1, mask=mask), ref_params)
  new, _ = _run(tx, params)
  _assert_bit_identical(new["encoder"]["bias"], params["encoder"]["bias"])
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
    {"encoder": {"kernel": new["encoder"]["kernel"]}, "head": new["head"]},
    ref,
  )


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"freeze": ["encoder/(kernel"]}, r"optimizer.freeze: 'encoder/\(kernel' is not a valid"),
    ({"lr_multipliers": [("head/.*", 0)]}, "is 0, which would stop .* optimizer.freeze instead"),
    ({"lr_multipliers": [("head/.*", -1.0)]}, "negative rate"),
    ({"lr_multipliers": [("head/.*", "fast")]}, "give a positive number"),
    ({"lr_multipliers": ["head/.*"]}, r"must be a \(pattern, factor\) pair"),
    ({"no_weight_decay": ["head/.*"]}, "has no effect: adam with optimizer.weight_decay=0.0"),
    ({"name": "adam", "weight_decay": 0.1, "no_weight_decay": ["head/.*"]}, "use adamw or sgd"),
  ],
)
def test_bad_selection_configs_fail_when_the_optimizer_is_made(overrides, message):
  with pytest.raises(ConfigError, match=message):
    make_optimizer(_opt_config(**overrides), total_steps=10)


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      {"freeze": ["encoder/kernal"]},
      r"optimizer.freeze: pattern 'encoder/kernal' matches no parameter path.*include "
      r"encoder/kernel",
    ),
    ({"lr_multipliers": [("hed/.*", 0.1)]}, r"optimizer.lr_multipliers: pattern 'hed/\.\*'"),
    (
      {"name": "sgd", "weight_decay": 0.1, "no_weight_decay": ["head/bais"]},
      "optimizer.no_weight_decay: pattern 'head/bais' .* include head/bias",
    ),
    ({"freeze": [".*"]}, "selects every parameter, so nothing would train"),
    (
      {"freeze": ["encoder/.*"], "lr_multipliers": [("encoder/kernel", 0.1)]},
      r"selects only frozen parameters \(encoder/kernel\)",
    ),
    ({"lr_multipliers": [(".*", 0.1), ("head/.*", 2.0)]}, "already matched by an earlier pattern"),
    (
      {"name": "adamw", "weight_decay": 0.1, "no_weight_decay": [".*/bias"]},
      r"weight_decay_mask='matrices' already spares \(encoder/bias, head/bias\)",
    ),
  ],
)
def test_patterns_are_checked_against_the_parameters_at_init(overrides, message):
  tx, _ = make_optimizer(_opt_config(**overrides), total_steps=10)
  # The trainer traces the init under eval_shape/jit: the error comes through unchanged.
  with pytest.raises(ConfigError, match=message):
    jax.eval_shape(tx.init, _net_params())


def test_freeze_in_a_jitted_train_step_with_flax_names():
  import flax.linen as nn

  from jaxdl.train import step as step_lib

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(3)(nn.relu(nn.Dense(4)(x)))

  model, x = Tiny(), jax.random.normal(jax.random.key(1), (8, 5))
  tx, schedule = make_optimizer(
    _opt_config(
      name="adamw", learning_rate=0.1, weight_decay=0.1, freeze=["Dense_0/.*"], grad_clip_norm=1.0
    ),
    10,
  )
  state = step_lib.create_train_state(model, tx, jax.random.key(0), x[:1])
  train_step = jax.jit(step_lib.make_train_step(model, tx, schedule))
  batch = {"image": x, "label": jnp.arange(8) % 3}
  new = state
  for _ in range(3):
    new, metrics = train_step(new, batch, jax.random.key(2))
  _assert_bit_identical(new.params["Dense_0"], state.params["Dense_0"])
  assert not np.allclose(new.params["Dense_1"]["kernel"], state.params["Dense_1"]["kernel"])
  assert np.isfinite(float(metrics["train/loss"]))
