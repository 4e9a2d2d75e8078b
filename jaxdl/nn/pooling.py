"""Max and average pooling with Flax's arguments and results, through jaxdl.kernels.pooling's
reshape path where the windows tile the input (window == strides, VALID: every classic CNN's
2x2/2 pool), whose gradient XLA:CPU runs much faster than reduce_window's. The results are Flax's
to the bit either way; other windows (overlapping, strided differently, padded) use Flax's.
"""

from typing import Sequence

import flax.linen as nn
import jax

from jaxdl.kernels import pooling as pooling_kernels

POOL_IMPLS = ("reshape", "reduce_window")


def _check_impl(impl: str) -> None:
  if impl not in POOL_IMPLS:
    raise ValueError(
      f"Unknown pooling implementation {impl!r}; choose one of {POOL_IMPLS} "
      "('reshape' is the fast path for non-overlapping windows, 'reduce_window' "
      "is Flax's nn.max_pool/avg_pool)."
    )


def max_pool(
  x: jax.Array,
  window_shape: Sequence[int],
  strides: Sequence[int] | None = None,
  padding: str | Sequence[tuple[int, int]] = "VALID",
  *,
  impl: str = "reshape",
) -> jax.Array:
  """`flax.linen.max_pool` with the same arguments and results; faster for tiling windows.

  Args:
    x: [B, *spatial, C] inputs.
    window_shape, strides, padding: as in `nn.max_pool`.
    impl: "reshape" uses the reshape-and-reduce path when window == strides and padding is VALID
      (and Flax's otherwise); "reduce_window" always uses Flax's.
  """
  _check_impl(impl)
  window = tuple(window_shape)
  if impl == "reshape" and pooling_kernels.tiles(x, window, strides and tuple(strides), padding):
    return pooling_kernels.tiled_max_pool(x, window)
  return nn.max_pool(x, window, strides=strides, padding=padding)


def avg_pool(
  x: jax.Array,
  window_shape: Sequence[int],
  strides: Sequence[int] | None = None,
  padding: str | Sequence[tuple[int, int]] = "VALID",
  *,
  impl: str = "reshape",
) -> jax.Array:
  """`flax.linen.avg_pool` (count_include_pad=True) with a reshape path for tiling windows."""
  _check_impl(impl)
  window = tuple(window_shape)
  if impl == "reshape" and pooling_kernels.tiles(x, window, strides and tuple(strides), padding):
    return pooling_kernels.tiled_avg_pool(x, window)
  return nn.avg_pool(x, window, strides=strides, padding=padding)
