"""Other models and sweeps on 8 (forced CPU) devices follow the 1-device trajectory within float
tolerance: GPT, BatchNorm, a seed sweep, the LSTM. The seed CNN under every layout, with Adam and
SGD, and its evaluation under every layout are in tests/test_parallel.py.

Each run is a separate process, since the device count is fixed when JAX starts.
"""

import numpy as np
import pytest

from tests.conftest import REPO
from tests.test_parallel import RUN, XLA, _by_step, _run


def _train(workdir, num_devices, *extra):
  return _run([*RUN, *extra], workdir, num_devices)


GPT_RUN = [
  "train",
  str(REPO / "experiments" / "shakespeare_char_gpt.py") + ":cpu",
  "model.num_layers=2",
  "model.embed_dim=32",
  "model.num_heads=2",
  "model.block_size=32",
  "data.block_size=32",
  "train.num_steps=20",
  "train.batch_size=16",
  "train.log_every_steps=10",
  "train.eval_every_steps=20",
  "optimizer.warmup_steps=5",
  "data.eval_batch_size=256",
  "--no-progress",
]


@pytest.mark.slow  # GPT on 8 devices; tests/test_parallel.py covers the layouts with the CNN.
@pytest.mark.parametrize("strategy", ["jit", "pmap"])
def test_gpt_on_eight_devices_follows_one_device(tmp_path, strategy):
  """Token batches [B, T] split over devices along B, like images (the CPU GPT has no dropout,
  so pmap computes the same function too)."""
  one = _run(GPT_RUN, tmp_path / "one", 1)
  eight = _run([*GPT_RUN, f"parallel.strategy={strategy}"], tmp_path / "eight", 8)
  assert one.returncode == 0, one.stderr
  assert eight.returncode == 0, eight.stderr
  a, b = _by_step(tmp_path / "one"), _by_step(tmp_path / "eight")
  for step in (10, 20):
    np.testing.assert_allclose(b[step]["train/loss"], a[step]["train/loss"], rtol=2e-3)
  np.testing.assert_allclose(b[20]["eval/loss"], a[20]["eval/loss"], rtol=2e-3)
  assert b[20]["eval/num_tokens"] == a[20]["eval/num_tokens"]


BN_EXPERIMENT = """
from jaxdl.config import base_config

def get_config():
  config = base_config()
  config.model = {"name": "resnet20", "width": 4, "num_classes": 10}  # BatchNorm in every block.
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.05
  config.optimizer.momentum = 0.9
  return config
"""


@pytest.mark.slow  # Runs compiling a ResNet; CI runs it.
@pytest.mark.parametrize("strategy", ["jit", "pmap"])
def test_batch_norm_statistics_are_global_over_eight_devices(tmp_path, strategy):
  """jit: the batch is one global array split over devices, so BatchNorm normalises with (and
  keeps the running averages of) the statistics of the whole batch, as on one device. pmap: each
  device's BatchNorm averages its statistics with the others' (pmean), to the same effect."""
  experiment = tmp_path / "bn_experiment.py"
  experiment.write_text(BN_EXPERIMENT)
  args = [
    "train",
    str(experiment),
    "train.num_steps=10",
    "train.batch_size=32",
    "train.log_every_steps=5",
    "data.eval_batch_size=400",
    "--no-progress",
  ]
  one = _run(args, tmp_path / "one", 1)
  eight = _run([*args, f"parallel.strategy={strategy}"], tmp_path / "eight", 8)
  assert one.returncode == 0, one.stderr
  assert eight.returncode == 0, eight.stderr
  a, b = _by_step(tmp_path / "one"), _by_step(tmp_path / "eight")
  for step in (5, 10):
    np.testing.assert_allclose(b[step]["train/loss"], a[step]["train/loss"], rtol=2e-3)
  # Evaluation uses the running statistics: equal only if they were averaged over all devices.
  np.testing.assert_allclose(b[10]["eval/loss"], a[10]["eval/loss"], rtol=2e-3)


def test_batch_that_does_not_split_over_devices_is_refused(tmp_path):
  result = _train(tmp_path / "odd", 8, "train.batch_size=60")
  assert result.returncode == 2
  assert "train.batch_size=60 does not split evenly over 8 devices" in result.stderr


@pytest.mark.slow  # Two sweeps; CI runs it.
def test_seed_sweep_on_eight_devices_follows_one_device(tmp_path):
  """A sweep's batches [members, B, ...] split along B over the devices; each member's run is
  the 1-device one up to the usual reduction-order rounding."""
  # The same kernels on both (runtime.kernels=auto would pick differently for 1 and 8 devices).
  sweep = ["sweep.seeds=2", "train.num_steps=20", *XLA]
  one, eight = _train(tmp_path / "one", 1, *sweep), _train(tmp_path / "eight", 8, *sweep)
  assert one.returncode == 0, one.stderr
  assert eight.returncode == 0, eight.stderr
  a, b = _by_step(tmp_path / "one"), _by_step(tmp_path / "eight")
  for key in ("member0/train/loss", "member1/train/loss"):
    np.testing.assert_allclose(b[20][key], a[20][key], rtol=2e-3)
  assert a[20]["member0/train/loss"] != a[20]["member1/train/loss"]


LSTM_RUN = [
  "train",
  str(REPO / "experiments" / "mnist_rows_lstm.py"),
  "model.features=32",
  "train.num_steps=20",
  "train.batch_size=32",
  "train.log_every_steps=10",
  "train.eval_every_steps=20",
  "data.eval_batch_size=400",
  "data.download=false",
  "--no-progress",
]


@pytest.mark.slow  # Three runs compiling a scanned LSTM.
def test_lstm_on_eight_devices_follows_one_device_under_both_strategies(tmp_path):
  one = _run(LSTM_RUN, tmp_path / "one", 1)
  assert one.returncode == 0, one.stderr
  a = _by_step(tmp_path / "one")
  for strategy in ("jit", "pmap"):
    eight = _run([*LSTM_RUN, f"parallel.strategy={strategy}"], tmp_path / strategy, 8)
    assert eight.returncode == 0, eight.stderr
    b = _by_step(tmp_path / strategy)
    for step in (10, 20):
      np.testing.assert_allclose(b[step]["train/loss"], a[step]["train/loss"], rtol=2e-3)
    np.testing.assert_allclose(b[20]["eval/loss"], a[20]["eval/loss"], rtol=2e-3)
