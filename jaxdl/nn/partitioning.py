"""Logical axis names: how jaxdl's models say what each axis of a parameter or activation is, so
that how they are split over devices is configuration (`parallel.rules`), not model code.

Parameters are named with Flax's `nn.with_logical_partitioning(init, names)`: `init` returns them
boxed (`nn.LogicallyPartitioned`), and `nn.unbox` gives the arrays; the trainer reads the names
with `nn.get_partition_spec` before unboxing. Activations are named with `constrain(x, names)`,
which becomes a sharding constraint while `sharding_rules(mesh, rules)` is active (the trainer
traces its steps inside it) and does nothing otherwise, so the models run anywhere.

Rules map each logical name to mesh axes, first match first (as in Flax and MaxText):
RULES below are jaxdl's defaults, Megatron-style: attention heads and the MLP's hidden units over
`tensor`, parameters' model width over `fsdp`, the batch over `data` and `fsdp`. A dimension a
rule's axes do not divide is left whole (e.g. GPT-2's odd vocabulary of 50257 over `tensor`).
"""

import contextlib
import contextvars
import math
from typing import Any, Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# Parameter axes.
EMBED = "embed"  # The model width D.
VOCAB = "vocab"
HEADS = "heads"  # Attention heads (query and key/value heads).
KV = "kv"  # The head dimension H.
MLP = "mlp"  # The MLP's hidden units.
# Activation axes: their own names, so that a rule for a parameter axis (embed over fsdp) does
# not also split the activations' width.
BATCH = "activation_batch"
LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_HEADS = "activation_heads"
ACT_KV = "activation_kv"
ACT_MLP = "activation_mlp"

Rules = Sequence[tuple[str, str | Sequence[str] | None]]

RULES: tuple[tuple[str, Any], ...] = (
  (BATCH, ("data", "fsdp")),
  (ACT_HEADS, "tensor"),
  (ACT_MLP, "tensor"),
  (EMBED, "fsdp"),
  (HEADS, "tensor"),
  (MLP, "tensor"),
  (VOCAB, "tensor"),
)


def _axes(mesh_axes: str | Sequence[str] | None) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def logical_spec(
  names: Sequence[str | None], shape: Sequence[int], rules: Rules, axis_sizes: dict[str, int]
) -> P:
  """The PartitionSpec of an array of `shape` whose axes are called `names`: each axis takes the
  first rule for its name whose mesh axes (those of size > 1) are not taken by an earlier axis
  and whose sizes divide it; otherwise it stays whole."""
  if len(names) != len(shape):
    raise ValueError(f"Logical axis names {tuple(names)} do not fit an array of shape {shape}.")
  used: set[str] = set()
  spec: list[Any] = []
  for name, size in zip(names, shape):
    chosen = None
    for rule_name, mesh_axes in rules:
      if rule_name != name:
        continue
      axes = tuple(a for a in _axes(mesh_axes) if axis_sizes.get(a, 1) > 1)
      if axes and not used & set(axes) and size % math.prod(axis_sizes[a] for a in axes) == 0:
        chosen = axes[0] if len(axes) == 1 else axes
        used |= set(axes)
        break
    spec.append(chosen)
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
  "jaxdl_sharding_rules", default=None
)


@contextlib.contextmanager
def sharding_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """While active (around tracing a step), `constrain` places activations on `mesh` by `rules`."""
  token = _ACTIVE.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """`x` with its axes called `names`: a sharding constraint under `sharding_rules`, else `x`."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  spec = logical_spec(names, x.shape, rules, dict(mesh.shape))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
