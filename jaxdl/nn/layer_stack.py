"""A stack of identical Transformer blocks, and how it runs: remat and scan over layers.

Two switches that change memory and compile time but not what the stack computes:

- `remat` recomputes each block's activations in the backward pass instead of keeping them
  (jaxdl.nn.remat).
- `scan` compiles one block and runs it num_layers times with `nn.scan`: compile time stops
  growing with depth, and every parameter gets a leading layer axis under one name, LAYERS
  ("layers/self_attn/query/kernel" [L, D, N, H] instead of "block_3/self_attn/query/kernel").
  jaxdl.train.layer_forms converts parameters, optimizer moments and checkpoints from one form
  to the other, so a run can switch.

Every layer of a stack is called as `layer(x, mask, encoded, cross_mask, train, decode)` and
returns `(x, None)`, the form `nn.scan` needs, whether scanned or not.
"""

from typing import Sequence

import flax.linen as nn
import jax

from jaxdl.nn.remat import rematted
from jaxdl.nn.transformer import TransformerBlock

LAYERS = "layers"  # The name of a scanned stack, and the logical name of its leading axis.


class _StackedBlock(TransformerBlock):
  """A TransformerBlock with positional arguments returning (x, None): scan's body form."""

  def __call__(self, x_BTD, mask, encoded_BSD, cross_mask, train, decode):
    x_BTD = TransformerBlock.__call__(
      self,
      x_BTD,
      mask=mask,
      encoded_BSD=encoded_BSD,
      cross_mask=cross_mask,
      train=train,
      decode=decode,
    )
    return x_BTD, None


def transformer_layers(
  num_layers: int, *, remat: str = "none", scan: bool = False, prefix: str = "block", **block
) -> tuple[nn.Module, ...]:
  """The layers of a stack of `num_layers` TransformerBlocks (fields `block`), to call with
  `apply_layers`: blocks named f"{prefix}_{i}", or one scanned module named LAYERS.

  Call it inside a compact method or `setup` (assigning the result), so the layers are the
  caller's children and the parameter paths are the model's own.
  """
  # train and decode (arguments 5 and 6, counting self) are Python bools.
  cls = rematted(_StackedBlock, remat, static_argnums=(5, 6), prevent_cse=not scan)
  if not scan:
    return tuple(cls(**block, name=f"{prefix}_{i}") for i in range(num_layers))
  scanned = nn.scan(
    cls,
    variable_axes={"params": 0, "cache": 0, "intermediates": 0},
    split_rngs={"params": True, "dropout": True},
    in_axes=(nn.broadcast,) * 5,
    length=num_layers,
    metadata_params={nn.PARTITION_NAME: LAYERS},
  )
  return (scanned(**block, name=LAYERS),)


def apply_layers(
  layers: Sequence[nn.Module],
  x_BTD: jax.Array,
  *,
  mask: jax.Array | None = None,
  encoded_BSD: jax.Array | None = None,
  cross_mask: jax.Array | None = None,
  train: bool = False,
  decode: bool = False,
) -> jax.Array:
  """x through every layer of `transformer_layers` (see TransformerBlock for the arguments)."""
  for layer in layers:
    x_BTD, _ = layer(x_BTD, mask, encoded_BSD, cross_mask, train, decode)
  return x_BTD
