"""The device mesh and the shardings of the train state and of batches.

Data parallelism over every device JAX sees: batches are split along a `data` mesh axis and the
train state is replicated. The same code runs on one CPU and on many accelerators.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdl.errors import ConfigError


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, member_axis: bool = False) -> NamedSharding:
  """Batches split along `data`; a sweep's batches [members, B, ...] are split along axis 1."""
  return NamedSharding(mesh, P(None, "data") if member_axis else P("data"))


def check_batch_size(batch_size: int, mesh: Mesh, key: str) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f"{key}={batch_size} does not split evenly over {n} devices; use a multiple "
                      f"of {n} (e.g. {key}={max(n, batch_size // n * n)}).")


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh,
                member_axis: bool = False) -> dict[str, jax.Array]:
  """Host numpy batch (this process's part of the global batch) -> global arrays split over `data`."""
  sharding = batch_sharding(mesh, member_axis)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
