"""What a train step does across the devices that each hold a share of the batch.

A step made with `make_train_step(..., collectives=...)` (jaxdl.train.step) asks its collectives for
three things: the key each device draws its dropout masks from, how BatchNorm computes its batch
statistics, and the mean of the gradients and metrics. A layout (jaxdl.train.parallel) says which:

- `GLOBAL`: the step is one program over global arrays (jit over a mesh, or one device); XLA
  inserts whatever communication the shardings need, and the step's code does nothing.
- `OverAxis(name)`: the step runs once per device on that device's share, inside a mapped axis
  `name` (jax.pmap, or vmap/shard_map with a named axis). Gradients and metrics are averaged over
  the axis (weighted like micro-batches: jaxdl.train.step), BatchNorm normalises over the global
  batch (`sync_batch_norm`), and each device folds its axis index into the step's key, so dropout
  masks differ between devices while the key passed in is the same on all of them.
"""

import contextlib
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class Global:
  """The step is one program over global arrays: nothing to do across devices."""

  def device_key(self, key: jax.Array) -> jax.Array:
    return key

  def batch_norm(self) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()

  def mean(self, tree: Any, weight: Callable[[], jax.Array] | None) -> Any:
    del weight
    return tree

  def traceable(self, fn: Callable) -> Callable:
    """`fn`, traceable outside the mapped axis (for jax.eval_shape): already is."""
    return fn


GLOBAL = Global()


@dataclasses.dataclass(frozen=True)
class OverAxis:
  """The step runs per device inside the mapped axis `axis_name` (module docstring)."""

  axis_name: str

  def device_key(self, key: jax.Array) -> jax.Array:
    return jax.random.fold_in(key, jax.lax.axis_index(self.axis_name))

  def batch_norm(self) -> contextlib.AbstractContextManager:
    return sync_batch_norm(self.axis_name)

  def mean(self, tree: Any, weight: Callable[[], jax.Array] | None) -> Any:
    """The mean of `tree` over the devices, weighted by each device's `weight()` (what its loss
    is a mean over) unless `weight` is None."""
    if weight is None:
      return jax.lax.pmean(tree, self.axis_name)
    weight = weight()
    summed = jax.lax.psum(jax.tree.map(lambda x: x * weight, tree), self.axis_name)
    mean = weighted_mean(summed, jax.lax.psum(weight, self.axis_name))
    return jax.tree.map(lambda m, x: m.astype(x.dtype), mean, tree)

  def traceable(self, fn: Callable) -> Callable:
    """`fn`, traceable outside the mapped axis (for jax.eval_shape): inside a 1-wide vmap that
    names the axis, so that its collectives have an axis to reduce over."""

    def traced(*args):
      batched = jax.vmap(fn, axis_name=self.axis_name, axis_size=1, in_axes=None, out_axes=0)
      return jax.tree.map(lambda x: x[0], batched(*args))

    return traced


Collectives = Global | OverAxis  # What a layout gives make_train_step.


def weighted_mean(sum_tree: Any, total_weight: jax.Array) -> Any:
  """`sum_tree` (sums weighted by what each part's mean is over) divided by the total weight: the
  mean over micro-batches (jaxdl.train.step) or devices."""
  # A total weight of 0 (no scored token anywhere) means every weighted sum is 0 too: return 0.
  total = jnp.maximum(total_weight, jnp.finfo(jnp.float32).tiny)
  return jax.tree.map(lambda s: s / total, sum_tree)


def sync_batch_norm(axis_name: str):
  """Context manager: every `nn.BatchNorm` whose `axis_name` is None normalises over `axis_name`.

  Under `jax.pmap` (or `vmap`/`shard_map` with a named axis) each device sees only its shard of
  the batch, so a plain BatchNorm would normalise with per-device statistics and each device's
  running averages would drift apart. Inside this context the batch mean and variance are
  `lax.pmean`-ed over `axis_name`: training normalises with the statistics of the whole global
  batch, as the single-device step does, and the running averages stay equal on every device.
  BatchNorms that already name an axis, and every other layer, are left alone; with
  `use_running_average=True` (evaluation) BatchNorm computes no statistics, so this is harmless.

    with sync_batch_norm("batch"):
      logits, new_state = model.apply(variables, x, train=True, mutable=["batch_stats"])
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if not (
      isinstance(module, nn.BatchNorm)
      and context.method_name == "__call__"
      and module.axis_name is None
    ):
      return next_fun(*args, **kwargs)
    # Modules are frozen dataclasses; this instance exists only for the current `apply`, and the
    # attribute is restored after the call, so nothing outside sees the change.
    object.__setattr__(module, "axis_name", axis_name)
    try:
      return next_fun(*args, **kwargs)
    finally:
      object.__setattr__(module, "axis_name", None)

  return nn.intercept_methods(interceptor)
