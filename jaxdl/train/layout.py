"""The interface of a run's device layout (jaxdl.train.parallel): where the loop state and batches
live, and the step functions compiled for that.

The loop state ({"state", "metric_sums", "rng"}) has two forms. The saved form is global arrays:
what `init` computes and checkpoints hold, the same whatever the layout, so a checkpoint restores on
any other. The run form is what the compiled functions take; `from_saved` and `to_saved` convert.
"""

import abc
from typing import Any, Callable

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from jaxdl.errors import ConfigError
from jaxdl.train import collectives as collectives_lib


class Layout(abc.ABC):
  """One run's device layout. Implementations: jaxdl.train.mesh_layout.MeshLayout (jit over a
  mesh) and jaxdl.train.pmap_layout.PmapLayout."""

  strategy: str  # Its `parallel.strategy` name.
  # What the train step does across devices, for make_train_step.
  collectives: collectives_lib.Collectives

  def __init__(self, mesh: Mesh):
    # Every device, ("data", "fsdp", "tensor"): batches and saved state are laid out on it.
    self.mesh = mesh

  @classmethod
  @abc.abstractmethod
  def from_mesh_config(cls, data: int, fsdp: int, tensor: int = 1, rules: Any = ()) -> "Layout":
    """The layout over every device JAX sees, for `parallel.mesh.data`, `.fsdp`, `.tensor` and
    `parallel.rules`."""

  def name_parameters(self, param_axes: dict[tuple[str, ...], tuple[str | None, ...]]) -> None:
    """The logical axis names of the model's parameters (jaxdl.train.shardings.param_axes), for
    a layout that places parameters by them; before `init`, `saved_shardings` and the rest.
    Layouts that replicate everything ignore them."""
    del param_axes

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  @property
  def batch_devices(self) -> int:
    """How many ways a batch is split (every device, unless some axis repeats the batch)."""
    return self.num_devices

  def check_batch_size(self, batch_size: int, key: str) -> None:
    n = self.batch_devices
    if batch_size % n:
      raise ConfigError(
        f"{key}={batch_size} does not split evenly over {n} devices; use a "
        f"multiple of {n} (e.g. {key}={max(n, batch_size // n * n)})."
      )

  # ------------------------------------------------------------------ The saved (global) form

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @abc.abstractmethod
  def saved_shardings(self, abstract_loop: Any) -> Any:
    """The sharding of each array of the loop state in its saved form."""

  def abstract_saved(self, shapes: Any) -> Any:
    """Shapes, dtypes and shardings of the loop state (`shapes`: its jax.eval_shape), to restore
    a checkpoint into."""
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      shapes,
      self.saved_shardings(shapes),
    )

  def init(self, init: Callable[[], Any], shapes: Any) -> Any:
    """The loop state of step 0 (`shapes`: jax.eval_shape of `init`), in the run form."""
    return self.from_saved(jax.jit(init, out_shardings=self.saved_shardings(shapes))())

  @abc.abstractmethod
  def from_saved(self, loop: Any) -> Any:
    """Saved loop state (as initialised or restored) -> the run form."""

  @abc.abstractmethod
  def to_saved(self, loop: Any) -> Any:
    """Run form -> the saved loop state, what checkpoints hold."""

  # ------------------------------------------------------------------ Run form

  @abc.abstractmethod
  def to_host(self, tree: Any) -> Any:
    """Device arrays of the run form -> their global value as host numpy."""

  @abc.abstractmethod
  def put_batch(
    self, host_batch: dict[str, np.ndarray], member_axis: bool = False, steps_axis: bool = False
  ) -> Any:
    """This process's rows of a global batch [B, ...] (a sweep's [members, B, ...]; with
    `steps_axis`, several steps' batches stacked in front, [K, ...], from
    jaxdl.train.parallel.stack_steps) -> device arrays split over the devices along B."""

  @abc.abstractmethod
  def compile_update(
    self, update: Callable, state_shardings: Any = None, steps_in_call: bool = False
  ) -> Callable:
    """(state, sums, batch, rng) -> (state, sums, loss), state and sums donated; with
    `steps_in_call`, (state, sums, batches, n, rng) -> the same after n steps
    (jaxdl.train.step.steps_in_one_call; batches from `put_batch(..., steps_axis=True)`).

    `update` must use this layout's `collectives` (make_train_step's). `state_shardings` (the
    saved form's, `saved_shardings`) keeps the state in its layout from step to step.
    """

  @abc.abstractmethod
  def compile_elementwise(self, fn: Callable, shardings: Any = None) -> Callable:
    """A function of the loop state that needs no collectives (resetting the metric sums);
    `shardings`: its outputs'."""

  @abc.abstractmethod
  def compile_eval(self, eval_step: Callable) -> Callable:
    """(state, batch) -> metric sums over the batch's real rows, as host numpy."""

  def data_shard(self) -> tuple[int, int]:
    """(index, count): this process feeds block `index` of `count` equal blocks of rows of each
    global batch (the training data is read in `count` shards). Here one block a process."""
    return jax.process_index(), jax.process_count()

  def local_rows(self, host_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's share of a global batch that every process holds whole (evaluation)."""
    index, count = self.data_shard()
    if count == 1:
      return host_batch
    return jax.tree.map(lambda x: np.array_split(x, count)[index], host_batch)
