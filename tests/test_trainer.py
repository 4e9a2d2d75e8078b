"""End-to-end runs of the training loop on the shipped MNIST subset: reproducibility to the bit,
exact resume (by num_steps and by SIGTERM), divergence, workdir safety, and the files a run writes.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxdl import config as config_lib
from jaxdl import metrics as metrics_lib
from jaxdl import perf, trainer
from jaxdl.checkpoint import Checkpointer
from jaxdl.errors import CheckpointError, NonFiniteLossError
from tests.conftest import REPO

EXPERIMENT = REPO / "experiments" / "mnist_cnn.py"
BATCH = 32
# Small and quick: 32 examples a step, logs every 10 steps, evals every 30, saves every 25. XLA's
# convolutions (not the default Winograd kernels on one CPU device) so that the logged FLOPs are
# those of a direct convolution, counted by hand below.
SMALL = [
  f"train.batch_size={BATCH}",
  "runtime.kernels=xla",
  "train.log_every_steps=10",
  "train.eval_every_steps=30",
  "train.checkpoint_every_steps=25",
  "data.eval_batch_size=500",
]


def _config(*overrides):
  config = config_lib.load_experiment(EXPERIMENT)
  config_lib.apply_overrides(config, [*SMALL, *overrides])
  return config


def _train(workdir, *overrides):
  return trainer.train(_config(*overrides), workdir, show_progress=False)


def _metrics_by_step(workdir, *, include_perf=False):
  """{step: {metric: value}} merged over all lines, `perf/` timings left out."""
  merged = {}
  for record in metrics_lib.read_metrics(workdir):
    merged.setdefault(record["step"], {}).update(
      {k: v for k, v in record.items() if include_perf or not k.startswith("perf/")}
    )
  return merged


# The seed CNN's multiply-adds an example, counted by hand at 2 FLOPs each (XLA's convention): a
# VALID 3x3 convolution 2 * output pixels * 3 * 3 * in * out channels, a dense layer 2 * in * out.
FORWARD_FLOPS = {
  "conv1": 2 * 26 * 26 * 3 * 3 * 1 * 32,  # 28x28x1 -> 26x26x32, pooled to 13x13
  "conv2": 2 * 11 * 11 * 3 * 3 * 32 * 64,  # -> 11x11x64, pooled to 5x5
  "conv3": 2 * 3 * 3 * 3 * 3 * 64 * 64,  # -> 3x3x64
  "dense1": 2 * 576 * 64,
  "logits": 2 * 64 * 10,
}
# Training: each layer's forward product, its kernel gradient (as many FLOPs again) and its input
# gradient (again), except conv1's input gradient: the images need none.
TRAIN_FLOPS_PER_EXAMPLE = 3 * sum(FORWARD_FLOPS.values()) - FORWARD_FLOPS["conv1"]
# XLA's count also holds the elementwise work, about one FLOP an element of each op: bias adds,
# ReLUs, max-pools and their gradients over the 37,034 activations an example (~10 ops each,
# ~2% of the above), the loss, and Adam's ~20 ops on each of the 93,322 parameters once a step
# (~0.4% at batch 32). Measured: 2.4% over; forgetting the backward pass would be -67%, conv2's
# input gradient -27%, one example's count for the batch's -97%.
ELEMENTWISE_ALLOWANCE = 1.04


def _cpu_peak_from_cache(dtype):
  """The CPU's peak FLOP/s where jaxdl.perf documents it: measured once, kept in cpu_peak.json."""
  entries = json.loads((perf.cache_dir() / perf.CPU_PEAK_FILE).read_text())
  return entries[perf.cpu_cache_key(dtype)]["flops_per_sec"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """An uninterrupted 60-step run, the trajectory the other runs must reproduce."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  result = _train(workdir, "train.num_steps=60")
  return workdir, result


def test_run_writes_its_files(reference_run):
  workdir, result = reference_run
  assert result.step == 60 and result.interrupted_by is None
  assert sorted(p.name for p in workdir.iterdir()) == [
    "checkpoints",
    "config.json",
    "metadata.json",
    "metrics.jsonl",
    "tensorboard",
  ]
  assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 60
  (run,) = json.loads((workdir / "metadata.json").read_text())["runs"]
  assert run["data"]["kind"] == "shipped_subset" and run["data"]["num_train"] == 10_000
  assert run["versions"]["jax"] == jax.__version__ and run["devices"] and run["command"]
  assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())
  # Saved every 25 steps and at the end; the default keeps the last 3.
  assert Checkpointer(workdir / "checkpoints", read_only=True).all_steps() == [25, 50, 60]

  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert all(isinstance(r["step"], int) for r in records)
  train_steps = [r["step"] for r in records if "train/loss" in r]
  eval_steps = [r["step"] for r in records if "eval/accuracy" in r]
  assert train_steps == [10, 20, 30, 40, 50, 60] and eval_steps == [30, 60]
  for r in records:
    if "train/loss" in r:
      assert {
        "train/accuracy",
        "train/learning_rate",
        "train/grad_norm",
        "perf/examples_per_sec",
        "perf/step_time_ms",
        "perf/tflops_per_sec",
        "perf/mfu",
      } <= set(r)
      # Throughput: a step of BATCH examples, the FLOPs of one step over the logged step time
      # (the hand count, plus XLA's elementwise ops), and that against the CPU's peak.
      seconds_per_step = r["perf/step_time_ms"] / 1e3
      np.testing.assert_allclose(r["perf/examples_per_sec"] * seconds_per_step, BATCH, rtol=1e-9)
      counted_tflops = BATCH * TRAIN_FLOPS_PER_EXAMPLE / seconds_per_step / 1e12
      assert 1 <= r["perf/tflops_per_sec"] / counted_tflops < ELEMENTWISE_ALLOWANCE, r
      peak = _cpu_peak_from_cache("float32")  # The model computes in float32.
      np.testing.assert_allclose(r["perf/mfu"], r["perf/tflops_per_sec"] * 1e12 / peak, rtol=1e-9)
      assert 0 < r["perf/mfu"] < 1
  # Compilation is timed apart, once, and left out of the throughput.
  assert [r["step"] for r in records if "perf/compile_seconds" in r] == [10]
  # Full precision: every float reads back to exactly the value written.
  for line, record in zip(lines, records):
    assert json.dumps(record) == line
  final = _metrics_by_step(workdir)[60]
  assert final["eval/num_examples"] == 2000.0  # Every test example, none twice.
  assert result.eval_metrics["eval/accuracy"] == final["eval/accuracy"] > 0.75
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert losses[-1] < losses[0] / 2


def test_an_eval_starts_after_the_train_steps_before_it_have_finished(tmp_path, monkeypatch):
  # Throughput leaves evals out: the trainer subtracts an eval's wall time from the interval.
  # Steps still running when the eval was dispatched finished inside that time and went
  # uncounted (the seed CNN, evaluating every epoch, logged 19-27 ms a step at batch 256 where
  # a step takes ~26). So the train state must be computed before the eval's clock starts.
  ready_at_eval = []

  def evaluate(eval_step, state, *args, **kwargs):
    ready_at_eval.append(all(leaf.is_ready() for leaf in jax.tree.leaves(state)))
    return original(eval_step, state, *args, **kwargs)

  original = trainer.evaluate
  monkeypatch.setattr(trainer, "evaluate", evaluate)
  # Calls of 10 steps (a call ends where the host needs the state). At step 10 the eval comes
  # between log steps, so nothing has waited for the call that ends there.
  _train(
    tmp_path / "run",
    "train.num_steps=20",
    "runtime.steps_per_call=16",
    "train.log_every_steps=20",
    "train.eval_every_steps=10",
  )
  assert ready_at_eval == [True, True]


def test_same_seed_same_numbers_to_the_bit(reference_run, tmp_path):
  workdir, _ = reference_run
  _train(tmp_path / "again", "train.num_steps=60")
  assert _metrics_by_step(tmp_path / "again") == _metrics_by_step(workdir)


def test_other_seed_other_numbers(reference_run, tmp_path):
  workdir, _ = reference_run
  _train(tmp_path / "seed1", "train.num_steps=60", "seed=1")
  ours, theirs = _metrics_by_step(tmp_path / "seed1"), _metrics_by_step(workdir)
  assert ours.keys() == theirs.keys()
  assert ours[10]["train/loss"] != theirs[10]["train/loss"]
  assert ours[60]["eval/loss"] != theirs[60]["eval/loss"]


def test_stop_and_resume_by_num_steps_is_exact(reference_run, tmp_path):
  workdir, _ = reference_run
  run = tmp_path / "resumed"
  # 35 is mid-way through a logging interval: the partial sums must survive the checkpoint.
  first = _train(run, "train.num_steps=35")
  assert first.step == 35
  _train(run, "train.num_steps=60")
  ours, theirs = _metrics_by_step(run), _metrics_by_step(workdir)
  assert ours[60] == theirs[60]
  for step in (10, 20, 30, 40, 50):
    assert ours[step] == theirs[step], step
  runs = json.loads((run / "metadata.json").read_text())["runs"]
  assert [r["start_step"] for r in runs] == [0, 35]


def test_resume_after_crash_past_last_checkpoint(reference_run, tmp_path):
  """Lines logged after the last checkpoint are set aside, then logged again identically."""
  workdir, _ = reference_run
  run = tmp_path / "crashed"
  _train(run, "train.num_steps=60")
  # Pretend the process died after step 60's logs but before its checkpoint was written.
  checkpointer = Checkpointer(run / "checkpoints")
  for step in checkpointer.all_steps():
    if step > 50:
      checkpointer._manager.delete(step)  # pylint: disable=protected-access
  checkpointer.close()
  _train(run, "train.num_steps=60")
  assert _metrics_by_step(run) == _metrics_by_step(workdir)
  assert (run / "metrics.jsonl.dropped").exists()
  steps = [r["step"] for r in metrics_lib.read_metrics(run)]
  assert steps == sorted(steps)  # No step logged twice.


# Slow (a training process signalled, then resumed: ~9 s); in the default suite
# test_ctrl_c_saves_and_resumes_exactly covers saving on a signal (SIGINT, in process) and resuming.
@pytest.mark.slow
def test_sigterm_saves_and_resumes_exactly(tmp_path):
  run = tmp_path / "signalled"
  env = {**os.environ, "JAXDL_OFFLINE": "1"}
  command = [
    sys.executable,
    "-m",
    "jaxdl.cli",
    "train",
    str(EXPERIMENT),
    *SMALL,
    "train.num_steps=5000",
    "--workdir",
    str(run),
    "--no-progress",
  ]
  child = subprocess.Popen(
    command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
  )
  deadline = time.time() + 180
  while not metrics_lib.read_metrics(run):  # Wait until it is training.
    assert child.poll() is None, child.stdout.read().decode()
    assert time.time() < deadline
    time.sleep(0.05)
  child.send_signal(signal.SIGTERM)
  output = child.communicate(timeout=120)[0].decode()
  assert child.returncode == 128 + signal.SIGTERM, output
  stopped_at = Checkpointer(run / "checkpoints", read_only=True).latest_step()
  assert 10 <= stopped_at < 5000, output
  assert f"Stopped by signal {int(signal.SIGTERM)} after step {stopped_at}" in output

  end = stopped_at + 17  # Past the stop, ending mid-interval.
  _train(run, f"train.num_steps={end}")
  _train(tmp_path / "straight", f"train.num_steps={end}")
  ours, theirs = _metrics_by_step(run), _metrics_by_step(tmp_path / "straight")
  assert ours[end] == theirs[end]
  for step in theirs:
    if step in ours and step != stopped_at:
      assert ours[step] == theirs[step], step


def test_ctrl_c_saves_and_resumes_exactly(reference_run, tmp_path, monkeypatch):
  workdir, _ = reference_run
  run = tmp_path / "ctrl_c"
  original_write = metrics_lib.MetricWriter.write

  def write_then_interrupt(self, step, metrics):
    original_write(self, step, metrics)
    if step == 20:  # Inside train(), where its handler is installed: a real SIGINT.
      os.kill(os.getpid(), signal.SIGINT)

  monkeypatch.setattr(metrics_lib.MetricWriter, "write", write_then_interrupt)
  # What train() must put back: the default handler, or SIG_IGN in a background job.
  handler_before = signal.getsignal(signal.SIGINT)
  stopped = _train(run, "train.num_steps=60")
  monkeypatch.setattr(metrics_lib.MetricWriter, "write", original_write)
  assert stopped.interrupted_by == signal.SIGINT and 20 < stopped.step < 60
  assert Checkpointer(run / "checkpoints", read_only=True).latest_step() == stopped.step
  assert signal.getsignal(signal.SIGINT) == handler_before  # Handler restored.
  _train(run, "train.num_steps=60")
  assert _metrics_by_step(run)[60] == _metrics_by_step(workdir)[60]


def test_divergence_stops_with_step_and_keeps_good_checkpoint(tmp_path):
  run = tmp_path / "diverged"
  overrides = [
    "optimizer.name=sgd",
    "optimizer.learning_rate=1e4",
    "train.num_steps=30",
    "train.checkpoint_every_steps=2",
  ]
  with pytest.raises(
    NonFiniteLossError,
    match=r"diverged at step 3.*last good checkpoint is "
    r"step 2",
  ) as info:
    _train(run, *overrides)
  checkpointer = Checkpointer(run / "checkpoints", read_only=True)
  assert checkpointer.all_steps() == [2]
  config = _config(*overrides)
  abstract = trainer.abstract_loop(trainer.build(config, trainer.load_data(config)))
  saved = checkpointer.restore(2, abstract)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved["state"].params))
  assert "Lower optimizer.learning_rate" in str(info.value)


def test_workdir_of_another_model_is_never_overwritten(reference_run):
  workdir, _ = reference_run
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
  with pytest.raises(
    CheckpointError,
    match=r"(?s)different model; use a new --workdir.*model\.num_classes: saved 10, "
    r"now 5",
  ):
    _train(workdir, "train.num_steps=60", "model.num_classes=5")
  with pytest.raises(
    CheckpointError, match=r"(?s)different training setup.*optimizer\.learning_rate"
  ):
    _train(workdir, "train.num_steps=60", "optimizer.learning_rate=0.1")
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def test_run_that_fails_before_training_writes_nothing(tmp_path):
  from jaxdl.errors import DataError  # pylint: disable=g-import-not-at-top

  with pytest.raises(DataError, match="data.dir"):
    _train(tmp_path / "bad", "train.num_steps=5", "data.dir=/no/such/dir")
  assert not (tmp_path / "bad").exists()


def test_workdir_without_checkpoints_takes_another_config(tmp_path):
  """A run that died before its first save left nothing to mix with."""
  run = tmp_path / "early"
  run.mkdir()
  (run / "config.json").write_text(config_lib.to_json(_config("model.num_classes=5")))
  result = _train(run, "train.num_steps=5")
  assert result.step == 5
  assert json.loads((run / "config.json").read_text())["model"]["num_classes"] == 10


def test_non_jaxdl_directory_is_refused(tmp_path):
  (tmp_path / "thesis.tex").write_text("precious")
  with pytest.raises(CheckpointError, match="not a jaxdl workdir"):
    _train(tmp_path, "train.num_steps=5")
  assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_finished_run_reports_without_training(reference_run):
  workdir, result = reference_run
  before = (workdir / "metrics.jsonl").read_text()
  again = _train(workdir, "train.num_steps=60")
  assert again.step == 60 and again.eval_metrics == result.eval_metrics
  assert (workdir / "metrics.jsonl").read_text() == before


def test_evaluate_workdir_matches_training_eval(reference_run):
  workdir, result = reference_run
  step, metrics, _ = trainer.evaluate_workdir(workdir)
  assert step == 60 and metrics == result.eval_metrics
  step, metrics, _ = trainer.evaluate_workdir(workdir, step=50)
  assert step == 50 and metrics["eval/num_examples"] == 2000.0
  with pytest.raises(CheckpointError, match="no checkpoint for step 7"):
    trainer.evaluate_workdir(workdir, step=7)
