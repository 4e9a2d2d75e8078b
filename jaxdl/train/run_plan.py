"""The run plan: every `auto` of a config settled and every constraint between keys checked, once.

A config says what to train (the recipe) and how this machine should run it (the `runtime` and
`parallel` sections, jaxdl.config). Several of the runtime keys are `auto`, and several keys
constrain each other (the batch splits over the devices, then into micro-batches). `settle`
decides all of that in one place, after the devices and the model are known, and the rest of the
run reads the plan, not the config. The log says what each `auto` became, and metadata.json keeps
it (`RunPlan.record`).

What must be settled before JAX starts (the host's CPU device split, multi-host, the allocator,
the compilation cache) is settled by `jaxdl.trainer._configure_host`, from `micro_batch_size`
here; the plan records the device count it led to.
"""

import dataclasses
import logging
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from jaxdl.errors import ConfigError
from jaxdl.nn import conv_layers
from jaxdl.train import steps_per_call as steps_per_call_lib

logger = logging.getLogger("jaxdl")


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """What a run does, with nothing left to decide."""

  kernels: str | None  # The kernel set the model's layers run (None: the model has no switch).
  batch_size: int  # Examples per step, over all devices and processes.
  eval_batch_size: int
  grad_accum_steps: int  # Micro-batches a step's batch splits into.
  grad_accum_unroll: bool  # Whether the micro-batch loop is unrolled.
  steps_per_call: int  # Train steps one dispatched call runs.
  steps_per_epoch: int
  total_steps: int
  num_devices: int

  def record(self) -> dict[str, Any]:
    """The plan as metadata.json keeps it."""
    return dataclasses.asdict(self)


def _whole_number(value: Any, minimum: int) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def micro_batch_size(config: ml_collections.ConfigDict) -> int:
  """Examples in one micro-batch (the batch when it is not split), over all devices; the device
  split of a CPU host is chosen to divide it before the run plan can be settled."""
  batch, accum = config.train.batch_size, config.train.get("grad_accum_steps", 1)
  if _whole_number(accum, 1) and batch % accum == 0:
    return batch // accum
  return batch


def settle_kernels(model: nn.Module) -> tuple[nn.Module, str | None]:
  """(the model with its `kernels` switch settled from auto to the kernel set for these devices,
  that set), by jaxdl.nn.conv_layers.resolve, which the model would run anyway; (model, None)
  for a model without the switch."""
  kernels = getattr(model, "kernels", None)
  if not isinstance(kernels, str):
    return model, None
  try:
    settled = conv_layers.resolve(kernels)
  except ValueError as e:
    raise ConfigError(f"runtime.kernels={kernels!r}: {e}") from e
  return (model if settled == kernels else model.clone(kernels=settled)), settled


def _grad_accum_unroll(setting: Any) -> bool:
  """runtime.grad_accum_unroll: auto unrolls on the CPU, where XLA runs a looped step's
  convolutions far more slowly (jaxdl.train.step); elsewhere the loop keeps one micro-batch in
  memory."""
  if setting == "auto":
    return jax.default_backend() == "cpu"
  if isinstance(setting, str) and setting.lower() in ("true", "false"):  # A command-line value.
    return setting.lower() == "true"
  if not isinstance(setting, bool):
    raise ConfigError(f"runtime.grad_accum_unroll={setting!r} must be auto, true or false.")
  return setting


def _check_batch_sizes(config: ml_collections.ConfigDict, layout: Any) -> int:
  """The gradient-accumulation steps, once each batch size is known to split over the devices and
  each device's share into equal micro-batches."""
  layout.check_batch_size(config.train.batch_size, "train.batch_size")
  layout.check_batch_size(config.data.eval_batch_size, "data.eval_batch_size")
  grad_accum = config.train.get("grad_accum_steps", 1)
  if (
    not _whole_number(grad_accum, 1)
    or (config.train.batch_size // layout.batch_devices) % grad_accum
  ):
    raise ConfigError(
      f"train.grad_accum_steps={grad_accum!r} must be a whole number >= 1 that "
      f"divides each device's share of the batch ({config.train.batch_size} / "
      f"{layout.batch_devices} devices)."
    )
  return grad_accum


def _count_steps(config: ml_collections.ConfigDict, data: Any) -> tuple[int, int]:
  """(total steps, steps per epoch) of the run."""
  steps_per_epoch = data.steps_per_epoch(config.train.batch_size)
  if steps_per_epoch == 0:
    raise ConfigError(
      f"train.batch_size={config.train.batch_size} exceeds the "
      f"{data.source.get('num_train')} training examples of {config.data.name} "
      f"({data.source.get('kind')}), so not one batch fits; use a smaller batch "
      "or more data."
    )
  total_steps = config.train.num_steps or config.train.num_epochs * steps_per_epoch
  if total_steps <= 0:
    raise ConfigError("Nothing to train: set train.num_steps or train.num_epochs to more than 0.")
  return total_steps, steps_per_epoch


def check_recipe(config: ml_collections.ConfigDict) -> None:
  """ConfigError for recipe values no run can use (those checked nowhere else)."""
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise ConfigError(
      f"train.ema_decay={config.train.ema_decay} must be in [0, 1); 0 turns the "
      "moving average off, 0.999 is typical."
    )


def settle(
  config: ml_collections.ConfigDict,
  data: Any,
  layout: Any,
  model: nn.Module,
  example_inputs: tuple[Any, ...] = (),
  training: bool = True,
) -> RunPlan:
  """The plan of `config` on `data` over `layout`'s devices for `model` (its kernels settled by
  `settle_kernels`); ConfigError naming the key and the fix for any setting that cannot work.
  `training=False` (evaluating a checkpoint) leaves steps per call at 1."""
  check_recipe(config)
  grad_accum = _check_batch_sizes(config, layout)
  total_steps, steps_per_epoch = _count_steps(config, data)
  runtime = config.runtime
  steps_per_call_lib.check(runtime.steps_per_call)
  plan = RunPlan(
    kernels=settle_kernels(model)[1],
    batch_size=config.train.batch_size,
    eval_batch_size=config.data.eval_batch_size,
    grad_accum_steps=grad_accum,
    grad_accum_unroll=_grad_accum_unroll(runtime.grad_accum_unroll),
    steps_per_call=(
      steps_per_call_lib.resolve(runtime.steps_per_call, model, *example_inputs) if training else 1
    ),
    steps_per_epoch=steps_per_epoch,
    total_steps=total_steps,
    num_devices=layout.num_devices,
  )
  if training:
    logger.info("Run plan: %s.", ", ".join(f"{k}={v}" for k, v in plan.record().items()))
  return plan
