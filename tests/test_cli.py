"""The `jaxdl` command: user errors without tracebacks, eval and plot on a trained workdir."""

import os
import subprocess
import sys

import pytest

from jaxdl import cli
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


@pytest.mark.parametrize(
  "args, message",
  [
    (["train", EXPERIMENT, "train.batchsize=3"], "Did you mean train.batch_size"),
    (["train", EXPERIMENT, "train.batch_size=lots"], "not a valid int"),
    (["train", "experiments/nope.py"], "does not exist"),
    (["train", EXPERIMENT, "data.dir=/no/such/dir"], "Fix data.dir"),
    (["eval", "/no/such/workdir"], "not a jaxdl workdir"),
    (["train", EXPERIMENT, "train.batch_size=20000"], "20000"),
  ],
)
def test_user_errors_are_one_message_without_traceback(args, message, capsys, tmp_path):
  code = cli.main([*args, "--workdir", str(tmp_path / "w")] if args[0] == "train" else args)
  err = capsys.readouterr().err
  assert code == 2
  assert message in err and "Traceback" not in err
  assert err.startswith(f"jaxdl {args[0]}: error:")


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

  empty = tmp_path / "empty"
  empty.mkdir()
  failed = _jaxdl("plot", str(empty), "-o", str(tmp_path / "x.png"))
  assert failed.returncode == 2 and "no metrics.jsonl" in failed.stderr
