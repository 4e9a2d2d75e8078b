"""Logging a run's train metrics once per interval: the interval's metric means, throughput and MFU.

The train step adds its metrics to running sums on the device (jaxdl.train.step); at the end of an
interval the trainer hands the sums here, and they are read one call later, while the device runs
the next one. Throughput is timed from the end of one interval to the end of the next, leaving out
what is not training: the first call's compilation (logged once, as perf/compile_seconds, with the
first interval) and evaluations.

It lives beside jaxdl.metrics rather than in jaxdl.train, which touches no files: it writes
metrics.jsonl (jaxdl.metrics.MetricWriter), and MFU on a CPU reads a cached probe (jaxdl.perf).
"""

import contextlib
import logging
import time
from typing import Any, Iterator

import jax
import numpy as np

from jaxdl import metrics as metrics_lib
from jaxdl import perf as perf_lib
from jaxdl import sweep as sweep_lib
from jaxdl.errors import NonFiniteLossError
from jaxdl.progress import Progress
from jaxdl.train import parallel

logger = logging.getLogger("jaxdl")


class IntervalLog:
  """Writes each interval's means and perf/ metrics to `writer` and `progress`.

  Args:
    layout: where the metric sums live (they are read with `layout.to_host`).
    runs: one run, or a sweep's members (means per member, and their mean and std).
    examples_per_step: examples one step trains on, over all sweep members.
    tokens_per_example: tokens an example holds (perf/tokens_per_sec), or 0 for none.
    start_step: the step the run starts at (resumed or 0), where the first interval starts.
    compute_dtype: the model's compute dtype, whose peak FLOP/s MFU is against.
    steps_per_call: train steps a compiled call runs (one step's FLOPs are counted either way).
  """

  def __init__(
    self,
    writer: metrics_lib.MetricWriter,
    progress: Progress,
    *,
    layout: parallel.Layout,
    runs: sweep_lib.Runs,
    examples_per_step: int,
    tokens_per_example: int,
    start_step: int,
    compute_dtype: str,
    steps_per_call: int,
  ):
    self._writer, self._progress, self._layout, self._runs = writer, progress, layout, runs
    self._compute_dtype, self._steps_loop = compute_dtype, steps_per_call > 1
    self._examples_per_step, self._tokens_per_example = examples_per_step, tokens_per_example
    self._pending = None  # (step, metric sums) to read once the next call is dispatched.
    self._efficiency = None  # FLOPs of the compiled step and the devices' peak: perf/mfu.
    self._compile_seconds = None  # Logged once, with the first interval.
    self._t_last, self._step_last = time.perf_counter(), start_step

  def compiled(self, compiled_call: Any, *, since: float) -> None:
    """Takes the compiled train call's FLOPs, and leaves the time from `since` (a perf_counter
    time: compiling, reading its batch, measuring the FLOPs and the peak) out of throughput."""
    self._efficiency = step_efficiency(
      compiled_call, self._layout, self._compute_dtype, self._steps_loop
    )
    self._compile_seconds = time.perf_counter() - since
    self._t_last += self._compile_seconds

  def end_interval(self, step: int, sums: Any) -> None:
    """The interval ending at `step`, whose metric sums are `sums`: written at the next `flush`."""
    self._pending = (step, sums)

  def flush(self) -> None:
    """Writes the pending interval's means, timed from when its last step finished."""
    if self._pending is None:
      return
    step, sums = self._pending
    self._pending = None
    means = interval_means(self._layout.to_host(sums), self._runs)  # Waits for `step`.
    now = time.perf_counter()
    seconds_per_step = (now - self._t_last) / (step - self._step_last)
    self._t_last, self._step_last = now, step
    perf = {
      "perf/examples_per_sec": self._examples_per_step / seconds_per_step,
      "perf/step_time_ms": seconds_per_step * 1e3,
      **self._efficiency.metrics(seconds_per_step),
    }
    if self._tokens_per_example:
      perf["perf/tokens_per_sec"] = perf["perf/examples_per_sec"] * self._tokens_per_example
    if self._compile_seconds is not None:
      perf["perf/compile_seconds"], self._compile_seconds = self._compile_seconds, None
    self._writer.write(step, {**means, **perf})
    self._progress.update(step, {**means, **perf})

  @contextlib.contextmanager
  def untimed(self) -> Iterator[None]:
    """Leaves the wall time of the `with` block (an evaluation) out of training throughput."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self._t_last += time.perf_counter() - start


def step_efficiency(
  compiled_call: Any, layout: parallel.Layout, compute_dtype: str, steps_loop: bool = False
) -> perf_lib.Efficiency:
  """The compiled call's FLOPs a step (XLA's cost analysis) against its devices' peak, and a log
  line. `steps_loop`: the call runs several steps (jaxdl.train.step.steps_in_one_call)."""
  devices = list(layout.mesh.devices.flat)
  efficiency = perf_lib.Efficiency.for_step(compiled_call, devices, compute_dtype, steps_loop)
  if efficiency.flops_per_step is not None:
    logger.info(
      "Train step: %.3g GFLOP%s; peak %s.",
      efficiency.flops_per_step / 1e9,
      " (a lower bound: XLA counts a loop's body once, e.g. under gradient accumulation or a scan)"
      if efficiency.lower_bound
      else "",
      efficiency.peak_source or "unknown",
    )
  return efficiency


def raise_if_nonfinite(sums: dict[str, Any], runs: sweep_lib.Runs) -> None:
  """NonFiniteLossError if a step of the metric sums (host arrays) had a NaN or Inf metric."""
  bad_steps = np.atleast_1d(jax.device_get(sums["first_nonfinite_step"]))
  if (bad_steps >= 0).any():
    step = int(bad_steps[bad_steps >= 0].min())
    which = runs.which(bad_steps >= 0)
    raise NonFiniteLossError(
      f"Training diverged at step {step}{which}: the loss, gradients or "
      "parameters became NaN or Inf."
    )


def interval_means(sums: dict[str, Any], runs: sweep_lib.Runs) -> dict[str, float]:
  """Means of accumulated train metrics (host arrays, Layout.to_host); stops the run on a NaN or
  Inf metric."""
  raise_if_nonfinite(sums, runs)
  return runs.metrics(sums, lambda s: {k: float(v) / int(s["count"]) for k, v in s["sums"].items()})
