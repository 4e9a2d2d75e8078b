"""Transfer learning end to end: a run initialised from another run's checkpoint (`init.*`),
with part of the model frozen (`optimizer.freeze`), and `jaxdl summary` marking what is frozen."""

import jax
import numpy as np
import pytest

from jaxdl import config as config_lib
from jaxdl import summary as summary_lib
from jaxdl import trainer
from jaxdl.checkpoint import Checkpointer
from jaxdl.errors import CheckpointError, ConfigError
from tests.conftest import REPO

EXPERIMENT = REPO / "experiments" / "mnist_cnn.py"
SMALL = [
  "train.batch_size=32",
  "train.log_every_steps=5",
  "train.eval_every_steps=10",
  "train.checkpoint_every_steps=5",
  "data.eval_batch_size=500",
  "train.num_steps=10",
]


def _config(*overrides):
  config = config_lib.load_experiment(EXPERIMENT)
  config_lib.apply_overrides(config, [*SMALL, *overrides])
  return config


def _saved(workdir, step=None):
  checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
  try:
    return checkpointer.restore_as_saved(step or checkpointer.latest_step())
  finally:
    checkpointer.close()


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("transfer") / "source"
  trainer.train(_config(), workdir, show_progress=False)
  return workdir


def test_frozen_transferred_layers_stay_those_of_the_source(source_run, tmp_path):
  """Every layer is copied; the frozen convolutions keep the source's bits at every step, and the
  head, which trains on, starts from the source's values: Adam's first update moves each weight
  by lr * |g| / (|g| + eps) < lr, so after one step it lies within lr of the source, where a
  fresh initialisation (seed 3, not the source's 0) would lie far from it."""
  lr = 1e-3  # experiments/mnist_cnn.py: Adam at a constant 1e-3.
  trainer.train(
    _config(
      f"init.checkpoint={source_run}",
      "optimizer.freeze=['conv.*']",
      "seed=3",
      "train.num_steps=2",
      "train.checkpoint_every_steps=1",
    ),
    tmp_path / "t",
    show_progress=False,
  )
  source = _saved(source_run)["state"]["params"]
  after_one, after_all = _saved(tmp_path / "t", 1)["state"], _saved(tmp_path / "t")["state"]
  for target in (after_one["params"], after_all["params"]):
    for layer in ("conv1", "conv2", "conv3"):  # Copied, then never updated: the source's bits.
      for name in ("kernel", "bias"):
        np.testing.assert_array_equal(target[layer][name], source[layer][name])
  for layer in ("dense1", "logits"):  # The head was copied: one step away from the source.
    for name in ("kernel", "bias"):
      moved = np.abs(np.asarray(after_one["params"][layer][name]) - source[layer][name])
      assert moved.max() <= lr * (1 + 1e-5), f"{layer}/{name} moved {moved.max()}"
      assert moved.max() > lr / 2
  for layer in ("dense1", "logits"):  # The head trains on.
    assert not np.array_equal(
      after_all["params"][layer]["kernel"], after_one["params"][layer]["kernel"]
    )
  # Frozen parameters keep no Adam moments: only the head's arrays are in the optimizer state.
  leaves = [x for x in jax.tree.leaves(after_all["opt_state"]) if hasattr(x, "shape") and x.ndim]
  num_head = 4  # dense1 and logits, kernel and bias
  assert len(leaves) == 2 * num_head  # mu and nu


def test_mapping_copies_one_layer_into_an_untrained_model(source_run, tmp_path):
  trainer.train(
    _config(
      f"init.checkpoint={source_run}/checkpoints/5",
      "init.mapping=[('conv1','conv1')]",
      "optimizer.freeze=['conv1/.*']",
      "train.num_steps=2",
    ),
    tmp_path / "t",
    show_progress=False,
  )
  source, target = _saved(source_run, 5)["state"], _saved(tmp_path / "t")["state"]
  np.testing.assert_array_equal(
    target["params"]["conv1"]["kernel"], source["params"]["conv1"]["kernel"]
  )
  fresh = _saved(source_run, 5)  # Step 5 differs from the final step: the step was honoured.
  assert not np.array_equal(
    fresh["state"]["params"]["conv1"]["kernel"],
    _saved(source_run)["state"]["params"]["conv1"]["kernel"],
  )


def test_bad_sources_and_mappings_are_explained(source_run, tmp_path):
  with pytest.raises(
    CheckpointError, match="is not a jaxdl workdir or checkpoint: it does not exist"
  ):
    trainer.train(
      _config(f"init.checkpoint={tmp_path / 'nowhere'}"), tmp_path / "a", show_progress=False
    )
  with pytest.raises(CheckpointError, match=r"(?s)2 problems.*conv1/bias.*conv1/kernel"):
    trainer.train(
      _config(f"init.checkpoint={source_run}", "init.mapping=[('conv1','conv2')]"),
      tmp_path / "b",
      show_progress=False,
    )
  with pytest.raises(ConfigError, match="optimizer.freeze.*'cnv.*'.*conv1/bias"):
    trainer.train(_config("optimizer.freeze=['cnv.*']"), tmp_path / "c", show_progress=False)


def test_summary_marks_frozen_parameters():
  _, summary = summary_lib.for_experiment(
    str(EXPERIMENT), ["data.download=false", "optimizer.freeze=['conv.*']"], flops=False
  )
  frozen = {r.path for r in summary.rows if r.frozen}
  assert frozen == {f"conv{i}/{n}" for i in (1, 2, 3) for n in ("kernel", "bias")}
  assert summary.frozen_params == 32 + 288 + 64 + 18432 + 64 + 36864
  text = summary_lib.format_summary(summary)
  assert "conv1/kernel (frozen)" in text and "dense1/kernel (frozen)" not in text
  assert "frozen params: 55744 (55.7K); trained: 37578 (37.6K)" in text
