"""Multi-host runs: starting `jax.distributed`, and agreeing across processes on when to stop.

Every process runs the same `jaxdl train` command. `parallel.distributed` decides whether they
connect:
- "auto" (default): connect when a coordinator is given (`parallel.coordinator_address`, or the
  JAX_COORDINATOR_ADDRESS environment variable) or a cluster launched several processes (SLURM
  with more than one task, Open MPI with more than one rank, a multi-host Cloud TPU slice); JAX's
  own detection then fills in the process count and index.
- "on": always connect (e.g. a cluster JAX detects that the checks here do not know);
- "off": never.
On CPU, collectives between processes go through gloo.

After connecting, `jax.devices()` lists every process's devices, the trainer's mesh spans them,
each process reads only its shard of the data, and only process 0 writes logs and metrics.
"""

import logging
import os
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from jaxdl.errors import ConfigError

logger = logging.getLogger("jaxdl")

MODES = ("auto", "on", "off")


def _cluster_launched_several() -> str | None:
  """The launcher that started several processes for this job, if any."""
  env = os.environ
  if int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1 and "SLURM_JOB_ID" in env:
    return "SLURM"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "Open MPI"
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return "Cloud TPU"
  return None


def initialize(parallel_config: Any) -> bool:
  """Connects this process to the others of its run when `parallel.*` asks for it (see the module
  docstring); returns whether the run is distributed. Must run before JAX touches a device."""
  mode = parallel_config.get("distributed", "auto")
  if mode not in MODES:
    raise ConfigError(f"parallel.distributed={mode!r} must be one of {', '.join(MODES)}.")
  if jax.distributed.is_initialized():
    return True
  address = parallel_config.get("coordinator_address", "") or os.environ.get(
    "JAX_COORDINATOR_ADDRESS", ""
  )
  launcher = _cluster_launched_several()
  if mode == "off" or (mode == "auto" and not address and not launcher):
    return False
  num_processes = parallel_config.get("num_processes", 0) or None
  process_id = parallel_config.get("process_id", -1)
  process_id = None if process_id is None or process_id < 0 else process_id
  if address and (num_processes is None or process_id is None) and not launcher:
    raise ConfigError(
      f"parallel.coordinator_address={address!r} needs parallel.num_processes "
      "and parallel.process_id too (0 on the coordinator's host), unless a "
      "cluster launcher (SLURM, Open MPI) provides them."
    )
  # CPU collectives across processes need an implementation; gloo ships with jaxlib. It changes
  # nothing on GPU or TPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=address or None, num_processes=num_processes, process_id=process_id
  )
  logger.info(
    "Process %d of %d (%s), %d local of %d devices.",
    jax.process_index(),
    jax.process_count(),
    launcher or f"coordinator {address}",
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def any_process(flag: bool) -> bool:
  """Whether `flag` is true on any process; every process must call it at the same point."""
  if jax.process_count() == 1:
    return flag
  flags = multihost_utils.process_allgather(np.asarray([flag], np.int32))
  return bool(np.asarray(flags).any())
