"""The pure train and eval steps: determinism, RNG per step, masking, learning on real data."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import data as data_lib
from jaxdl.nn import MnistCNN
from jaxdl.train import step as step_lib


class _DropoutNet(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.Dense(8)(x.reshape(x.shape[0], -1))
    return nn.Dense(3)(nn.Dropout(0.5, deterministic=not train)(x))


def _setup(model, tx=None, input_shape=(1, 28, 28, 1)):
  tx = tx or optax.adam(1e-3)
  state = step_lib.create_train_state(model, tx, jax.random.key(0), jnp.zeros(input_shape))
  return state, jax.jit(step_lib.make_train_step(model, tx, optax.constant_schedule(1e-3)))


@pytest.fixture(scope="module")
def subset():
  return data_lib.load_dataset("mnist", allow_download=False)


@pytest.fixture(scope="module")
def cnn():
  """The seed CNN, its initial state and its train step, compiled once for batches of 64."""
  model = MnistCNN()
  return (model, *_setup(model))


def test_loss_decreases_on_real_mnist(subset, cnn):
  _, state, train_step = cnn
  batches = iter(data_lib.train_batches(subset.train, batch_size=64, seed=0))
  rng = jax.random.key(1)
  losses = []
  for _ in range(60):
    state, metrics = train_step(state, next(batches), rng)
    losses.append(float(metrics["train/loss"]))
  assert losses[0] == pytest.approx(np.log(10), abs=0.3)  # Untrained: near-uniform predictions.
  assert np.mean(losses[-10:]) < 0.6 < np.mean(losses[:10])
  assert int(state.step) == 60


def test_train_step_is_pure_and_deterministic():
  state, train_step = _setup(_DropoutNet(), input_shape=(1, 4))
  batch = {"image": jnp.ones((4, 4)), "label": jnp.array([0, 1, 2, 0])}
  rng = jax.random.key(3)
  s1, m1 = train_step(state, batch, rng)
  s2, m2 = train_step(state, batch, rng)  # Same inputs, same outputs; `state` is untouched.
  jax.tree.map(np.testing.assert_array_equal, (s1, m1), (s2, m2))
  assert int(state.step) == 0 and int(s1.step) == 1


def test_step_rng_is_fold_in_of_step():
  """Dropout masks depend on (rng, state.step) only: equal steps give equal updates."""
  state, train_step = _setup(_DropoutNet(), tx=optax.sgd(0.1), input_shape=(1, 4))
  batch = {"image": jnp.ones((4, 4)), "label": jnp.array([0, 1, 2, 0])}
  rng = jax.random.key(3)
  at_step_5 = state.replace(step=jnp.asarray(5, jnp.int32))
  _, m5a = train_step(at_step_5, batch, rng)
  _, m5b = train_step(at_step_5, batch, rng)
  _, m6 = train_step(state.replace(step=jnp.asarray(6, jnp.int32)), batch, rng)
  assert float(m5a["train/loss"]) == float(m5b["train/loss"])
  assert float(m5a["train/loss"]) != float(m6["train/loss"])


def test_train_metrics_match_formulas(cnn):
  model, state, train_step = cnn
  x = jax.random.uniform(jax.random.key(5), (64, 28, 28, 1))
  labels = jnp.arange(64) % 10
  _, metrics = train_step(state, {"image": x, "label": labels}, jax.random.key(0))
  logits = jax.jit(model.apply)({"params": state.params}, x)
  expected_loss = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(64), labels])
  assert float(metrics["train/loss"]) == pytest.approx(float(expected_loss), rel=1e-5)
  assert float(metrics["train/accuracy"]) == float(jnp.mean(logits.argmax(-1) == labels))
  assert float(metrics["train/learning_rate"]) == pytest.approx(1e-3)
  assert float(metrics["train/param_norm"]) > 0 and float(metrics["train/grad_norm"]) > 0


def test_eval_step_ignores_padding(cnn):
  model, state, _ = cnn
  x = jax.random.uniform(jax.random.key(5), (6, 28, 28, 1))
  labels = jnp.array([1, 2, 3, 4, 5, 6])
  eval_step = jax.jit(step_lib.make_eval_step(model))
  real = eval_step(state, {"image": x[:4], "label": labels[:4], "mask": jnp.ones(4, bool)})
  # The same four examples plus two padding rows (garbage images, wrong labels) masked out.
  padded = eval_step(
    state,
    {"image": x.at[4:].set(9.0), "label": labels, "mask": jnp.array([1, 1, 1, 1, 0, 0], bool)},
  )
  assert float(padded["count"]) == 4.0
  assert float(padded["correct"]) == float(real["correct"])
  assert float(padded["loss_sum"]) == pytest.approx(float(real["loss_sum"]), rel=1e-6)


def test_metric_sums_average_and_flag_first_nonfinite_step():
  shapes = {"train/loss": jax.ShapeDtypeStruct((), jnp.float32)}
  sums = step_lib.init_metric_sums(shapes)
  for step, loss in [(1, 1.0), (2, 3.0), (3, np.nan), (4, np.inf), (5, 2.0)]:
    sums = step_lib.accumulate_metrics(sums, {"train/loss": jnp.float32(loss)}, jnp.int32(step))
  assert int(sums["count"]) == 5
  assert int(sums["first_nonfinite_step"]) == 3
  clean = step_lib.init_metric_sums(shapes)
  for step, loss in [(1, 1.0), (2, 3.0)]:
    clean = step_lib.accumulate_metrics(clean, {"train/loss": jnp.float32(loss)}, jnp.int32(step))
  assert float(clean["sums"]["train/loss"]) / int(clean["count"]) == 2.0
  assert int(clean["first_nonfinite_step"]) == -1
  reset = step_lib.reset_metric_sums(sums)
  assert int(reset["count"]) == 0 and int(reset["first_nonfinite_step"]) == -1
