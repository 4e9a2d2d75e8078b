"""Every user error through the `jaxdl` command: exit status 2, no traceback, and a message whose
first line says what is wrong and what to do (details may follow on further lines)."""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import pytest

from jaxdl import cli
from tests.conftest import REPO

EXPERIMENT = str(REPO / "experiments" / "mnist_cnn.py")
# The seed CNN's experiment with the quickest model to compile: the errors are about the workdir,
# the config and the checkpoint, not about the model.
TINY = [
  "model.cls=tests.test_user_errors:TinyNet",
  "model.features=8",  # Saved in config.json, so that a resume can contradict it.
  "train.num_steps=2",
  "train.batch_size=8",
  "train.log_every_steps=1",
  "data.eval_batch_size=1000",
  "--no-progress",
]


class TinyNet(nn.Module):
  """Two dense layers on the flattened image."""

  num_classes: int = 10
  features: int = 8

  @nn.compact
  def __call__(self, x_BHWC, *, train=False):
    del train
    x_BD = x_BHWC.reshape((x_BHWC.shape[0], -1))
    return nn.Dense(self.num_classes)(nn.Dense(self.features)(x_BD))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir of 2 steps of TinyNet, with checkpoints at steps 1 and 2."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  args = ["train", EXPERIMENT, *TINY, "train.checkpoint_every_steps=1", "--workdir", str(workdir)]
  assert cli.main(args) == 0
  return workdir


def _fails(capsys, args: list[str]) -> tuple[str, str]:
  """Runs `jaxdl ARGS`; checks exit status 2, no traceback and the `jaxdl CMD: error: ` prefix.
  Returns (first line of the message, the whole message)."""
  code = cli.main(args)
  err = capsys.readouterr().err
  assert code == 2, err
  assert "Traceback" not in err, err
  prefix = f"jaxdl {args[0]}: error: "
  assert err.startswith(prefix), err
  message = err[len(prefix) :]
  return message.splitlines()[0], message


def _has(line: str, *phrases: str) -> None:
  for phrase in phrases:
    assert phrase in line, f"{phrase!r} not in the first line: {line!r}"


# (args, phrases the first line must hold: the problem, then the fix).
CONFIG_ERRORS = {
  "unknown key": (
    ["train", EXPERIMENT, "train.batchsize=3"],
    ["Unknown config key 'train.batchsize'", "Did you mean train.batch_size"],
  ),
  "not an int": (
    ["train", EXPERIMENT, "train.batch_size=lots"],
    ["'lots' for train.batch_size is not a valid int", "Give a whole number"],
  ),
  "not a float": (
    ["train", EXPERIMENT, "optimizer.learning_rate=fast"],
    ["'fast' for optimizer.learning_rate is not a valid float", "Give a number"],
  ),
  "not key=value": (
    ["train", EXPERIMENT, "train.batch_size:3"],
    ["'train.batch_size:3' is not of the form key.path=value", "for example train.batch_size=128"],
  ),
  "missing experiment": (
    ["train", "experiments/nope.py"],
    ["'experiments/nope.py' does not exist", "Pass the path to a Python file"],
  ),
  "missing data dir": (
    ["train", EXPERIMENT, *TINY, "data.dir=/no/such/dir"],
    ["'/no/such/dir' does not exist", "Fix data.dir"],
  ),
  "batch larger than the data": (
    ["train", EXPERIMENT, *TINY, "train.batch_size=20000"],
    ["train.batch_size=20000 exceeds the 10000 training examples", "use a smaller batch"],
  ),
  "init.pretrained missing": (
    ["train", EXPERIMENT, *TINY, "init.pretrained=/no/such/gpt2"],
    ["'/no/such/gpt2' does not exist", "give the path of a Hugging Face or timm model folder"],
  ),
  "init.checkpoint missing": (
    ["train", EXPERIMENT, *TINY, "init.checkpoint=/no/such/run"],
    ["'/no/such/run' is not a jaxdl workdir or checkpoint: it does not exist", "Give the workdir"],
  ),
}


@pytest.mark.parametrize("args, first_line", CONFIG_ERRORS.values(), ids=CONFIG_ERRORS)
def test_config_errors(args, first_line, capsys, tmp_path):
  line, _ = _fails(capsys, [*args, "--workdir", str(tmp_path / "w")])
  _has(line, *first_line)
  saved = (tmp_path / "w" / "checkpoints").glob("[0-9]*")
  assert not list(saved)  # A refused run saves nothing.


def test_an_experiment_file_that_fails_to_import(capsys, tmp_path):
  (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
  line, _ = _fails(capsys, ["train", str(tmp_path / "broken.py"), "--workdir", str(tmp_path / "w")])
  _has(line, "broken.py' failed (RuntimeError: boom); fix the file", "--debug")


def test_resume_of_another_model_or_setup_is_refused(trained, capsys):
  before = {p: p.stat().st_mtime_ns for p in trained.rglob("*")}
  resume = ["train", EXPERIMENT, *TINY, "train.checkpoint_every_steps=1", "--workdir", str(trained)]
  line, message = _fails(capsys, [*resume, "model.features=4"])
  _has(line, f"Workdir {trained} holds a run of a different model", "use a new --workdir")
  assert "  model.features: saved 8, now 4" in message.splitlines()
  line, message = _fails(capsys, [*resume, "optimizer.learning_rate=0.1"])
  _has(line, "a different training setup", "use a new --workdir", "pass the saved values")
  assert "  optimizer.learning_rate: saved 0.001, now 0.1" in message.splitlines()
  assert {p: p.stat().st_mtime_ns for p in trained.rglob("*")} == before  # Nothing written.


def test_transfer_from_a_checkpoint_that_does_not_fit(trained, capsys, tmp_path):
  start = ["train", EXPERIMENT, *TINY, f"init.checkpoint={trained}"]
  line, message = _fails(capsys, [*start, "model.features=4", "--workdir", str(tmp_path / "a")])
  _has(line, "init.mapping does not fit (3 problems)", "fix init.mapping", "jaxdl summary")
  details = message.splitlines()[1:]  # Dense_0's kernel, Dense_1's kernel and bias.
  assert len(details) == 3 and all("has shape" in d for d in details), message
  mapping = "init.mapping=[('Dense_0','Dense_9')]"
  line, message = _fails(capsys, [*start, mapping, "--workdir", str(tmp_path / "b")])
  _has(line, "init.mapping does not fit (1 problem)", "fix init.mapping")
  assert "'Dense_9'" in message and "matches nothing" in message and "Dense_1" in message


def test_eval_errors(trained, capsys, tmp_path):
  line, _ = _fails(capsys, ["eval", str(tmp_path / "nothing")])
  _has(line, "is not a jaxdl workdir", "Pass the directory a `jaxdl train` run wrote")
  # A run that stopped before its first save: its config, no checkpoints.
  (tmp_path / "unsaved").mkdir()
  shutil.copy(trained / "config.json", tmp_path / "unsaved" / "config.json")
  line, _ = _fails(capsys, ["eval", str(tmp_path / "unsaved")])
  _has(line, "has no checkpoints yet", "train it first")
  line, _ = _fails(capsys, ["eval", str(trained), "--step", "7"])
  _has(line, "There is no checkpoint for step 7", "ask for one of the saved steps: [1, 2]")
  line, _ = _fails(capsys, ["eval", str(trained), "model.features=4"])
  _has(line, "model.features belong to the recipe", "drop them", "only run keys")


def test_generate_export_and_plot_errors(trained, capsys, tmp_path):
  line, _ = _fails(capsys, ["generate", str(trained)])
  _has(line, "has no tokenizer.json: it was not trained on text", "give the workdir of a language")
  out = tmp_path / "out"
  line, _ = _fails(capsys, ["export", str(trained), "--format", "hf", "--out", str(out)])
  _has(line, "A TinyNet cannot be exported as 'hf'", "jaxdl exports the families", "hf_gpt2")
  assert not out.exists()
  (tmp_path / "empty").mkdir()
  line, _ = _fails(capsys, ["plot", str(tmp_path / "empty"), "-o", str(tmp_path / "x.png")])
  _has(line, "no metrics.jsonl", "pass the workdir of a run that has logged")


SUMMARY_ERRORS = {
  "experiment and model": (
    [EXPERIMENT, "--model", "resnet50"],
    ["Give an experiment file or --model NAME, not both"],
  ),
  "model flag with an experiment": (
    [EXPERIMENT, "--input-shape", "1,28,28,1"],
    ["--input-shape applies with --model only", "an experiment takes its model"],
  ),
  "no-temporaries with a model": (
    ["--model", "resnet50", "--no-temporaries"],
    ["--no-temporaries applies to an experiment; --model measures no train step"],
  ),
  "nothing to summarise": ([], ["Give an experiment file (jaxdl summary experiments/"]),
}


@pytest.mark.parametrize("args, first_line", SUMMARY_ERRORS.values(), ids=SUMMARY_ERRORS)
def test_summary_errors(args, first_line, capsys):
  line, _ = _fails(capsys, ["summary", *args])
  _has(line, *first_line)


def test_incompatible_workdir_exits_2_through_the_command(trained, tmp_path):
  """The real `jaxdl train` process: its exit status and its stderr, logging included."""
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  result = subprocess.run(
    [sys.executable, "-m", "jaxdl.cli", "train", EXPERIMENT, *TINY, "model.features=4"]
    + ["--workdir", str(workdir)],
    cwd=REPO,
    env={**os.environ, "JAXDL_OFFLINE": "1"},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  first_line = result.stderr.splitlines()[0]
  assert first_line.startswith(f"jaxdl train: error: Workdir {workdir} holds a run of a different")
  assert "use a new --workdir" in first_line
  assert json.loads((workdir / "config.json").read_text())["model"]["features"] == 8
