"""parallel.strategy=jit (the default): one program over a `Mesh` with axes ("data", "fsdp").

A batch [B, ...] is split over all data x fsdp devices. Each array of the loop state is replicated
(fsdp = 1) or split along the fsdp axis (FSDP / ZeRO-3): on its largest dimension that the fsdp size
divides, so every device holds 1/fsdp of the parameters and optimizer state; XLA gathers the
parameters for the forward and backward passes and reduce-scatters the gradients. Being one program
over global arrays, it computes what one device would, up to the order of float sums; its run form
is its saved form.
"""

from typing import Any, Callable

import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from jaxdl.errors import ConfigError
from jaxdl.train import collectives as collectives_lib
from jaxdl.train.layout import Layout

# Arrays with fewer elements than this stay replicated under FSDP: splitting a bias or a norm
# scale saves nothing and costs a collective.
MIN_FSDP_SIZE = 2**10


def make_mesh(data: int = -1, fsdp: int = 1, devices: list[jax.Device] | None = None) -> Mesh:
  """A ("data", "fsdp") mesh over `devices` (default: every device of every process); -1 in one
  axis takes the devices the other leaves."""
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  sizes = {"data": data, "fsdp": fsdp}
  for name, size in sizes.items():
    if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
      raise ConfigError(
        f"parallel.mesh.{name}={size!r} must be a positive number of devices or "
        "-1 (the devices the other axis leaves)."
      )
  if data == -1 and fsdp == -1:
    raise ConfigError("parallel.mesh.data and parallel.mesh.fsdp cannot both be -1; set one.")
  if data == -1 or fsdp == -1:
    known = fsdp if data == -1 else data
    if n % known:
      raise ConfigError(
        f"parallel.mesh: {n} devices do not split into groups of {known}; use a divisor of {n}."
      )
    data, fsdp = (n // known, fsdp) if data == -1 else (data, n // known)
  if data * fsdp != n:
    raise ConfigError(
      f"parallel.mesh data={data} x fsdp={fsdp} = {data * fsdp} devices, but "
      f"there are {n}; make the product {n}, or set one axis to -1."
    )
  try:  # Topology-aware order on TPU and GPU (neighbours on the fast links).
    grid = mesh_utils.create_device_mesh((data, fsdp), devices)
  except (AssertionError, ValueError, NotImplementedError):
    grid = np.asarray(devices).reshape(data, fsdp)
  return Mesh(grid, ("data", "fsdp"))


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """Where FSDP splits an array: its largest dimension divisible by `fsdp`, or nowhere."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_FSDP_SIZE:
    return P()
  candidates = [d for d, size in enumerate(shape) if size % fsdp == 0]
  if not candidates:
    return P()
  dim = max(candidates, key=lambda d: (shape[d], -d))
  return P(*([None] * dim + ["fsdp"]))


class MeshLayout(Layout):
  """jit over the mesh (module docstring)."""

  strategy = "jit"
  collectives = collectives_lib.GLOBAL  # One program: XLA inserts the communication.

  @classmethod
  def from_mesh_config(cls, data: int, fsdp: int) -> "MeshLayout":
    return cls(make_mesh(data, fsdp))

  @property
  def fsdp(self) -> int:
    return self.mesh.shape["fsdp"]

  def saved_shardings(self, abstract_loop: Any) -> Any:
    return jax.tree.map(
      lambda x: NamedSharding(self.mesh, fsdp_spec(x.shape, self.fsdp)), abstract_loop
    )

  def from_saved(self, loop: Any) -> Any:
    return loop

  def to_saved(self, loop: Any) -> Any:
    return loop

  def to_host(self, tree: Any) -> Any:
    return jax.device_get(tree)

  def put_batch(
    self, host_batch: dict[str, np.ndarray], member_axis: bool = False, steps_axis: bool = False
  ) -> Any:
    lead = int(steps_axis) + int(member_axis)  # Axes in front of B.
    sharding = NamedSharding(self.mesh, P(*[None] * lead, ("data", "fsdp")))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), host_batch)

  def compile_update(
    self, update: Callable, state_shardings: Any = None, steps_in_call: bool = False
  ) -> Callable:
    del steps_in_call  # jit takes the step count like any other argument.
    out_shardings = None
    if state_shardings is not None:
      out_shardings = (state_shardings["state"], state_shardings["metric_sums"], self.replicated())
    return jax.jit(update, donate_argnums=(0, 1), out_shardings=out_shardings)

  def compile_elementwise(self, fn: Callable, shardings: Any = None) -> Callable:
    return jax.jit(fn, out_shardings=shardings)

  def compile_eval(self, eval_step: Callable) -> Callable:
    stepped = jax.jit(eval_step)
    return lambda state, batch: jax.device_get(stepped(state, batch))
