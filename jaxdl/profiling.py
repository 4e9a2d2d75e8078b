"""A profiler trace of a few train steps (`train.profile_steps`), for TensorBoard and Perfetto.

`train.profile_steps=FIRST,COUNT` traces steps FIRST .. FIRST+COUNT-1, numbered as in metrics.jsonl
(step n is the n-th update), with jax.profiler into WORKDIR/profile/plugins/profile/<time>/:
  <host>.xplane.pb         TensorBoard's profile plugin: tensorboard --logdir WORKDIR/profile
  perfetto_trace.json.gz   https://ui.perfetto.dev (Open trace file)
Each step is a `StepTraceAnnotation("train", step_num=n)`, which both viewers show as a step.
A run of several processes writes each one's trace apart, into WORKDIR/profile/process_<i>/.

The trace holds exactly those steps: it starts once every earlier step has finished on the device
and stops once the last traced step has. Inside the window each dispatched call runs one step, so
that each has its own annotation; a call of several steps (`runtime.steps_per_call`) that would
cross an edge stops short of it. A call stopping short runs the same compiled program
(jaxdl.train.step.steps_in_one_call), so the numbers are an unprofiled run's, to the bit.
An evaluation or checkpoint that falls inside the window shows in the trace, unannotated.
"""

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from typing import Any, Callable

from etils import epath
import jax

from jaxdl import paths
from jaxdl.errors import ConfigError

logger = logging.getLogger("jaxdl")

DIRECTORY = "profile"  # Under the workdir.
KEY = "train.profile_steps"


@dataclasses.dataclass(frozen=True)
class Window:
  first: int  # The first and last traced step, 1-based as in metrics.jsonl.
  last: int


def _whole(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def window(setting: Any, total_steps: int) -> Window | None:
  """The steps `train.profile_steps=setting` asks to trace (None: off, for an empty setting);
  ConfigError naming the value and the fix for one no run of `total_steps` steps can trace."""
  if isinstance(setting, (tuple, list)) and not setting:
    return None
  example = f"e.g. {KEY}=10,5 traces steps 10 to 14"
  if not (isinstance(setting, (tuple, list)) and len(setting) == 2 and all(map(_whole, setting))):
    raise ConfigError(
      f"{KEY}={setting!r} must be two whole numbers, the first step to trace and how many "
      f"({example}), or [] for no profiling."
    )
  first, count = setting
  if first < 1 or count < 1:
    raise ConfigError(
      f"{KEY}={setting!r}: the first step must be >= 1 (steps count from 1, as in "
      f"metrics.jsonl) and the count >= 1 ({example}); [] turns profiling off."
    )
  last = first + count - 1
  if last > total_steps:
    raise ConfigError(
      f"{KEY}={setting!r} asks for steps {first} to {last}, but this run trains "
      f"{total_steps} steps; trace steps within 1..{total_steps} ({example})."
    )
  return Window(first, last)


class Trace:
  """Traces the steps of `window` as the training loop dispatches them.

  The loop cuts each call with `clip` and dispatches it inside `with trace.call(...)`; leaving
  `with Trace(...)` stops a trace that a stopped or failed run left open.

  Args:
    window: the steps to trace (`window()`), or None.
    directory: where jax.profiler writes (WORKDIR/profile).
    start_step: the step this run starts from; a window it has passed is not traced.
    wait: waits until every dispatched step has finished on the device.
    untimed: a context manager whose block training throughput leaves out (IntervalLog.untimed):
      starting and writing the trace is not training.
  """

  def __init__(
    self,
    window: Window | None,
    directory: epath.Path,
    *,
    start_step: int,
    wait: Callable[[], None],
    untimed: Callable[[], Any],
  ):
    self._window = window if window is None or window.first > start_step else None
    if window and not self._window:
      logger.warning(
        "%s: steps %d to %d were trained before this run resumed at step %d; nothing is "
        "profiled. Give a first step after %d to profile this run.",
        KEY,
        window.first,
        window.last,
        start_step,
        start_step,
      )
    if jax.process_count() > 1:  # jax.profiler writes a host's files apart only by host name.
      directory = directory / f"process_{jax.process_index()}"
    self._directory, self._wait, self._untimed = directory, wait, untimed
    self._tracing = False
    # jax.profiler writes local files only: a gs:// workdir's trace is written to a local
    # folder and copied into the workdir when it stops.
    self._local: str | None = None

  def clip(self, step: int, num_steps: int) -> int:
    """`num_steps` (the next call's steps after `step`), cut to stop at the window's edges;
    inside the window, 1."""
    w = self._window
    if w is None or step >= w.last:
      return num_steps
    if step < w.first - 1:
      return min(num_steps, w.first - 1 - step)
    return 1

  @contextlib.contextmanager
  def call(self, step: int, num_steps: int):
    """Around dispatching the call of steps step+1 .. step+num_steps (`num_steps` from `clip`):
    starts the trace before the window's first step, annotates a step inside the window, and
    stops the trace once the window's last step has finished."""
    w, n = self._window, step + 1
    if w is None or not w.first <= n <= w.last:
      yield
      return
    if n == w.first:
      self._wait()  # The steps before the window stay out of it.
      with self._untimed():
        if not paths.is_local(self._directory):
          self._local = tempfile.mkdtemp(prefix="jaxdl-profile-")
        jax.profiler.start_trace(self._local or self._directory, create_perfetto_trace=True)
      self._tracing = True
    with jax.profiler.StepTraceAnnotation("train", step_num=n):
      yield
    if n == w.last:
      self._wait()  # The trace holds the last step's device work.
      with self._untimed():
        self._stop()
      self._log()

  def _stop(self) -> None:
    self._tracing = False
    jax.profiler.stop_trace()
    if self._local is not None:
      paths.copy_tree(self._local, self._directory)
      shutil.rmtree(self._local, ignore_errors=True)
      self._local = None

  def _log(self) -> None:
    perfetto = max(
      self._directory.glob("plugins/profile/*/perfetto_trace.json.gz"),
      key=paths.mtime,
    )
    logger.info(
      "Profiled train steps %d to %d into %s. Open it with `tensorboard --logdir %s` (the "
      "Profile tab; pip install tensorboard-plugin-profile), or open %s at https://ui.perfetto.dev.",
      self._window.first,
      self._window.last,
      self._directory,
      self._directory,
      perfetto,
    )

  def __enter__(self) -> "Trace":
    return self

  def __exit__(self, *exc) -> None:
    if self._tracing:  # The run stopped inside the window: keep what was traced.
      self._stop()
      logger.warning(
        "The run stopped before the last profiled step, %d; the trace in %s ends early.",
        self._window.last,
        self._directory,
      )
