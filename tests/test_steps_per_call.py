"""runtime.steps_per_call: several train steps in one dispatched call (a loop on the device over
stacked batches) give the run that one step per call gives, to the bit; auto picks it on a CPU
unless the model's layers run XLA convolutions."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import config as config_lib
from jaxdl import interval_log, models, trainer
from jaxdl.errors import ConfigError
from jaxdl.train import parallel, steps_per_call
from jaxdl.train import step as step_lib
from tests.conftest import REPO, seed_cnn_run


def test_calls_of_several_steps_give_the_same_run_to_the_bit(tmp_path, caplog):
  one = seed_cnn_run(tmp_path / "one", "runtime.steps_per_call=1")
  # Auto on a CPU: up to 16 steps a call; logging every 10 steps, each call stops short at 10.
  # (Calls of all their steps, and short ones, in tests/test_sequence_training.py's GPT resume
  # and tests/test_parallel.py's pmap8-calls4.)
  with caplog.at_level(logging.INFO, logger="jaxdl"):
    auto = seed_cnn_run(tmp_path / "auto")
  assert f"Up to {steps_per_call.CPU_STEPS_PER_CALL} train steps per call" in caplog.text
  assert auto == one
  assert [r["step"] for r in auto if "train/loss" in r] == [10, 20]


def _xla_convs_override() -> str:
  """The seed CNN's setting for Flax's plain nn.Conv: runtime.kernels=xla (with the kernels layer)
  or model.conv_impl=xla (before it)."""
  config = config_lib.load_experiment(REPO / "experiments" / "mnist_cnn.py")
  model = models.build_model(config.model, {"num_classes": 10})
  return "runtime.kernels=xla" if hasattr(model, "kernels") else "model.conv_impl=xla"


def _seed_cnn(*overrides):
  """The seed CNN as configured (on one CPU device its convolutions run as im2col matmuls), and
  its inputs."""
  config = config_lib.load_experiment(REPO / "experiments" / "mnist_cnn.py")
  config_lib.apply_overrides(config, list(overrides))
  model = models.build_model(config.model, {"num_classes": 10}, kernels=config.runtime.kernels)
  return model, jnp.zeros((1, 28, 28, 1))


class _TinyConvNet(nn.Module):
  """A user's module: one plain nn.Conv, or one given its own convolution function."""

  conv_general_dilated: object = None

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    x = nn.Conv(4, (3, 3), conv_general_dilated=self.conv_general_dilated)(x)
    return nn.Dense(2)(x.reshape(x.shape[0], -1))


class _Declares(nn.Module):
  """A module that states its answer: what it calls inside is not asked."""

  runs_xla_convolutions = False

  @nn.compact
  def __call__(self, x, *, train=False):
    return _TinyConvNet()(x, train=train)


def _matmul_conv(lhs, rhs, *args, **kwargs):  # Stands in for jaxdl's im2col function.
  return jax.lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


def test_auto_asks_the_model_s_layers_whether_they_run_xla_convolutions():
  """Decided by what the layers declare, not by how the step lowers."""
  runs = steps_per_call.runs_xla_convolutions
  x = jnp.zeros((1, 8, 8, 1))
  assert not runs(*_seed_cnn())  # im2col matmuls and the fused conv-ReLU-pool on one CPU device.
  assert runs(*_seed_cnn(_xla_convs_override()))
  assert runs(_TinyConvNet(), x)
  assert runs(_TinyConvNet(jax.lax.conv_general_dilated), x)
  assert not runs(_TinyConvNet(_matmul_conv), x)
  assert not runs(_Declares(), x)
  config = config_lib.load_experiment(REPO / "experiments" / "shakespeare_char_gpt.py:cpu")
  gpt = models.build_model(config.model, {"vocab_size": 65})
  assert not runs(gpt, jnp.zeros((1, 8), jnp.int32))
  config = config_lib.load_experiment(REPO / "experiments" / "shakespeare_char_lstm.py")
  lstm = models.build_model(config.model, {"vocab_size": 65})
  assert not runs(lstm, jnp.zeros((1, 8), jnp.int32))
  # What a call runs: auto is 16 on a CPU unless the model runs XLA convolutions; a count is kept.
  assert jax.default_backend() == "cpu"
  assert steps_per_call.resolve(0, gpt, jnp.zeros((1, 8), jnp.int32)) == 16
  assert steps_per_call.resolve(0, *_seed_cnn()) == 16
  assert steps_per_call.resolve(0, *_seed_cnn(_xla_convs_override())) == 1
  assert steps_per_call.resolve(4, *_seed_cnn(_xla_convs_override())) == 4


def test_auto_is_one_step_a_call_with_xla_convolutions(tmp_path, caplog):
  with caplog.at_level(logging.INFO, logger="jaxdl"):
    seed_cnn_run(tmp_path / "xla", _xla_convs_override())
  # XLA:CPU runs a convolution inside a loop ~15x more slowly.
  assert (
    "One train step per call (runtime.steps_per_call=0, auto: the model runs XLA "
    "convolutions" in caplog.text
  )


def test_a_call_runs_its_first_n_batches_and_returns_the_last_loss():
  def update(state, sums, batch, rng):  # A step that adds its batch, and reports it as the loss.
    del rng
    return state + batch["x"].sum(), sums + 1, batch["x"].sum()

  run = jax.jit(step_lib.steps_in_one_call(update))
  batches = {"x": jnp.arange(8.0).reshape(4, 2)}  # Steps' sums: 1, 5, 9, 13.
  state, sums, loss = run(jnp.float32(0), jnp.int32(0), batches, np.int32(2), None)
  assert (float(state), int(sums), float(loss)) == (6.0, 2, 5.0)
  state, sums, loss = run(jnp.float32(0), jnp.int32(0), batches, np.int32(4), None)
  assert (float(state), int(sums), float(loss)) == (28.0, 4, 13.0)


def test_stacked_steps_fill_spare_slots_with_the_last_batch():
  layout = parallel.make_layout({})
  host = [{"x": np.full((4, 3), i, np.float32)} for i in range(2)]
  stacked = layout.put_batch(parallel.stack_steps(host, 4), steps_axis=True)["x"]
  assert stacked.shape == (4, 4, 3)
  np.testing.assert_array_equal(np.asarray(stacked)[:, 0, 0], [0, 1, 1, 1])
  members = layout.put_batch(
    parallel.stack_steps([{"x": np.zeros((2, 4, 3))}], 3), member_axis=True, steps_axis=True
  )["x"]
  assert members.shape == (3, 2, 4, 3)


def test_flops_of_a_call_are_those_of_one_step():
  """XLA's cost analysis counts a loop body once: a call's count is one step's, and perf/mfu
  does not call it a lower bound."""
  config = config_lib.load_experiment(REPO / "experiments" / "mnist_cnn.py")
  config_lib.apply_overrides(config, ["data.download=false", "train.batch_size=32"])
  data = trainer.load_data(config)
  setup = trainer.build(config, data)
  layout, loop = setup.layout, setup.init_loop()
  batch = next(iter(data.train_batches(batch_size=32, seed=0)))
  args = (loop["state"], loop["metric_sums"])
  rng = jax.random.wrap_key_data(loop["rng"])
  single = layout.compile_update(setup.update).lower(*args, layout.put_batch(batch), rng)
  several = layout.compile_update(
    step_lib.steps_in_one_call(setup.update), steps_in_call=True
  ).lower(
    *args, layout.put_batch(parallel.stack_steps([batch], 4), steps_axis=True), np.int32(4), rng
  )
  one = interval_log.step_efficiency(single.compile(), layout, "float32")
  four = interval_log.step_efficiency(several.compile(), layout, "float32", steps_loop=True)
  assert not one.lower_bound and not four.lower_bound
  np.testing.assert_allclose(four.flops_per_step, one.flops_per_step, rtol=1e-3)


@pytest.mark.parametrize("value", ["-1", "1.5", "auto"])
def test_bad_values_are_refused(tmp_path, value):
  config = config_lib.load_experiment(REPO / "experiments" / "mnist_cnn.py")
  with pytest.raises(ConfigError, match="runtime.steps_per_call"):
    config_lib.apply_overrides(config, [f"runtime.steps_per_call={value}"])
    trainer.train(config, tmp_path / "run", show_progress=False)
  assert not (tmp_path / "run").exists()
