"""Remat: recomputing a module's activations in the backward pass instead of keeping them.

`remat` names a `jax.checkpoint_policies` policy of what the forward pass keeps (REMAT_POLICIES):
"none" keeps everything (no remat), "full" keeps only each rematted module's inputs,
"dots_saveable" keeps every matmul's output, "dots_with_no_batch_dims_saveable" those of matmuls
without batch dimensions in `dot_general`'s sense: the projections by weight matrices, but not
attention's per-head products of queries, keys and values. The gradient is the same function; XLA
may fuse the recomputed forward differently, so it equals the plain gradient to float rounding.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax

REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots_saveable": jax.checkpoint_policies.dots_saveable,
  "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(remat: str) -> None:
  if remat not in REMAT_POLICIES:
    raise ValueError(
      f"remat={remat!r} is not a remat policy; choose one of "
      f"{', '.join(map(repr, REMAT_POLICIES))} (model.remat=...)."
    )


def rematted(cls: type[nn.Module], remat: str, static_argnums: Sequence[int], **kwargs) -> Any:
  """`cls` whose calls recompute their activations in the backward pass under policy `remat`
  ("none": `cls` itself). `static_argnums` count `self` as 0 (Python values such as `train`)."""
  check_remat(remat)
  if remat == "none":
    return cls
  return nn.remat(cls, policy=REMAT_POLICIES[remat], static_argnums=tuple(static_argnums), **kwargs)
