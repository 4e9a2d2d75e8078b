"""train.deterministic (jaxdl.determinism): XLA's deterministic-ops flags for a GPU, set before JAX
starts and never twice; nothing on a CPU; the setting and the flags in effect in metadata.json."""

import json
import os
import subprocess
import sys

import pytest

from jaxdl import determinism
from jaxdl.errors import ConfigError
from tests.conftest import REPO

DETERMINISTIC = "--xla_gpu_deterministic_ops=true --xla_gpu_exclude_nondeterministic_ops=true"


@pytest.mark.parametrize(
  "existing, expected",
  [
    ("", DETERMINISTIC),
    # Other flags stay, in front.
    (
      "--xla_force_host_platform_device_count=1",
      f"--xla_force_host_platform_device_count=1 {DETERMINISTIC}",
    ),
    # A flag already there is not repeated, whichever way it is written.
    (
      "--xla_gpu_deterministic_ops=true",
      "--xla_gpu_deterministic_ops=true --xla_gpu_exclude_nondeterministic_ops=true",
    ),
    (
      "--xla_gpu_exclude_nondeterministic_ops",
      "--xla_gpu_exclude_nondeterministic_ops --xla_gpu_deterministic_ops=true",
    ),
    (DETERMINISTIC, DETERMINISTIC),
  ],
)
def test_a_gpu_gets_the_flags_it_lacks(existing, expected):
  assert determinism.xla_flags(existing, True, "gpu") == expected


@pytest.mark.parametrize("existing", ["", "--xla_force_host_platform_device_count=1"])
def test_a_cpu_or_a_run_that_does_not_ask_gets_nothing(existing):
  assert determinism.xla_flags(existing, True, "cpu") == existing
  assert determinism.xla_flags(existing, False, "gpu") == existing


def test_a_flag_that_turns_determinism_off_is_refused():
  with pytest.raises(
    ConfigError,
    match=r"train.deterministic=true, but XLA_FLAGS sets --xla_gpu_deterministic_ops=false\. "
    r"Drop it from XLA_FLAGS, or set train.deterministic=false",
  ):
    determinism.xla_flags("--xla_gpu_deterministic_ops=false", True, "gpu")


def test_configure_sets_xla_flags_before_a_gpu_backend_starts(monkeypatch):
  monkeypatch.setattr(determinism, "_backend_started", lambda: False)
  monkeypatch.setattr(determinism.cpu_devices, "targets_cpu", lambda: False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  determinism.configure(True)
  assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=1 {DETERMINISTIC}"
  assert determinism.in_effect() == DETERMINISTIC.split()
  determinism.configure(True)  # Again: nothing added twice.
  assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=1 {DETERMINISTIC}"


def test_configure_leaves_a_cpu_alone(monkeypatch):
  monkeypatch.setattr(determinism, "_backend_started", lambda: False)
  monkeypatch.setattr(determinism.cpu_devices, "targets_cpu", lambda: True)
  monkeypatch.setenv("XLA_FLAGS", "")
  determinism.configure(True)
  assert os.environ["XLA_FLAGS"] == "" and determinism.in_effect() == []


def test_a_gpu_backend_started_without_the_flags_is_an_error(monkeypatch):
  monkeypatch.setattr(determinism, "_backend_started", lambda: True)
  monkeypatch.setattr(determinism.jax, "default_backend", lambda: "gpu")
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(ConfigError, match=r"already started its gpu backend.*fresh process"):
    determinism.configure(True)
  determinism.configure(False)  # Not asked: nothing to promise.
  monkeypatch.setenv("XLA_FLAGS", DETERMINISTIC)  # Set before it started: in effect.
  determinism.configure(True)


@pytest.mark.parametrize("bad", ["yes", 1])
def test_a_setting_that_is_not_a_bool_is_refused(bad):
  with pytest.raises(ConfigError, match=rf"train.deterministic={bad!r} must be true or false"):
    determinism.configure(bad)


# `jaxdl train`, where JAX_PLATFORMS=cpu forces the CPU; "pretend_gpu" makes jaxdl judge that JAX
# targets a GPU (as a CUDA plugin would), so the flags are set, and XLA:CPU ignores them.
_TRAIN = """
import sys
from jaxdl import cli
from jaxdl.train import cpu_devices
if sys.argv.pop(1) == "pretend_gpu":
  cpu_devices.targets_cpu = lambda: False
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("machine, flags", [("cpu", []), ("pretend_gpu", DETERMINISTIC.split())])
def test_a_run_records_the_setting_and_the_flags_in_effect(tmp_path, machine, flags):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", JAXDL_OFFLINE="1")
  command = [sys.executable, "-c", _TRAIN, machine, "train", "experiments/mnist_cnn.py"]
  command += ["--workdir", str(tmp_path / "run"), "--no-progress", "train.deterministic=true"]
  command += ["train.batch_size=32", "train.num_steps=2", "data.eval_batch_size=1000"]
  out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  (run,) = json.loads((tmp_path / "run" / "metadata.json").read_text())["runs"]
  assert run["deterministic"] == {"requested": True, "backend": "cpu", "xla_flags": flags}
  assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["deterministic"]
