"""parallel.cpu_devices: how many JAX devices a CPU host is split into, and when it applies.

That training on 8 CPU devices follows the 1-device run (to float rounding) is tested in
tests/test_parallel.py and tests/test_multidevice.py; this file tests the choice itself.
"""

import json
import os
import subprocess
import sys

import pytest

from jaxdl.errors import ConfigError
from jaxdl.train import cpu_devices
from tests.conftest import REPO


@pytest.mark.parametrize(
  "setting, batch_sizes, expected",
  [
    ("auto", [64, 256], 8),
    ("auto", [12, 100], 4),  # The most that divides both.
    ("auto", [7, 256], 1),
    ("auto", [], 8),
    (2, [64, 256], 2),
    ("3", [64], 3),  # From a command-line override; not checked against the batch here.
  ],
)
def test_choose(setting, batch_sizes, expected):
  assert cpu_devices.choose(setting, batch_sizes) == expected


@pytest.mark.parametrize("bad", [0, -2, "four", 2.5, True])
def test_choose_rejects_bad_settings(bad):
  with pytest.raises(ConfigError, match="parallel.cpu_devices=.*'auto' or a whole number"):
    cpu_devices.choose(bad, [64])


_PROBE = """
import json, logging, sys
import jax
from jaxdl.train import cpu_devices
parallel = json.loads(sys.argv[1])
if parallel.pop("start_jax_first", False):
  jax.devices()
returned = cpu_devices.configure(parallel, [64, 400], sweep=parallel.pop("sweep", False))
print(json.dumps({"returned": returned, "devices": jax.local_device_count()}))
"""


def _probe(parallel, xla_flags=None):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  out = subprocess.run(
    [sys.executable, "-c", _PROBE, json.dumps(parallel)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.parametrize(
  "parallel, xla_flags, expected",
  [
    ({"cpu_devices": "auto"}, None, {"returned": 8, "devices": 8}),
    ({"cpu_devices": 2}, None, {"returned": 2, "devices": 2}),
    ({"cpu_devices": 1}, None, {"returned": 1, "devices": 1}),
    # Whoever chose a count before wins, and under auto sweeps and pmap keep the host whole.
    (
      {"cpu_devices": "auto"},
      "--xla_force_host_platform_device_count=3",
      {"returned": None, "devices": 3},
    ),
    ({"cpu_devices": "auto", "sweep": True}, None, {"returned": None, "devices": 1}),
    ({"cpu_devices": "auto", "strategy": "pmap"}, None, {"returned": None, "devices": 1}),
    # The environment's choice wins over an explicit count too; 1 is the default.
    (
      {"cpu_devices": 2},
      "--xla_force_host_platform_device_count=3",
      {"returned": None, "devices": 3},
    ),
    ({}, None, {"returned": 1, "devices": 1}),
  ],
)
def test_configure_in_a_fresh_process(parallel, xla_flags, expected):
  result, _ = _probe(parallel, xla_flags)
  assert result == expected


def test_configure_after_jax_started_leaves_it_and_says_so():
  result, stderr = _probe({"cpu_devices": 4, "start_jax_first": True})
  assert result == {"returned": None, "devices": 1}
  assert "parallel.cpu_devices=4 not applied: JAX already started with 1 CPU device" in stderr


def test_config_takes_a_count_or_auto():
  from jaxdl import config as config_lib

  config = config_lib.base_config()
  assert config.parallel.cpu_devices == 1
  config_lib.apply_overrides(config, ["parallel.cpu_devices=auto"])
  assert config.parallel.cpu_devices == "auto"
  experiment = config_lib.load_experiment(REPO / "experiments" / "mnist_cnn.py")
  assert experiment.parallel.cpu_devices == 1  # im2col convolutions keep both cores busy.
  config_lib.apply_overrides(experiment, ["parallel.cpu_devices=4"])
  assert experiment.parallel.cpu_devices == 4


# Slow (two CLI processes, ~10 s): end to end, run by CI's `-m slow`.
@pytest.mark.slow
def test_cli_train_splits_the_host_and_eval_reproduces_its_evaluation(tmp_path):
  """`jaxdl train` on the seed CNN with parallel.cpu_devices=auto runs on 8 CPU devices; `jaxdl
  eval` later in a fresh process uses the run's devices again, so it reproduces the final
  evaluation to the bit."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", JAXDL_OFFLINE="1")
  run = tmp_path / "run"
  common = dict(cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  trained = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxdl.cli",
      "train",
      str(REPO / "experiments" / "mnist_cnn.py"),
      "train.num_steps=8",
      "train.batch_size=32",
      "train.log_every_steps=4",
      "train.eval_every_steps=8",
      "data.eval_batch_size=400",
      "parallel.cpu_devices=auto",
      "--workdir",
      str(run),
      "--no-progress",
    ],
    **common,
  )
  assert trained.returncode == 0, trained.stderr
  assert "Split this CPU host into 8 JAX devices" in trained.stderr + trained.stdout
  metadata = json.loads((run / "metadata.json").read_text())
  runs = metadata if isinstance(metadata, list) else metadata.get("runs", [metadata])
  assert len(runs[-1]["devices"]) == 8
  final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  final_eval = [r for r in final if "eval/loss" in r][-1]
  script = (
    "import json, sys, jax; from jaxdl import trainer; "
    "step, metrics, _ = trainer.evaluate_workdir(sys.argv[1]); "
    "print(json.dumps({'step': step, 'devices': jax.device_count(), **metrics}))"
  )
  evaluated = subprocess.run([sys.executable, "-c", script, str(run)], **common)
  assert evaluated.returncode == 0, evaluated.stderr
  again = json.loads(evaluated.stdout.strip().splitlines()[-1])
  assert again["step"] == 8 and again["devices"] == 8
  assert again["eval/loss"] == final_eval["eval/loss"]
  assert again["eval/accuracy"] == final_eval["eval/accuracy"]
