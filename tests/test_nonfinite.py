"""A NaN stops the run: a NaN gradient under a finite loss, one diverging member of a sweep, under
pmap on 8 devices and in two processes; the CLI exits 2 naming the step and the last good
checkpoint, and nothing after it is saved. (A NaN loss in a single run: tests/test_trainer.py.)"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import cli, trainer
from jaxdl import config as config_lib
from jaxdl.checkpoint import Checkpointer
from jaxdl.errors import NonFiniteLossError
from tests.conftest import REPO
from tests.test_parallel import _run, _start_processes

EXPERIMENT = str(REPO / "experiments" / "mnist_cnn.py")
NAN_FROM = 3
# The seed CNN's experiment with TinyNet, whose gradient turns NaN at step 3; saves every step. It
# logs only at step 5, so the check before each save, not the log, must stop the run at step 3.
NAN_GRAD_RUN = [
  "model.cls=tests.test_nonfinite:TinyNet",
  f"model.nan_grad_from_step={NAN_FROM}",
  "train.num_steps=6",
  "train.batch_size=32",
  "train.log_every_steps=5",
  "train.checkpoint_every_steps=1",
  "data.eval_batch_size=1000",
]


class TinyNet(nn.Module):
  """Two dense layers (no activation: under a large learning rate the weights grow geometrically
  until they overflow). From train step `nan_grad_from_step` (0: never) the gradient of `z` is NaN
  while the output, and so the loss, stays finite."""

  num_classes: int = 10
  features: int = 8
  nan_grad_from_step: int = 0

  @nn.compact
  def __call__(self, x_BHWC, *, train=False):
    x_BD = x_BHWC.reshape((x_BHWC.shape[0], -1))
    logits_BK = nn.Dense(self.num_classes)(nn.Dense(self.features)(x_BD))
    if not self.nan_grad_from_step:
      return logits_BK
    steps = self.variable("counter", "steps", lambda: jnp.zeros((), jnp.int32))
    if train and not self.is_initializing():
      steps.value += 1
    z = self.param("z", nn.initializers.ones, ())
    # 0 from that step on: sqrt's derivative at 0 is inf, and 0 * inf is NaN, while the forward
    # value 0 * sqrt(0) is 0. (A gate made of a comparison would be folded by XLA into a select,
    # which drops the NaN.)
    gate = jnp.maximum(self.nan_grad_from_step - steps.value, 0).astype(z.dtype)
    return logits_BK + 0.0 * jnp.sqrt(gate * z)


def test_tiny_net_has_a_nan_gradient_and_a_finite_loss_from_its_step():
  """The premise of the tests below, checked on the model alone."""
  model = TinyNet(nan_grad_from_step=NAN_FROM)
  x_BHWC = jnp.ones((2, 28, 28, 1))
  variables = model.init(jax.random.key(0), x_BHWC)

  def loss_fn(params, steps_before):
    counter = {"steps": steps_before}
    logits_BK, _ = model.apply(
      {"params": params, "counter": counter}, x_BHWC, train=True, mutable=["counter"]
    )
    return jnp.mean(jax.nn.logsumexp(logits_BK, axis=-1) - logits_BK[:, 0])

  # Compiled, with the count an argument, as in the train step: XLA sees the gate it would fold.
  loss_and_grad = jax.jit(jax.value_and_grad(loss_fn))
  for step in range(1, NAN_FROM + 2):
    loss, grads = loss_and_grad(variables["params"], jnp.int32(step - 1))
    assert np.isfinite(loss)
    assert np.isnan(grads["z"]) == (step >= NAN_FROM), step
    assert all(np.isfinite(g).all() for g in jax.tree.leaves({**grads, "z": 0.0}))


def _saved_params_finite(workdir, step):
  saved = Checkpointer(workdir / "checkpoints", read_only=True).restore_as_saved(step)
  return all(np.isfinite(x).all() for x in jax.tree.leaves(saved["state"]["params"]))


def _assert_stopped_at_the_nan(workdir, message):
  assert re.search(
    rf"Training diverged at step {NAN_FROM}: the loss, gradients or parameters became NaN or "
    rf"Inf\. The last good checkpoint is step {NAN_FROM - 1} in .*; nothing after it was saved\. "
    r"Lower optimizer\.learning_rate",
    message,
  ), message
  steps = Checkpointer(workdir / "checkpoints", read_only=True).all_steps()
  assert steps == list(range(1, NAN_FROM))
  assert _saved_params_finite(workdir, steps[-1])


def test_nan_gradient_with_a_finite_loss_stops_the_run_through_the_cli(capsys, tmp_path):
  workdir = tmp_path / "run"
  code = cli.main(["train", EXPERIMENT, *NAN_GRAD_RUN, "--no-progress", "--workdir", str(workdir)])
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.startswith("jaxdl train: error: Training diverged") and "Traceback" not in err
  assert len(err.splitlines()) == 1  # The problem and what to try, on one line.
  _assert_stopped_at_the_nan(workdir, err)


def test_one_diverging_sweep_member_stops_the_run_naming_it(tmp_path):
  config = config_lib.load_experiment(EXPERIMENT)
  config_lib.apply_overrides(
    config,
    [
      "model.cls=tests.test_nonfinite:TinyNet",
      "optimizer.name=sgd",
      "sweep.optimizer.learning_rate=[1e-2,1e4]",  # Member 1 diverges within a few steps.
      "train.num_steps=20",
      "train.batch_size=32",
      "train.log_every_steps=20",
      "train.checkpoint_every_steps=1",
    ],
  )
  workdir = tmp_path / "sweep"
  with pytest.raises(NonFiniteLossError) as info:
    trainer.train(config, workdir, show_progress=False)
  message = str(info.value)
  found = re.search(
    r"diverged at step (\d+) in sweep member\(s\) 1 \(seed=0 optimizer\.learning_rate=10000\):",
    message,
  )
  assert found, message
  assert "0 (seed=0" not in message  # The member that trains well is not blamed.
  step = int(found.group(1))
  assert step > 1
  # The last good checkpoint, both members' parameters finite; nothing after it.
  assert Checkpointer(workdir / "checkpoints", read_only=True).latest_step() == step - 1
  assert _saved_params_finite(workdir, step - 1)


def _stopped_by_nan(workdir, stderr):
  last_line = stderr.strip().splitlines()[-1]
  assert last_line.startswith("jaxdl train: error: Training diverged at step"), stderr
  assert "Traceback" not in stderr
  _assert_stopped_at_the_nan(workdir, last_line)


@pytest.mark.slow  # A fresh process with 8 devices; CI runs it.
def test_nan_gradient_under_pmap_on_8_devices_stops_the_run(tmp_path):
  workdir = tmp_path / "run"
  args = ["train", EXPERIMENT, *NAN_GRAD_RUN, "parallel.strategy=pmap", "--no-progress"]
  result = _run(args, workdir, 8, timeout=600)
  assert result.returncode == 2, result.stderr
  _stopped_by_nan(workdir, result.stderr)


@pytest.mark.slow  # Two fresh processes; CI runs it.
def test_nan_gradient_in_a_two_process_run_stops_both(tmp_path):
  workdir = tmp_path / "run"
  processes = _start_processes(["train", EXPERIMENT, *NAN_GRAD_RUN, "--no-progress"], workdir)
  try:
    outputs = [p.communicate(timeout=600) for p in processes]  # Neither may hang.
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in processes] == [2, 2], [err for _, err in outputs]
  for _, err in outputs:
    _stopped_by_nan(workdir, err)
