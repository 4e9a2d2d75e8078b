"""parallel.strategy=jit (the default): one program over a `Mesh` with axes ("data", "fsdp",
"tensor").

A batch [B, ...] is split over all data x fsdp devices (and repeated over `tensor`). Each array
of the loop state is placed by jaxdl.train.shardings: a parameter whose model names its axes
(jaxdl.nn.partitioning) as `parallel.rules` say (by default Megatron-style: attention heads and
the MLP's hidden units over `tensor`, the model width over `fsdp`), the optimizer's moments with
their parameter, and any other array by the FSDP heuristic (FSDP / ZeRO-3: on its largest
dimension that the fsdp size divides). XLA gathers the parameters for the forward and backward
passes, reduce-scatters the gradients and inserts the tensor-parallel collectives. Being one
program over global arrays, it computes what one device would, up to the order of float sums; its
run form is its saved form.
"""

import functools
import logging
from typing import Any, Callable, Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from jaxdl.errors import ConfigError
from jaxdl.nn import partitioning
from jaxdl.train import collectives as collectives_lib
from jaxdl.train import shardings
from jaxdl.train.layout import Layout

logger = logging.getLogger("jaxdl")

AXES = ("data", "fsdp", "tensor")

# Kept importable from here, where they lived.
MIN_FSDP_SIZE = shardings.MIN_FSDP_SIZE
fsdp_spec = shardings.fsdp_spec


def make_mesh(
  data: int = -1, fsdp: int = 1, tensor: int = 1, devices: list[jax.Device] | None = None
) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over `devices` (default: every device of every process);
  -1 in one axis takes the devices the others leave."""
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  for name, size in sizes.items():
    if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
      raise ConfigError(
        f"parallel.mesh.{name}={size!r} must be a positive number of devices or "
        "-1 (the devices the other axes leave)."
      )
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ConfigError(
      f"parallel.mesh: {' and '.join(free)} are {'both' if len(free) == 2 else 'all'} -1, but "
      "only one axis can take the devices the others leave; give the others sizes."
    )
  if free:
    known = int(np.prod([s for s in sizes.values() if s != -1]))
    if n % known:
      raise ConfigError(
        f"parallel.mesh: {n} devices do not split into groups of {known} "
        f"({' x '.join(f'{k}={v}' for k, v in sizes.items() if v != -1)}); use divisors of {n}."
      )
    sizes[free[0]] = n // known
  if int(np.prod(list(sizes.values()))) != n:
    product = " x ".join(f"{k}={v}" for k, v in sizes.items())
    raise ConfigError(
      f"parallel.mesh {product} = {int(np.prod(list(sizes.values())))} devices, but there "
      f"are {n}; make the product {n}, or set one axis to -1."
    )
  shape = tuple(sizes[a] for a in AXES)
  try:  # Topology-aware order on TPU and GPU (tensor innermost: neighbours on the fast links).
    grid = mesh_utils.create_device_mesh(shape, devices)
  except (AssertionError, ValueError, NotImplementedError):
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, AXES)


class MeshLayout(Layout):
  """jit over the mesh (module docstring)."""

  strategy = "jit"
  collectives = collectives_lib.GLOBAL  # One program: XLA inserts the communication.

  def __init__(self, mesh: Mesh, rules: Sequence[tuple[str, Any]] = partitioning.RULES):
    super().__init__(mesh)
    self.rules = tuple(rules)
    self.param_axes: shardings.ParamAxes = {}
    self._told_whole = False
    self._data_shard: tuple[int, int] | None = None

  @classmethod
  def from_mesh_config(
    cls, data: int, fsdp: int, tensor: int = 1, rules: Any = partitioning.RULES
  ) -> "MeshLayout":
    return cls(make_mesh(data, fsdp, tensor), shardings.check_rules(rules))

  @property
  def batch_devices(self) -> int:
    return self.mesh.shape["data"] * self.mesh.shape["fsdp"]  # `tensor` repeats the batch.

  def name_parameters(self, param_axes: shardings.ParamAxes) -> None:
    self.param_axes = dict(param_axes)

  def saved_shardings(self, abstract_loop: Any) -> Any:
    sizes = dict(self.mesh.shape)
    state = abstract_loop.get("state") if isinstance(abstract_loop, dict) else None
    if not self._told_whole and hasattr(state, "params"):
      # Once a run: the parameter axes the rules meant to split but could not.
      self._told_whole = True
      whole = shardings.whole_axes(state.params, self.param_axes, self.rules, sizes)
      if whole:
        logger.warning(
          "parallel.rules: %d parameter axes stay whole, as the mesh axes do not divide them "
          "(pick sizes they divide, e.g. heads and MLP width multiples of parallel.mesh.tensor, "
          "or pad the vocabulary): %s",
          len(whole),
          "; ".join(whole[:4]) + ("; ..." if len(whole) > 4 else ""),
        )
    specs = shardings.loop_specs(abstract_loop, self.param_axes, self.rules, sizes)
    return jax.tree.map(lambda spec: NamedSharding(self.mesh, spec), specs)

  def _with_rules(self, fn: Callable) -> Callable:
    """`fn` traced with the models' activation names in force (jaxdl.nn.partitioning)."""

    # Without a tensor axis, XLA's propagation from the batch and the parameters places the
    # activations well; constraining them too changes its choices, and so the last bits of
    # data/FSDP runs (tools/results_unchanged.py's fsdp_8), for no gain.
    if self.mesh.shape["tensor"] == 1:
      return fn

    def traced(*args, **kwargs):
      with partitioning.sharding_rules(self.mesh, self.rules):
        return fn(*args, **kwargs)

    # The compiled program keeps fn's name ("jit_update" in profiles and dumps).
    inner = fn
    while isinstance(inner, functools.partial):
      inner = inner.func
    traced.__name__ = traced.__qualname__ = getattr(inner, "__name__", "traced")
    return traced

  def from_saved(self, loop: Any) -> Any:
    return loop

  def to_saved(self, loop: Any) -> Any:
    return loop

  def to_host(self, tree: Any) -> Any:
    return jax.device_get(tree)

  def data_shard(self) -> tuple[int, int]:
    """The batch is split over data x fsdp only: processes whose devices differ only along
    `tensor` (a tensor axis across processes) hold the same rows, and so read the same shard.
    Worked out once: put_batch asks at every step."""
    if self._data_shard is None:
      self._data_shard = (0, 1) if jax.process_count() == 1 else self._shard_of_this_process()
    return self._data_shard

  def _shard_of_this_process(self) -> tuple[int, int]:
    blocks = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    batch = NamedSharding(self.mesh, P(("data", "fsdp")))
    owned: dict[int, set[int]] = {}
    for device, (rows,) in batch.devices_indices_map((blocks,)).items():
      owned.setdefault(device.process_index, set()).add(rows.start or 0)
    groups = sorted({tuple(sorted(b)) for b in owned.values()})
    contiguous = all(g == tuple(range(g[0], g[0] + len(g))) for g in groups)
    if sorted(b for g in groups for b in g) != list(range(blocks)) or not contiguous:
      raise ConfigError(
        f"parallel.mesh {dict(self.mesh.shape)}: the processes' devices do not each hold whole, "
        "contiguous blocks of the batch; give every process the same number of devices and "
        "keep parallel.mesh.tensor within or across whole processes."
      )
    return groups.index(tuple(sorted(owned[jax.process_index()]))), len(groups)

  def put_batch(
    self, host_batch: dict[str, np.ndarray], member_axis: bool = False, steps_axis: bool = False
  ) -> Any:
    lead = int(steps_axis) + int(member_axis)  # Axes in front of B.
    sharding = NamedSharding(self.mesh, P(*[None] * lead, ("data", "fsdp")))
    count = self.data_shard()[1]

    def put(x):
      global_shape = (*x.shape[:lead], x.shape[lead] * count, *x.shape[lead + 1 :])
      return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, host_batch)

  def compile_update(
    self, update: Callable, state_shardings: Any = None, steps_in_call: bool = False
  ) -> Callable:
    del steps_in_call  # jit takes the step count like any other argument.
    out_shardings = None
    if state_shardings is not None:
      out_shardings = (state_shardings["state"], state_shardings["metric_sums"], self.replicated())
    return jax.jit(self._with_rules(update), donate_argnums=(0, 1), out_shardings=out_shardings)

  def compile_elementwise(self, fn: Callable, shardings: Any = None) -> Callable:
    return jax.jit(fn, out_shardings=shardings)

  def compile_eval(self, eval_step: Callable) -> Callable:
    stepped = jax.jit(self._with_rules(eval_step))
    return lambda state, batch: jax.device_get(stepped(state, batch))
