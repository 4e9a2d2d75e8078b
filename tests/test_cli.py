"""The `jaxdl` command: --debug tracebacks, eval and plot on a trained workdir (every user error's
exit status and message: tests/test_user_errors.py)."""

import os
import subprocess
import sys

from tests.conftest import REPO

EXPERIMENT = str(REPO / "experiments" / "mnist_cnn.py")
QUICK = [
  "train.num_steps=20",
  "train.batch_size=32",
  "train.log_every_steps=10",
  "data.eval_batch_size=500",
  "--no-progress",
]


def _jaxdl(*args, cwd=REPO):
  env = {**os.environ, "JAXDL_OFFLINE": "1"}
  return subprocess.run(
    [sys.executable, "-m", "jaxdl.cli", *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_debug_flag_shows_the_traceback():
  result = _jaxdl("--debug", "train", EXPERIMENT, "train.batchsize=3")
  assert result.returncode != 0 and "Traceback" in result.stderr
  assert "ConfigError" in result.stderr


def test_train_eval_plot(tmp_path):
  run_a, run_b = tmp_path / "a", tmp_path / "b"
  trained = _jaxdl("train", EXPERIMENT, *QUICK, "--workdir", str(run_a))
  assert trained.returncode == 0, trained.stderr
  assert "test accuracy" in trained.stdout and "2000" in trained.stdout
  accuracy_line = trained.stdout.strip().splitlines()[-1]
  assert _jaxdl("train", EXPERIMENT, *QUICK, "seed=1", "--workdir", str(run_b)).returncode == 0

  evaluated = _jaxdl("eval", str(run_a))
  assert evaluated.returncode == 0, evaluated.stderr
  # The same accuracy as the end of training, from the saved checkpoint.
  accuracy = accuracy_line.split("test accuracy ")[1].split(" ")[0]
  assert f"step 20: test accuracy {accuracy}" in evaluated.stdout

  plot = tmp_path / "curves.png"
  plotted = _jaxdl("plot", str(run_a), str(run_b), "-o", str(plot))
  assert plotted.returncode == 0, plotted.stderr
  assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
