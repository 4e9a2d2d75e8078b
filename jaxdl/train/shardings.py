"""Where each array of the loop state lives on the mesh (the jit layout's placement).

A parameter whose model names its axes (jaxdl.nn.partitioning) is split as `parallel.rules` map
those names to mesh axes; the optimizer's moments and the moving average of the parameters follow
their parameter. Any other array (a user module without names, BatchNorm statistics, step
counters) keeps the FSDP heuristic: split over `fsdp` along its largest dimension that `fsdp`
divides, if it is large enough to be worth it.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P
import numpy as np

from jaxdl.errors import ConfigError
from jaxdl.nn import partitioning
from jaxdl.train import param_paths

# Arrays with fewer elements than this stay replicated under FSDP: splitting a bias or a norm
# scale saves nothing and costs a collective.
MIN_FSDP_SIZE = 2**10

ParamAxes = dict[tuple[str, ...], tuple[str | None, ...]]  # parameter path -> its axes' names


def param_axes(model: nn.Module, example_inputs: Sequence[Any]) -> ParamAxes:
  """The logical axis names of each named parameter of `model` (abstractly: nothing allocated)."""
  init = functools.partial(model.init, train=False)
  boxed = jax.eval_shape(init, jax.random.key(0), *example_inputs).get("params", {})
  is_box = lambda x: isinstance(x, nn.Partitioned)
  named = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=is_box)[0]
  return {
    tuple(param_paths.path_str(keypath).split(param_paths.SEP)): tuple(leaf.names)
    for keypath, leaf in named
    if is_box(leaf)
  }


def check_rules(rules: Any) -> tuple[tuple[str, Any], ...]:
  """`parallel.rules` as (logical name, mesh axes) pairs, or a ConfigError naming the fix."""
  example = '[["heads", "tensor"], ["embed", "fsdp"]]'
  if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
    raise ConfigError(f"parallel.rules={rules!r} must be a list of pairs, e.g. {example}.")
  checked = []
  for rule in rules:
    ok = isinstance(rule, Sequence) and not isinstance(rule, str) and len(rule) == 2
    axes = rule[1] if ok else None
    ok = ok and isinstance(rule[0], str)
    ok = ok and (
      axes is None
      or isinstance(axes, str)
      or (isinstance(axes, Sequence) and all(isinstance(a, str) for a in axes))
    )
    if not ok:
      raise ConfigError(
        f"parallel.rules: {rule!r} is not a (logical name, mesh axes) pair; write each as "
        f"[name, axis], [name, [axis, ...]] or [name, null], e.g. {example}."
      )
    mesh_axes = [axes] if isinstance(axes, str) else list(axes or [])
    unknown = [a for a in mesh_axes if a not in ("data", "fsdp", "tensor")]
    if unknown:
      raise ConfigError(
        f"parallel.rules: {rule!r} names mesh axes {unknown}; the mesh's axes are data, fsdp "
        "and tensor."
      )
    checked.append((rule[0], tuple(mesh_axes) or None))
  return tuple(checked)


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """Where FSDP splits an array: its largest dimension divisible by `fsdp`, or nowhere."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_FSDP_SIZE:
    return P()
  candidates = [d for d, size in enumerate(shape) if size % fsdp == 0]
  if not candidates:
    return P()
  dim = max(candidates, key=lambda d: (shape[d], -d))
  return P(*([None] * dim + ["fsdp"]))


def _named_by(path: tuple[str, ...], shape: tuple[int, ...], axes: ParamAxes):
  """The names of the parameter this loop-state array is or follows: the parameter whose path
  ends `path` (state/params/..., state/opt_state/0/mu/..., state/ema_params/...)."""
  for start in range(len(path)):
    names = axes.get(path[start:])
    if names is not None and len(names) == len(shape):
      return names
  return None


def loop_specs(
  abstract_loop: Any, axes: ParamAxes, rules: Sequence[tuple[str, Any]], axis_sizes: dict[str, int]
) -> Any:
  """The PartitionSpec of each array of the loop state."""

  def spec(keypath, x):
    path = tuple(param_paths.path_str(keypath).split(param_paths.SEP))
    names = _named_by(path, tuple(x.shape), axes)
    if names is None:
      return fsdp_spec(tuple(x.shape), axis_sizes.get("fsdp", 1))
    return partitioning.logical_spec(names, x.shape, rules, axis_sizes)

  return jax.tree_util.tree_map_with_path(spec, abstract_loop)


def whole_axes(
  params: Any, axes: ParamAxes, rules: Sequence[tuple[str, Any]], axis_sizes: dict[str, int]
) -> list[str]:
  """ "path: name=size over mesh axes" for each named parameter axis that a rule maps to mesh
  axes of more than one device but that stays whole, as those axes do not divide it (a warning
  for the user: e.g. 12 heads over tensor=8)."""
  found = []
  for keypath, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = tuple(param_paths.path_str(keypath).split(param_paths.SEP))
    names = axes.get(path)
    if names is None or len(names) != x.ndim:
      continue
    spec = tuple(partitioning.logical_spec(names, x.shape, rules, axis_sizes))
    spec += (None,) * (x.ndim - len(spec))
    for name, size, placed in zip(names, x.shape, spec):
      wanted = [
        a
        for rule_name, mesh_axes in rules
        if rule_name == name
        for a in ([mesh_axes] if isinstance(mesh_axes, str) else list(mesh_axes or []))
        if axis_sizes.get(a, 1) > 1
      ]
      if placed is None and wanted:
        found.append(f"{'/'.join(path)}: {name}={size} over {'x'.join(wanted)}")
  return found
