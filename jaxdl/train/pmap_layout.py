"""parallel.strategy=pmap: the classic data parallelism, `jax.pmap` over this host's devices.

The loop state is replicated, one copy per device ([D, ...] arrays: the run form; checkpoints save
one copy); device d takes examples [d * B/D, (d + 1) * B/D) of the batch; gradients, metrics and
BatchNorm statistics are averaged over the axis PMAP_AXIS (jaxdl.train.collectives.OverAxis). Each
device draws its own dropout masks (the device index is folded into the key), so models with
dropout follow the one-device run in distribution, not in value; deterministic models follow it up
to float rounding.
"""

from typing import Any, Callable

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from jaxdl.errors import ConfigError
from jaxdl.train import collectives as collectives_lib
from jaxdl.train.layout import Layout
from jaxdl.train.mesh_layout import make_mesh

PMAP_AXIS = "batch"


class PmapLayout(Layout):
  """pmap over this host's devices (module docstring); `mesh` holds every device as ("data",
  "fsdp" = 1), for the saved form."""

  strategy = "pmap"
  collectives = collectives_lib.OverAxis(PMAP_AXIS)

  @classmethod
  def from_mesh_config(cls, data: int, fsdp: int, tensor: int = 1, rules: Any = ()) -> "PmapLayout":
    del rules  # Nothing is split.
    for name, size in (("fsdp", fsdp), ("tensor", tensor)):
      if size not in (1, -1) or data == 1 and size == -1:
        raise ConfigError(
          "parallel.strategy=pmap replicates the state on every device; it cannot "
          f"shard it (parallel.mesh.{name} must be 1). Use parallel.strategy=jit for "
          f"{'FSDP' if name == 'fsdp' else 'a tensor axis'}."
        )
    return cls(make_mesh(-1, 1))  # Every device on the data axis.

  def saved_shardings(self, abstract_loop: Any) -> Any:
    """Replicated: the per-device copies are the run form, not the saved one."""
    return jax.tree.map(lambda x: self.replicated(), abstract_loop)

  def from_saved(self, loop: Any) -> Any:
    """The train state and metric sums get one copy per local device; the key stays global
    (every device reads it)."""
    devices = jax.local_devices()
    sharding = NamedSharding(Mesh(np.asarray(devices), (PMAP_AXIS,)), P(PMAP_AXIS))

    def per_device(x):
      by_device = {s.device: s.data for s in x.addressable_shards}
      return jax.make_array_from_single_device_arrays(
        (len(devices), *x.shape), sharding, [by_device[d][None] for d in devices]
      )

    return {
      **loop,
      "state": jax.tree.map(per_device, loop["state"]),
      "metric_sums": jax.tree.map(per_device, loop["metric_sums"]),
    }

  def to_saved(self, loop: Any) -> Any:
    """One copy of the replicas."""
    replicated = self.replicated()

    def one_copy(x):
      return jax.make_array_from_single_device_arrays(
        x.shape[1:], replicated, [s.data.reshape(x.shape[1:]) for s in x.addressable_shards]
      )

    return {
      **loop,
      "state": jax.tree.map(one_copy, loop["state"]),
      "metric_sums": jax.tree.map(one_copy, loop["metric_sums"]),
    }

  def to_host(self, tree: Any) -> Any:
    """Copy 0."""
    return jax.tree.map(lambda x: x[0], jax.device_get(tree))

  def put_batch(
    self, host_batch: dict[str, np.ndarray], member_axis: bool = False, steps_axis: bool = False
  ) -> Any:
    lead = int(steps_axis) + int(member_axis)  # Axes in front of B.
    d = jax.local_device_count()

    def split(x):  # [..., B, ...] -> [D, ..., B/D, ...]
      return np.moveaxis(x.reshape(*x.shape[:lead], d, -1, *x.shape[lead + 1 :]), lead, 0)

    return jax.tree.map(split, host_batch)

  def compile_update(
    self, update: Callable, state_shardings: Any = None, steps_in_call: bool = False
  ) -> Callable:
    del state_shardings  # Replicated per device by construction.
    # One key for all (the step folds in the device index), and one step count.
    in_axes = (0, 0, 0, None, None) if steps_in_call else (0, 0, 0, None)
    return jax.pmap(update, axis_name=PMAP_AXIS, in_axes=in_axes, donate_argnums=(0, 1))

  def compile_elementwise(self, fn: Callable, shardings: Any = None) -> Callable:
    del shardings  # Outputs stay on their devices.
    return jax.pmap(fn, axis_name=PMAP_AXIS)

  def compile_eval(self, eval_step: Callable) -> Callable:
    # Summed over every device of every host: copy 0 holds it all.
    stepped = jax.pmap(
      lambda state, batch: jax.lax.psum(eval_step(state, batch), PMAP_AXIS), axis_name=PMAP_AXIS
    )
    return lambda state, batch: self.to_host(stepped(state, batch))
