"""How many train steps one dispatched call runs (`runtime.steps_per_call`).

A call of k steps is one program that loops k times on the device over k stacked batches
(jaxdl.train.step.steps_in_one_call): what a call costs besides its step is paid once per k steps.
Results are the same to the bit for every k.

`runtime.steps_per_call` >= 1 is the user's count; 0 (auto) is 1 off the CPU, where dispatch is
cheap next to a step, and on the CPU `CPU_STEPS_PER_CALL` unless the model runs XLA convolutions,
which XLA:CPU runs far more slowly inside a loop (benchmarks/README.md, "Steps per call").

Whether a model runs XLA convolutions is what its layers declare, found by tracing `model.init`
abstractly (`runs_xla_convolutions`):
  * Flax's `nn.Conv` runs one unless it is given its own `conv_general_dilated` (or
    `conv_general_dilated_cls`) in place of lax's; `nn.ConvLocal` and `nn.ConvTranspose` always do.
  * Any module may state the answer for itself and every layer it calls with an attribute (a class
    attribute or a field) `runs_xla_convolutions: bool`; set it True on a module that calls
    `jax.lax.conv_general_dilated` (or its relatives) directly, False on one whose Flax convolution
    layers are known not to lower to XLA convolutions. Modules without it are looked into.
"""

import functools
import logging

import flax.linen as nn
import jax
from jax import lax

from jaxdl.errors import ConfigError

logger = logging.getLogger("jaxdl")

# runtime.steps_per_call=0 on a CPU; what it buys: benchmarks/README.md, "Steps per call".
CPU_STEPS_PER_CALL = 16
DECLARATION = "runs_xla_convolutions"  # The attribute a module may declare (module docstring).


def check(setting) -> None:
  """ConfigError unless `setting` is a whole number >= 0."""
  if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
    raise ConfigError(
      f"runtime.steps_per_call={setting!r} must be a whole number of steps >= 1, or "
      f"0 for auto ({CPU_STEPS_PER_CALL} on a CPU unless the model runs XLA "
      "convolutions, 1 elsewhere)."
    )


def resolve(setting: int, model: nn.Module, *example_inputs: jax.Array) -> int:
  """The steps a call runs for `runtime.steps_per_call=setting`, said in the log; `example_inputs`
  are the model's inputs (a batch of 1 will do), traced abstractly only when auto must look."""
  check(setting)
  if setting:
    steps, why = setting, f"runtime.steps_per_call={setting}"
  elif jax.default_backend() != "cpu":
    steps, why = 1, "runtime.steps_per_call=0, auto: one off the CPU"
  elif runs_xla_convolutions(model, *example_inputs):
    steps, why = (
      1,
      (
        "runtime.steps_per_call=0, auto: the model runs XLA convolutions, which XLA:CPU "
        "runs far slower inside a loop"
      ),
    )
  else:
    steps, why = CPU_STEPS_PER_CALL, "runtime.steps_per_call=0, auto on a CPU"
  logger.info(
    "%s per call (%s).", f"Up to {steps} train steps" if steps > 1 else "One train step", why
  )
  return steps


def runs_xla_convolutions(model: nn.Module, *example_inputs: jax.Array) -> bool:
  """Whether `model` runs an XLA convolution, by what its layers declare (module docstring).

  Traces `model.init` on `example_inputs` abstractly (jax.eval_shape: nothing is computed), and
  asks each module called whether it runs one.
  """
  found = False
  declared_depth = 0  # > 0 inside a module that declared its answer: its layers are not asked.

  def interceptor(next_fun, args, kwargs, context):
    nonlocal found, declared_depth
    if declared_depth:
      return next_fun(*args, **kwargs)
    declared = getattr(context.module, DECLARATION, None)
    if declared is None:
      found = found or _flax_conv_runs_xla(context.module)
      return next_fun(*args, **kwargs)
    found = found or bool(declared)
    declared_depth += 1
    try:
      return next_fun(*args, **kwargs)
    finally:
      declared_depth -= 1

  with nn.intercept_methods(interceptor):
    jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), *example_inputs)
  return found


def _flax_conv_runs_xla(module: nn.Module) -> bool:
  if isinstance(module, (nn.ConvLocal, nn.ConvTranspose)):  # Always lax's own convolutions.
    return True
  if isinstance(module, nn.Conv):
    return module.conv_general_dilated_cls is None and module.conv_general_dilated in (
      None,
      lax.conv_general_dilated,
    )
  return False
