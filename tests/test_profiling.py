"""train.profile_steps (jaxdl.profiling): a trace of exactly the asked steps, readable by
TensorBoard (xplane.pb) and Perfetto (perfetto_trace.json.gz), in a run whose numbers stay those
of an unprofiled run, to the bit; values no run can trace are refused before anything is written.
"""

import contextlib
import gzip
import json
import logging

import jax
import pytest

from jaxdl import config as config_lib
from jaxdl import metrics as metrics_lib
from jaxdl import profiling, trainer
from jaxdl.errors import ConfigError
from tests.conftest import REPO

# 8 steps, logged every 2 and evaluated every 4: calls of up to 4 steps stop at steps 2, 4, 6, 8.
SMALL = [
  "train.batch_size=32",
  "train.num_steps=8",
  "train.log_every_steps=2",
  "train.eval_every_steps=4",
  "data.eval_batch_size=500",
]


def _config(*overrides):
  config = config_lib.load_experiment(REPO / "experiments" / "mnist_cnn.py")
  config_lib.apply_overrides(config, [*SMALL, *overrides])
  return config


def _records(workdir):
  """Everything the run logged but its timings: train losses and the rest, and evals."""
  return [
    {k: v for k, v in r.items() if not k.startswith("perf/")}
    for r in metrics_lib.read_metrics(workdir)
  ]


def _trace_file(directory, pattern):
  """The one file of the trace jax.profiler wrote into `directory` (a workdir's profile/)."""
  (path,) = directory.glob(f"plugins/profile/*/{pattern}")
  return path


def _perfetto_steps(directory):
  """(step numbers of the "train" annotations, executions of the train call) in the Perfetto
  trace, in order."""
  with gzip.open(_trace_file(directory, "perfetto_trace.json.gz")) as f:
    events = json.load(f)["traceEvents"]
  steps = [int(e["args"]["step_num"]) for e in events if e.get("name") == "train"]
  # Each execution of a compiled program has its own run id on its ops' events.
  runs = {
    e["args"]["run_id"]
    for e in events
    if e.get("args", {}).get("hlo_module", "").startswith("jit_update")
  }
  return steps, len(runs)


def _xplane_steps(directory):
  """Step numbers of the "train" annotations in the xplane.pb TensorBoard reads."""
  profile = jax.profiler.ProfileData.from_file(str(_trace_file(directory, "*.xplane.pb")))
  return [
    int(dict(event.stats)["step_num"])
    for plane in profile.planes
    for line in plane.lines
    for event in line.events
    if event.name == "train"
  ]


@pytest.fixture(scope="module")
def unprofiled(tmp_path_factory):
  """The run the profiled ones must reproduce: calls of up to 4 steps, no trace."""
  workdir = tmp_path_factory.mktemp("unprofiled") / "run"
  trainer.train(_config("runtime.steps_per_call=4"), workdir, show_progress=False)
  return workdir


@pytest.mark.parametrize(
  "steps_per_call, profile_steps, expected",
  [
    # Both edges of the window (3|4, 5|6) fall inside calls of 2 steps, which are cut there.
    (4, "4,2", [4, 5]),
    (1, "[1,3]", [1, 2, 3]),  # From the very first step.
  ],
)
def test_the_trace_holds_exactly_the_asked_steps_and_the_numbers_stay(
  unprofiled, tmp_path, caplog, steps_per_call, profile_steps, expected
):
  workdir = tmp_path / "run"
  with caplog.at_level(logging.INFO, logger="jaxdl"):
    trainer.train(
      _config(f"runtime.steps_per_call={steps_per_call}", f"train.profile_steps={profile_steps}"),
      workdir,
      show_progress=False,
    )
  steps, train_calls = _perfetto_steps(workdir / "profile")
  assert steps == expected
  assert _xplane_steps(workdir / "profile") == expected
  # The device work of those steps and of no other: one call each, the last one finished.
  assert train_calls == len(expected)
  # Every train loss, interval metric and evaluation is the unprofiled run's, to the bit.
  records = _records(workdir)
  assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6, 8]
  assert [r["step"] for r in records if "eval/loss" in r] == [4, 8]
  assert records == _records(unprofiled)
  # One line says where the trace is and how to open it.
  (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Profiled")]
  assert f"tensorboard --logdir {workdir / 'profile'}" in line and "ui.perfetto.dev" in line
  assert str(_trace_file(workdir / "profile", "perfetto_trace.json.gz")) in line


def test_an_unprofiled_run_writes_no_trace(unprofiled):
  assert not (unprofiled / profiling.DIRECTORY).exists()


@pytest.mark.parametrize(
  "text, expected", [("10,5", [10, 5]), ("[10, 5]", [10, 5]), ("(10,5)", [10, 5]), ("[]", [])]
)
def test_the_command_line_forms(text, expected):
  config = config_lib.base_config()
  config_lib.apply_overrides(config, [f"train.profile_steps={text}"])
  assert config.train.profile_steps == expected


def test_a_number_on_the_command_line_is_refused():
  with pytest.raises(ConfigError, match=r"Value '5' for train.profile_steps is not a valid list"):
    config_lib.apply_overrides(config_lib.base_config(), ["train.profile_steps=5"])


def test_the_window():
  assert profiling.window((), 8) is None and profiling.window([], 8) is None
  assert profiling.window((3, 2), 8) == profiling.Window(3, 4)
  assert profiling.window([7, 2], 8) == profiling.Window(7, 8)  # Up to the last step.


@pytest.mark.parametrize(
  "setting, message",
  [
    ([3, 0], r"train.profile_steps=\[3, 0\]: the first step must be >= 1 .* the count >= 1"),
    ([0, 2], r"train.profile_steps=\[0, 2\]: the first step must be >= 1"),
    ([9, 1], r"train.profile_steps=\[9, 1\] asks for steps 9 to 9, but this run trains 8 steps"),
    ([7, 3], r"asks for steps 7 to 9, but this run trains 8 steps; trace steps within 1..8"),
    ([3], r"train.profile_steps=\[3\] must be two whole numbers"),
    ([3, 2, 1], r"must be two whole numbers, the first step to trace and how many"),
    ([2.5, 2], r"train.profile_steps=\[2.5, 2\] must be two whole numbers"),
    ([True, 2], r"must be two whole numbers"),
    (["3", "2"], r"must be two whole numbers.*e.g. train.profile_steps=10,5 traces steps 10 to 14"),
    (5, r"train.profile_steps=5 must be two whole numbers"),
  ],
)
def test_bad_windows_are_refused_naming_the_value_and_the_fix(setting, message):
  with pytest.raises(ConfigError, match=message):
    profiling.window(setting, 8)


def test_a_bad_window_stops_the_run_before_it_writes_anything(tmp_path):
  with pytest.raises(ConfigError, match=r"asks for steps 8 to 9, but this run trains 8 steps"):
    trainer.train(_config("train.profile_steps=8,2"), tmp_path / "run", show_progress=False)
  assert not (tmp_path / "run").exists()


def _trace(window, directory, start_step=0):
  waits = []
  trace = profiling.Trace(
    window,
    directory,
    start_step=start_step,
    wait=lambda: waits.append(1),
    untimed=contextlib.nullcontext,
  )
  return trace, waits


def test_calls_stop_at_the_window_s_edges_and_run_one_step_inside(tmp_path):
  trace, _ = _trace(profiling.Window(5, 7), tmp_path)
  # (step, the steps the call may run) -> the steps it runs.
  assert [trace.clip(step, 16) for step in (0, 3, 4, 5, 6, 7, 8)] == [4, 1, 1, 1, 1, 16, 16]
  assert trace.clip(0, 2) == 2
  no_trace, _ = _trace(None, tmp_path)
  assert no_trace.clip(4, 16) == 16


def test_a_resumed_run_past_the_window_traces_nothing(tmp_path, caplog):
  with caplog.at_level(logging.WARNING, logger="jaxdl"):
    trace, waits = _trace(profiling.Window(3, 4), tmp_path, start_step=3)
  assert "steps 3 to 4 were trained before this run resumed at step 3" in caplog.text
  assert trace.clip(3, 16) == 16
  with trace, trace.call(3, 1):
    pass
  assert not waits and not list(tmp_path.iterdir())


def test_a_run_stopped_inside_the_window_keeps_its_trace(tmp_path, caplog):
  trace, waits = _trace(profiling.Window(1, 3), tmp_path)
  with caplog.at_level(logging.WARNING, logger="jaxdl"):
    with pytest.raises(KeyboardInterrupt):
      with trace:
        with trace.call(0, 1):
          jax.numpy.ones(3).block_until_ready()
        raise KeyboardInterrupt
  assert waits == [1]  # Before the window, not after: it never ended.
  assert "the trace in" in caplog.text and "ends early" in caplog.text
  assert _xplane_steps(tmp_path) == [1]
  jax.profiler.start_trace(tmp_path / "again")  # The profiler is free again.
  jax.profiler.stop_trace()
