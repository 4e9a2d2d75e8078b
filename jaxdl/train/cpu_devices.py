"""Splitting a CPU host into several JAX devices (`parallel.cpu_devices`), for speed.

XLA:CPU runs one program at a time per device, and inside a program it parallelises only some
operations (large convolutions and matmuls) over the cores; element-wise work, pooling and the
small convolutions of a model like the seed MNIST CNN run on one core. Splitting the host into N
devices and the batch over them (the trainer's data-parallel mesh) runs N such programs at once,
so every core has work. Which models that pays for is measured in benchmarks/README.md ("cpu
devices").

`parallel.cpu_devices`:
- 1 (default): the whole host is one device, XLA's default.
- "auto": 8 devices, or the largest number that divides the batch sizes, when JAX runs on the
  CPU and nothing else has chosen a device count; an experiment opts in. The count is
  fixed rather than the machine's core count so that a run gives the same numbers on a laptop
  and on a 64-core server (the mean over 8 shards adds in another order than over 1: results
  equal a 1-device run to float rounding, not to the bit). It is not the default because it
  pays only for models whose step is a few large operations: a recurrent model's loop of small
  steps ran slower on 8 devices than on 1 (char LSTM, benchmarks/README.md), each device's loop
  then competing for the cores step by step.
- N >= 1: exactly N.

It only acts before JAX starts its CPU backend: `jaxdl train` applies it first thing. A process
that has already used JAX (a notebook, a test) keeps the devices it has; an explicit N that
differs is then reported, not applied. `--xla_force_host_platform_device_count` in XLA_FLAGS,
or `jax.config.update("jax_num_cpu_devices", N)` before the run, wins over this setting.
"""

import logging
import math
import os
from typing import Any

import jax

from jaxdl.errors import ConfigError

logger = logging.getLogger("jaxdl")

AUTO_DEVICES = 8


def _backend_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel

  return xla_bridge.backends_are_initialized()


def _count_chosen_elsewhere() -> bool:
  return (
    "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    or jax.config.jax_num_cpu_devices >= 0
  )


def targets_cpu() -> bool:
  """Whether JAX will compute on the CPU, judged without starting its backends."""
  platforms = (os.environ.get("JAX_PLATFORMS", "") or jax.config.jax_platforms or "").lower()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  # No platform named: CPU unless an accelerator plugin or jaxlib backend is installed. Asking
  # would start the backends, so look for the usual accelerator packages instead.
  import importlib.util  # pylint: disable=import-outside-toplevel

  accelerator_packages = (
    "jax_cuda12_plugin",
    "jax_cuda13_plugin",
    "jax_rocm60_plugin",
    "jax_rocm7_plugin",
    "libtpu",
    "jax_plugins.xla_cuda12",
  )
  for name in accelerator_packages:
    try:
      if importlib.util.find_spec(name) is not None:
        return False
    except (ImportError, ValueError):
      continue
  return True


def choose(setting: Any, batch_sizes: list[int]) -> int:
  """The device count `setting` asks for, given the batch sizes it must divide."""
  if isinstance(setting, str) and setting.strip().isdigit():  # From a command-line override.
    setting = int(setting)
  if setting == "auto":
    divisor = math.gcd(*batch_sizes) if batch_sizes else AUTO_DEVICES
    return max(n for n in range(1, AUTO_DEVICES + 1) if divisor % n == 0)
  if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
    raise ConfigError(
      f"parallel.cpu_devices={setting!r} must be 'auto' or a whole number >= 1 "
      "(1: the host is one device)."
    )
  return setting


def configure(parallel_config: Any, batch_sizes: list[int], *, sweep: bool = False) -> int | None:
  """Sets JAX's CPU device count from `parallel.cpu_devices` if JAX has not started yet; returns
  the count set, or None when it left JAX as it was.

  Args:
    parallel_config: the run's `parallel` config.
    batch_sizes: per-process batch sizes (train, eval, micro-batch) that every device count
      must divide.
    sweep: a vmapped sweep; "auto" then keeps one device (vmapped members' convolutions are not
      split over devices, so more devices would only copy the work).
  """
  setting = parallel_config.get("cpu_devices", 1)
  count = choose(setting, batch_sizes)
  explicit = str(setting) != "auto"
  if _backend_started():
    if (
      explicit
      and count > 1
      and jax.default_backend() == "cpu"
      and jax.local_device_count() != count
    ):
      logger.warning(
        "parallel.cpu_devices=%d not applied: JAX already started with %d CPU "
        "device(s) in this process. Set it before JAX is first used (e.g. run "
        "through `jaxdl train`).",
        count,
        jax.local_device_count(),
      )
    return None
  if _count_chosen_elsewhere():  # The environment (XLA_FLAGS) or the program chose: it wins.
    return None
  if not explicit and (
    sweep
    or not targets_cpu()
    or jax.distributed.is_initialized()
    or parallel_config.get("strategy", "jit") != "jit"
  ):
    return None
  jax.config.update("jax_num_cpu_devices", count)
  if count > 1:
    logger.info(
      "Split this CPU host into %d JAX devices (parallel.cpu_devices=%s); the batch is "
      "split over them.",
      count,
      setting,
    )
  return count
