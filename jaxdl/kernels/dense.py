"""Dense layers on [N, D] rows: a [B, T, D] input flattened before the layer, unflattened after.

The same numbers as the layer on [B, T, D]; what changes is the gradient XLA:CPU compiles (see
`flat_apply`). Timings: benchmarks/README.md ("Dense layers on [B*T, D] rows").
"""

from typing import Any, Callable

import jax

Array = jax.Array


def flat_apply(layer: Callable[[Array], Any], x: Array, feature_axes: int = 1) -> Array:
  """layer(x) with x's leading axes (all but the last `feature_axes`) flattened into one.

  The same numbers as layer(x), for a layer that acts on the feature axes alone (a Dense): the
  kernel's gradient then contracts over ONE axis of x and of the output's cotangent, which XLA:CPU
  multiplies as they are, where over two (batch, time) it first copies the cotangent transposed,
  fused into whatever produced it.
  """
  lead = x.shape[: x.ndim - feature_axes]
  y = layer(x.reshape(-1, *x.shape[x.ndim - feature_axes :]))
  return y.reshape(*lead, *y.shape[1:])
