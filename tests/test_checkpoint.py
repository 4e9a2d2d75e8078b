"""Orbax checkpoints: round trip with the data position, retention, crashes mid-save, bad
restores."""

import signal
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.checkpoint import Checkpointer
from jaxdl.errors import CheckpointError
from tests.conftest import REPO


def _state(value: float):
  return {
    "params": {"w": jnp.full((3, 2), value), "b": jnp.arange(2.0) + value},
    "step": jnp.asarray(int(value), jnp.int32),
    "rng": jax.random.key_data(jax.random.key(int(value))),
  }


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _iterator():
  return iter(grain.MapDataset.range(1000).batch(10).to_iter_dataset())


def test_round_trip_restores_state_and_data_position(tmp_path):
  checkpointer = Checkpointer(tmp_path / "ckpt", max_to_keep=5)
  it = _iterator()
  for _ in range(3):
    next(it)
  checkpointer.save(3, _state(3.0), it)
  expected_next = next(it)
  checkpointer.wait()
  checkpointer.close()

  fresh = _iterator()
  restored = Checkpointer(tmp_path / "ckpt").restore(3, _abstract(_state(0.0)), fresh)
  jax.tree.map(np.testing.assert_array_equal, restored, _state(3.0))
  np.testing.assert_array_equal(next(fresh), expected_next)


def test_keeps_only_the_latest(tmp_path):
  checkpointer = Checkpointer(tmp_path / "ckpt", max_to_keep=2)
  it = _iterator()
  for step in (1, 2, 3, 4):
    checkpointer.save(step, _state(float(step)), it)
  checkpointer.wait()
  assert checkpointer.all_steps() == [3, 4] and checkpointer.latest_step() == 4
  checkpointer.close()


# Orbax abandons the read coroutines of a restore that fails its shape check; their garbage
# collection warns. That is Orbax's clean-up, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_restore_with_other_shapes_or_structure_is_a_clear_error(tmp_path):
  checkpointer = Checkpointer(tmp_path / "ckpt")
  checkpointer.save(1, _state(1.0), _iterator())
  checkpointer.wait()
  wrong_shape = _abstract(_state(0.0))
  wrong_shape["params"]["w"] = jax.ShapeDtypeStruct((4, 2), jnp.float32)
  with pytest.raises(CheckpointError, match=r"(?s)does not fit this run.*\(4, 2\)"):
    checkpointer.restore(1, wrong_shape)
  other_model = {"params": {"kernel": jax.ShapeDtypeStruct((3, 2), jnp.float32)}}
  with pytest.raises(CheckpointError, match="different model or config"):
    checkpointer.restore(1, other_model)
  with pytest.raises(CheckpointError, match=r"no checkpoint for step 7.*\[1\]"):
    checkpointer.restore(7, _abstract(_state(0.0)))
  checkpointer.close()


_CRASHING_SAVER = """
import pathlib, sys, time
import grain, jax, jax.numpy as jnp
from jaxdl.checkpoint import Checkpointer

directory, marker = sys.argv[1], pathlib.Path(sys.argv[2])
state = lambda v: {"w": jnp.full((256, 256), v), "step": jnp.asarray(int(v))}
it = iter(grain.MapDataset.range(100).to_iter_dataset())
checkpointer = Checkpointer(directory)
checkpointer.save(1, state(1.0), it)
checkpointer.wait()

original_save = grain.checkpoint.CheckpointHandler.save
def hanging_save(self, directory, *args, **kwargs):
  original_save(self, directory, *args, **kwargs)  # Part of step 2 reaches the disk...
  marker.write_text("saving")
  time.sleep(600)  # ...and then the process dies before the save completes.
grain.checkpoint.CheckpointHandler.save = hanging_save

next(it)
checkpointer.save(2, state(2.0), it)
checkpointer.wait()
"""


def test_crash_during_save_leaves_previous_checkpoint_usable(tmp_path):
  script = tmp_path / "saver.py"
  script.write_text(_CRASHING_SAVER)
  marker = tmp_path / "marker"
  directory = tmp_path / "ckpt"
  child = subprocess.Popen(
    [sys.executable, str(script), str(directory), str(marker)],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
  )
  deadline = time.time() + 120
  while not marker.exists():
    assert child.poll() is None, child.stdout.read().decode()
    assert time.time() < deadline, "the child never started its second save"
    time.sleep(0.1)
  child.send_signal(signal.SIGKILL)  # No cleanup, as in a power cut or OOM kill.
  child.wait()
  leftovers = [p.name for p in directory.iterdir()]
  assert any("tmp" in name for name in leftovers), leftovers  # Step 2 was half-written.

  checkpointer = Checkpointer(directory)
  assert checkpointer.latest_step() == 1
  abstract = {
    "w": jax.ShapeDtypeStruct((256, 256), jnp.float32),
    "step": jax.ShapeDtypeStruct((), jnp.int32),
  }
  restored = checkpointer.restore(1, abstract)
  np.testing.assert_array_equal(restored["w"], 1.0)
  # Saving step 2 again succeeds over the debris.
  checkpointer.save(2, {"w": jnp.full((256, 256), 2.0), "step": jnp.asarray(2)}, _iterator())
  checkpointer.wait()
  assert checkpointer.all_steps() == [1, 2]
  checkpointer.close()
