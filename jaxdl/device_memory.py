"""Memory per device of a training run, measured without running it: what `jaxdl summary` reports.

- The loop state (jaxdl.trainer.abstract_loop: shapes and shardings, nothing allocated): the bytes
  each device holds of each array, summed per device into parameters, optimizer state and the rest.
- The train call, compiled as the trainer compiles it (jaxdl.train.dispatch.TrainCalls) on that
  abstract state and a batch of zeros (the one thing placed on the devices): XLA's memory analysis
  gives its arguments, outputs, the outputs written into donated arguments, and its temporaries.
  For a program over several devices these are one device's.
"""

import dataclasses
import itertools
import math
from typing import Any

import jax
import numpy as np

from jaxdl import summary as summary_lib
from jaxdl import trainer
from jaxdl.train import dispatch


@dataclasses.dataclass(frozen=True)
class Part:
  """Bytes of some arrays of the loop state: on the device holding the most, and in all."""

  per_device: int
  total: int  # The arrays' own sizes (count * itemsize), as one device would hold them.
  replicated: int  # Of `per_device`, the arrays every device holds whole.
  split_over: tuple[str, ...]  # Mesh axes that split some of the arrays.

  def describe(self) -> str:
    if self.per_device == self.total:
      return "whole on each device"
    axes = "/".join(self.split_over) or "devices"
    human = summary_lib.human_bytes
    return f"split over {axes}: {human(self.total)} in all, {human(self.replicated)} replicated"


@dataclasses.dataclass(frozen=True)
class TrainCall:
  """XLA's memory analysis of the compiled train call, per device."""

  arguments: int  # Loop state, batch(es), step count.
  outputs: int
  aliased: int  # Outputs written into donated arguments (the new state): counted once.
  temporaries: int
  batch: int  # Of `arguments`, the batch (every step's, for a call of several steps).
  rows_per_device: int  # Examples of one step's batch on each device.

  @property
  def total(self) -> int:
    """What the call needs on a device at its peak, as XLA plans the buffers."""
    return self.arguments + self.outputs - self.aliased + self.temporaries


@dataclasses.dataclass(frozen=True)
class DeviceMemory:
  """The memory one device needs to train a run; see the module docstring."""

  mesh: dict[str, int]  # Mesh axis -> its size.
  batch_size: int  # Examples per step, over all devices.
  steps_per_call: int
  members: int  # Runs of a sweep trained side by side (jaxdl.sweep); 1 without a sweep.
  params: Part  # With the moving average of the parameters (train.ema_decay), if any.
  ema: bool  # Whether `params` holds the moving average too.
  opt_state: Part
  other: Part  # Step count, model state (batch_stats), metric sums, RNG key.
  call: TrainCall | None  # None: unknown (`why_unknown` says why).
  why_unknown: str = ""

  def format(self) -> str:
    """The "memory per device" block of `jaxdl summary`; each line starts "  <what>: <bytes>"."""
    mesh = " ".join(f"{axis}={size}" for axis, size in self.mesh.items())
    call = self.call
    batch = f"batch {self.batch_size}" + (f", {call.rows_per_device} per device" if call else "")
    steps = f", {self.steps_per_call} steps per call" if self.steps_per_call > 1 else ""
    members = f", {self.members} sweep members" if self.members > 1 else ""
    lines = [f"memory per device (mesh {mesh}, {batch}{steps}{members}):"]
    for name, p in (
      ("parameters and their moving average" if self.ema else "parameters", self.params),
      ("optimizer state", self.opt_state),
      ("other loop state", self.other),
    ):
      lines.append(f"  {name}: {_human(p.per_device)}, {p.describe()}")
    if call is None:
      lines.append(f"  batch: unknown\n  temporaries: unknown ({self.why_unknown})")
      state = self.params.per_device + self.opt_state.per_device + self.other.per_device
      lines.append(f"  total: unknown; at least {_human(state)}, the loop state")
      return "\n".join(lines)
    batches = (
      f"{self.steps_per_call} steps' batches, stacked for one call"
      if self.steps_per_call > 1
      else "one step's batch"
    )
    lines.append(f"  batch: {_human(call.batch)}, {batches}")
    lines.append(
      f"  temporaries: {_human(call.temporaries)}, XLA's memory analysis of the train step"
    )
    human = summary_lib.human_bytes
    lines.append(
      f"  total: {_human(call.total)} = arguments {human(call.arguments)} + outputs "
      f"{human(call.outputs)} - donated {human(call.aliased)} + temporaries"
    )
    return "\n".join(lines)


def _human(n: int) -> str:
  return f"{n} ({summary_lib.human_bytes(n)})"


def _bytes_by_device(tree: Any) -> dict[Any, int]:
  """Device -> bytes of `tree`'s arrays (ShapeDtypeStructs with shardings) it holds."""
  by_device: dict[Any, int] = {}
  for x in jax.tree.leaves(tree):
    itemsize = np.dtype(x.dtype).itemsize
    for device, index in x.sharding.devices_indices_map(tuple(x.shape)).items():
      count = math.prod(len(range(*s.indices(n))) for s, n in zip(index, x.shape))
      by_device[device] = by_device.get(device, 0) + count * itemsize
  return by_device


def part(tree: Any) -> Part:
  """Per-device and total bytes of `tree`, arrays with shardings (jaxdl.trainer.abstract_loop)."""
  leaves = jax.tree.leaves(tree)
  whole = [x for x in leaves if x.sharding.is_fully_replicated]
  split_over = {
    axis
    for x in leaves
    if not x.sharding.is_fully_replicated and hasattr(x.sharding, "spec")
    for entry in x.sharding.spec
    if entry is not None
    for axis in (entry if isinstance(entry, tuple) else (entry,))
  }
  return Part(
    per_device=max(_bytes_by_device(tree).values(), default=0),
    total=sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves),
    replicated=sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in whole),
    split_over=tuple(sorted(split_over)),
  )


def _compile_train_call(setup: Any, loop: Any, data: Any) -> TrainCall | None:
  """The train call as the trainer compiles it, on the abstract `loop` and a batch of zeros (the
  one thing allocated: the call's batches, on the devices); None where XLA gives no analysis."""
  rows = setup.plan.batch_size // setup.layout.data_shard()[1]  # This process's share.
  host_batches = setup.runs.batches(lambda seed: itertools.repeat(data.example_batch(rows)))
  calls = dispatch.TrainCalls(
    setup.layout,
    setup.update,
    setup.loop_shapes,
    setup.plan.steps_per_call,
    host_batches,
    member_axis=setup.runs.member_axis,
  )
  # The trainer passes the loop's raw key data wrapped as a key, where the key data lies.
  key = jax.eval_shape(jax.random.wrap_key_data, loop["rng"])
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=loop["rng"].sharding)
  compiled = calls.compile(loop["state"], loop["metric_sums"], key)
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Backends without it raise various errors.
    return None
  if stats is None:
    return None
  # The batch argument, shaped and laid out as the executable takes it.
  batch = jax.tree.map(
    lambda info, sharding: jax.ShapeDtypeStruct(info.shape, info.dtype, sharding=sharding),
    compiled.args_info[0][2],
    compiled.input_shardings[0][2],
  )
  first = jax.tree.leaves(batch)[0]
  row_axis = int(setup.plan.steps_per_call > 1) + int(setup.runs.member_axis)  # Axes before B.
  return TrainCall(
    arguments=stats.argument_size_in_bytes,
    outputs=stats.output_size_in_bytes,
    aliased=stats.alias_size_in_bytes,
    temporaries=stats.temp_size_in_bytes,
    batch=max(_bytes_by_device(batch).values()),
    rows_per_device=first.sharding.shard_shape(first.shape)[row_axis],
  )


def of_run(setup: Any, data: Any, *, compile_call: bool = True) -> DeviceMemory:
  """The memory per device of training `setup` (jaxdl.trainer.build(config, data)) on `data`.

  `compile_call=False` skips compiling the train call: its temporaries are then unknown.
  """
  loop = trainer.abstract_loop(setup)
  state = loop["state"]
  call, why = None, ""
  if not compile_call:
    why = "skipped: --no-temporaries"
  elif setup.layout.strategy != "jit":
    # The call takes the run form of the state, which only jit's layout has as its saved form.
    why = (
      f"parallel.strategy={setup.layout.strategy} is not measured; jit with "
      "parallel.mesh.fsdp=1 lays the state out as it does"
    )
  else:
    call = _compile_train_call(setup, loop, data)
    why = "" if call else f"XLA on {jax.default_backend()} gives no memory analysis"
  return DeviceMemory(
    mesh=dict(setup.layout.mesh.shape),
    batch_size=setup.plan.batch_size,
    steps_per_call=setup.plan.steps_per_call,
    members=setup.runs.count,
    params=part([state.params, state.ema_params]),
    ema=state.ema_params is not None,
    opt_state=part(state.opt_state),
    other=part({**loop, "state": state.replace(params=None, opt_state=None, ema_params=None)}),
    call=call,
    why_unknown=why,
  )
