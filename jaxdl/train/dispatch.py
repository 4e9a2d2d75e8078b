"""Dispatching train calls: one compiled call of 1 or k steps (jaxdl.train.steps_per_call), and how
far the host may run ahead of the device."""

import collections
import functools
from typing import Any, Callable, Iterator

import numpy as np

from jaxdl.train import parallel
from jaxdl.train import step as step_lib

MAX_STEPS_AHEAD = 2  # Train steps the host may dispatch before the device has finished them.


class TrainCalls:
  """Runs the train update a call at a time on batches read from `batches`.

  `update` is pure (state, sums, batch, rng) -> (state, sums, loss) (the trainer's Setup.update);
  each call runs it on up to `steps_per_call` batches, the state and sums donated. The host keeps
  at most max(MAX_STEPS_AHEAD, steps_per_call) steps in flight: enough to keep the device busy,
  few enough that input batches cannot pile up in device memory.
  """

  def __init__(
    self,
    layout: parallel.Layout,
    update: Callable,
    loop_shapes: Any,
    steps_per_call: int,
    batches: Iterator[dict[str, np.ndarray]],
    member_axis: bool,
  ):
    self.steps_per_call = steps_per_call
    self._layout, self._batches, self._member_axis = layout, batches, member_axis
    # Outputs keep the loop state's layout, so the call never compiles twice.
    shardings = layout.saved_shardings(loop_shapes)
    if steps_per_call == 1:
      self._call = layout.compile_update(update, shardings)
    else:  # The same update in a loop on the device.
      self._call = layout.compile_update(
        step_lib.steps_in_one_call(update), shardings, steps_in_call=True
      )
    self._first_batch = None  # Read to compile with; the first call's first batch.
    # (loss, steps) of dispatched calls not yet waited for: the loss is a handle to wait on a call
    # without touching the donated state.
    self._in_flight = collections.deque()

  def compile(self, state: Any, sums: Any, rng: Any) -> Any:
    """Reads the first batch and compiles the call for it, apart from running it (so that
    throughput can leave compilation out); returns the compiled call (for its FLOPs). The call
    itself then reuses this executable."""
    self._first_batch = next(self._batches)
    return self._call.lower(state, sums, *self._device_batches([self._first_batch]), rng).compile()

  def run(self, state: Any, sums: Any, rng: Any, num_steps: int) -> tuple[Any, Any]:
    """Dispatches one call of the next `num_steps` (<= steps_per_call) batches; returns the state
    and sums after it (still being computed), once at most the allowed steps are in flight."""
    host_batches = [self._first_batch] if self._first_batch is not None else []
    host_batches += [next(self._batches) for _ in range(num_steps - len(host_batches))]
    self._first_batch = None
    state, sums, loss = self._call(state, sums, *self._device_batches(host_batches), rng)
    self._in_flight.append((loss, num_steps))
    self.wait_until_running_at_most(max(MAX_STEPS_AHEAD, self.steps_per_call))
    return state, sums

  def wait_until_running_at_most(self, steps: int) -> None:
    """Waits for the oldest dispatched calls until at most `steps` train steps still run."""
    while sum(n for _, n in self._in_flight) > steps:
      self._in_flight.popleft()[0].block_until_ready()

  def _device_batches(self, host_batches: list[dict[str, np.ndarray]]) -> tuple[Any, ...]:
    """The call's batch arguments: one batch, or (k stacked batches, how many of them to run)."""
    put_batch = functools.partial(self._layout.put_batch, member_axis=self._member_axis)
    if self.steps_per_call == 1:
      return (put_batch(host_batches[0]),)
    stacked = parallel.stack_steps(host_batches, self.steps_per_call)
    return put_batch(stacked, steps_axis=True), np.int32(len(host_batches))
