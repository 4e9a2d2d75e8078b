"""How a run is laid out over devices: the mesh, where the loop state and batches live, and the
step functions compiled for that layout (`parallel.strategy`).

- "jit" (default): one program over a `Mesh` with axes ("data", "fsdp"). A batch [B, ...] is split
  over all data x fsdp devices. Each array of the loop state is replicated (fsdp = 1) or split
  along the fsdp axis (FSDP / ZeRO-3): on its largest dimension that the fsdp size divides, so
  every device holds 1/fsdp of the parameters and optimizer state; XLA gathers the parameters
  for the forward and backward passes and reduce-scatters the gradients. Being one program over
  global arrays, it computes what one device would, up to the order of float sums.
- "pmap": the classic data parallelism, `jax.pmap` over this host's devices with axis "batch": the
  loop state is replicated, one copy per device ([D, ...] arrays); device d takes examples
  [d * B/D, (d + 1) * B/D) of the batch; gradients, metrics and BatchNorm statistics are averaged
  with pmean (jaxdl.train.step's `axis_name`). Each device draws its own dropout masks (the
  device index is folded into the key), so models with dropout follow the one-device run in
  distribution, not in value; deterministic models follow it up to float rounding.

Checkpoints never depend on the layout: the saved loop state is the global arrays (pmap's copies
are saved once), and a restore lays them out for the current run. A checkpoint written on 8
devices, with FSDP or pmap, restores on 1 device, and the reverse.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdl.errors import ConfigError

STRATEGIES = ("jit", "pmap")
PMAP_AXIS = "batch"
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
      raise ConfigError(f"parallel.mesh.{name}={size!r} must be a positive number of devices or "
                        "-1 (the devices the other axis leaves).")
  if data == -1 and fsdp == -1:
    raise ConfigError("parallel.mesh.data and parallel.mesh.fsdp cannot both be -1; set one.")
  if data == -1 or fsdp == -1:
    known = fsdp if data == -1 else data
    if n % known:
      raise ConfigError(f"parallel.mesh: {n} devices do not split into groups of {known}; use a "
                        f"divisor of {n}.")
    data, fsdp = (n // known, fsdp) if data == -1 else (data, n // known)
  if data * fsdp != n:
    raise ConfigError(f"parallel.mesh data={data} x fsdp={fsdp} = {data * fsdp} devices, but "
                      f"there are {n}; make the product {n}, or set one axis to -1.")
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


@dataclasses.dataclass
class Layout:
  """One run's device layout; see the module docstring for the strategies."""

  strategy: str
  mesh: Mesh  # Every device, ("data", "fsdp"): batches and saved state are laid out on it.

  @property
  def fsdp(self) -> int:
    return self.mesh.shape["fsdp"]

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  def check_batch_size(self, batch_size: int, key: str) -> None:
    n = self.num_devices
    if batch_size % n:
      raise ConfigError(f"{key}={batch_size} does not split evenly over {n} devices; use a "
                        f"multiple of {n} (e.g. {key}={max(n, batch_size // n * n)}).")

  # ------------------------------------------------------------------ The saved (global) form

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def saved_shardings(self, abstract_loop: Any) -> Any:
    """The sharding of each array of the loop state in its global form: FSDP-split under jit,
    replicated under pmap (whose per-device copies are the run layout, not the saved one)."""
    fsdp = self.fsdp if self.strategy == "jit" else 1
    return jax.tree.map(lambda x: NamedSharding(self.mesh, fsdp_spec(x.shape, fsdp)),
                        abstract_loop)

  def abstract_saved(self, shapes: Any) -> Any:
    """Shapes, dtypes and shardings of the loop state (`shapes`: its jax.eval_shape), to restore
    a checkpoint into."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shapes, self.saved_shardings(shapes))

  # ------------------------------------------------------------------ Run layout

  def init(self, init: Callable[[], Any], shapes: Any) -> Any:
    """The loop state of step 0 (`shapes`: jax.eval_shape of `init`), in the run layout."""
    return self.from_saved(jax.jit(init, out_shardings=self.saved_shardings(shapes))())

  def from_saved(self, loop: Any) -> Any:
    """Global loop state (as initialised or restored) -> the run layout. Under pmap the train
    state and metric sums get one copy per local device; the key stays global (every device
    reads it)."""
    if self.strategy == "jit":
      return loop
    devices = jax.local_devices()
    sharding = NamedSharding(Mesh(np.asarray(devices), (PMAP_AXIS,)), P(PMAP_AXIS))

    def per_device(x):
      by_device = {s.device: s.data for s in x.addressable_shards}
      return jax.make_array_from_single_device_arrays(
          (len(devices), *x.shape), sharding, [by_device[d][None] for d in devices])

    return {**loop, "state": jax.tree.map(per_device, loop["state"]),
            "metric_sums": jax.tree.map(per_device, loop["metric_sums"])}

  def to_saved(self, loop: Any) -> Any:
    """Run layout -> global loop state, what checkpoints hold (pmap: one copy of the replicas)."""
    if self.strategy == "jit":
      return loop
    replicated = self.replicated()

    def one_copy(x):
      return jax.make_array_from_single_device_arrays(
          x.shape[1:], replicated, [s.data.reshape(x.shape[1:]) for s in x.addressable_shards])

    return {**loop, "state": jax.tree.map(one_copy, loop["state"]),
            "metric_sums": jax.tree.map(one_copy, loop["metric_sums"])}

  def to_host(self, tree: Any) -> Any:
    """Device arrays of the run layout -> their global value as host numpy (pmap: copy 0)."""
    tree = jax.device_get(tree)
    if self.strategy == "pmap":
      return jax.tree.map(lambda x: x[0], tree)
    return tree

  def put_batch(self, host_batch: dict[str, np.ndarray], member_axis: bool = False,
                steps_axis: bool = False) -> Any:
    """This process's rows of a global batch [B, ...] (a sweep's [members, B, ...]; with
    `steps_axis`, several steps' batches stacked in front, [K, ...], from `stack_steps`) -> device
    arrays split over the devices along B."""
    lead = int(steps_axis) + int(member_axis)  # Axes in front of B.
    if self.strategy == "pmap":
      d = jax.local_device_count()
      def split(x):  # [..., B, ...] -> [D, ..., B/D, ...]
        return np.moveaxis(x.reshape(*x.shape[:lead], d, -1, *x.shape[lead + 1:]), lead, 0)
      return jax.tree.map(split, host_batch)
    sharding = NamedSharding(self.mesh, P(*[None] * lead, ("data", "fsdp")))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                        host_batch)

  def compile_update(self, update: Callable, state_shardings: Any = None,
                     steps_in_call: bool = False) -> Callable:
    """(state, sums, batch, rng) -> (state, sums, loss), state and sums donated; with
    `steps_in_call`, (state, sums, batches, n, rng) -> the same after n steps
    (jaxdl.train.step.steps_in_one_call; batches from `put_batch(..., steps_axis=True)`).

    `update` must average gradients and metrics over PMAP_AXIS under pmap, and draw each
    device's dropout masks from its own key (jaxdl.train.step's axis_name does both). Under jit,
    `state_shardings` (the loop's shardings) keeps the state in its FSDP layout from step to step.
    """
    if self.strategy == "pmap":  # One key for all; the step folds in the device index.
      in_axes = (0, 0, 0, None, None) if steps_in_call else (0, 0, 0, None)
      return jax.pmap(update, axis_name=PMAP_AXIS, in_axes=in_axes, donate_argnums=(0, 1))
    out_shardings = None
    if state_shardings is not None:
      out_shardings = (state_shardings["state"], state_shardings["metric_sums"],
                       self.replicated())
    return jax.jit(update, donate_argnums=(0, 1), out_shardings=out_shardings)

  def compile_elementwise(self, fn: Callable, shardings: Any = None) -> Callable:
    """A function of the loop state that needs no collectives (resetting the metric sums)."""
    if self.strategy == "pmap":
      return jax.pmap(fn, axis_name=PMAP_AXIS)
    return jax.jit(fn, out_shardings=shardings)

  def compile_eval(self, eval_step: Callable) -> Callable:
    """(state, batch) -> metric sums over the batch's real rows, as host numpy."""
    if self.strategy == "pmap":  # Summed over every device of every host: copy 0 holds it all.
      stepped = jax.pmap(lambda state, batch: jax.lax.psum(eval_step(state, batch), PMAP_AXIS),
                         axis_name=PMAP_AXIS)
      return lambda state, batch: self.to_host(stepped(state, batch))
    stepped = jax.jit(eval_step)
    return lambda state, batch: jax.device_get(stepped(state, batch))

  def local_rows(self, host_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's share of a global batch that every process holds whole (evaluation)."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
      return host_batch
    return jax.tree.map(lambda x: np.array_split(x, count)[index], host_batch)


def stack_steps(host_batches: list[dict[str, np.ndarray]], slots: int) -> dict[str, np.ndarray]:
  """Several steps' host batches as one [slots, ...] batch, for a call of several steps; the last
  batch fills the slots beyond them, which that call's step count leaves unread."""
  filled = list(host_batches) + list(host_batches[-1:]) * (slots - len(host_batches))
  return jax.tree.map(lambda *xs: np.stack(xs), *filled)


def make_layout(parallel_config: Any) -> Layout:
  """The layout `parallel.*` asks for, over every device JAX sees."""
  strategy = parallel_config.get("strategy", "jit")
  if strategy not in STRATEGIES:
    raise ConfigError(f"parallel.strategy={strategy!r} is not one of {', '.join(STRATEGIES)}.")
  mesh_config = parallel_config.get("mesh", {"data": -1, "fsdp": 1})
  data, fsdp = mesh_config.get("data", -1), mesh_config.get("fsdp", 1)
  if strategy == "pmap" and fsdp not in (1, -1) or strategy == "pmap" and data == 1 and fsdp == -1:
    raise ConfigError("parallel.strategy=pmap replicates the state on every device; it cannot "
                      "shard it (parallel.mesh.fsdp must be 1). Use parallel.strategy=jit for "
                      "FSDP.")
  if strategy == "pmap":
    data, fsdp = -1, 1
  return Layout(strategy, make_mesh(data, fsdp))
