"""Max and average pooling with a fast path for non-overlapping windows.

Flax's `nn.max_pool` lowers to XLA's `reduce_window`, whose gradient is `select_and_scatter`. On
XLA:CPU that gradient is slow: in the seed MNIST CNN at batch 64 the two 2x2 max-pools took more
CPU time in the backward pass than all three convolutions (benchmarks/README.md, "pooling").
When the windows tile the input (window == strides, no padding: every classic CNN's 2x2/2 pool),
pooling is a reshape to [B, H/h, h, W/w, w, C] and a reduction over the two window axes, and its
gradient is an elementwise mask. The results are the same as Flax's to the bit: the forward is a
max (or a sum then a division, in the same order), and the max gradient goes to the *first*
maximal element of each window in row-major order, as `select_and_scatter` sends it.

Other windows (overlapping, strided differently, padded) fall back to Flax's implementation.
"""

import functools
import itertools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

POOL_IMPLS = ("reshape", "reduce_window")


def _check_impl(impl: str) -> None:
  if impl not in POOL_IMPLS:
    raise ValueError(f"Unknown pooling implementation {impl!r}; choose one of {POOL_IMPLS} "
                     "('reshape' is the fast path for non-overlapping windows, 'reduce_window' "
                     "is Flax's nn.max_pool/avg_pool).")


def _tiles(x: jax.Array, window: tuple[int, ...], strides: tuple[int, ...] | None,
           padding) -> bool:
  """Whether the windows tile the spatial axes of `x` (the remainder is dropped, as VALID does)."""
  return (tuple(strides or window) == tuple(window) and padding == "VALID"
          and x.ndim == len(window) + 2)


def _window_view(x_BHWC: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """[B, H, W, C] -> [B, H//h, h, W//w, w, C] (any number of spatial axes), dropping the remainder
  rows and columns that a VALID pool ignores."""
  spatial = x_BHWC.shape[1:-1]
  kept = [s // k * k for s, k in zip(spatial, window)]
  x = x_BHWC[(slice(None),) + tuple(slice(0, n) for n in kept)]
  shape = [x.shape[0]]
  for n, k in zip(kept, window):
    shape += [n // k, k]
  return x.reshape(shape + [x.shape[-1]])


def _window_axes(num_spatial: int) -> tuple[int, ...]:
  return tuple(2 + 2 * i for i in range(num_spatial))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
  return jnp.max(_window_view(x, window), axis=_window_axes(len(window)))


def _tiled_max_pool_fwd(x, window):
  view = _window_view(x, window)
  return jnp.max(view, axis=_window_axes(len(window))), (view, x.shape)


def _tiled_max_pool_bwd(window, residuals, dy):
  view, x_shape = residuals  # view: [B, H', h, W', w, C]; dy: [B, H', W', C]
  axes = _window_axes(len(window))
  y = jnp.expand_dims(jnp.max(view, axis=axes), axes)
  # Visit the window's elements in row-major order and give the whole gradient to the first
  # maximum, as select_and_scatter does (jnp.max's own gradient would split it between ties).
  # For a 2x2 window that is four elementwise selects, which XLA fuses into one loop.
  taken = jnp.zeros(dy.shape, bool)
  grads = {}
  for offsets in itertools.product(*[range(k) for k in window]):
    index = [slice(None)] * view.ndim
    for axis, offset in zip(axes, offsets):
      index[axis] = offset
    chosen = (view[tuple(index)] == jnp.squeeze(y, axes)) & ~taken
    taken = taken | chosen
    grads[offsets] = jnp.where(chosen, dy, jnp.zeros((), dy.dtype))

  def assemble(prefix: tuple[int, ...]) -> jax.Array:
    # Stack the window axes back in: the arrays stacked at depth d still lack the d window axes
    # before theirs, so window axis d (at 2 + 2d in the view) goes in at 2 + d.
    depth = len(prefix)
    if depth == len(window):
      return grads[prefix]
    return jnp.stack([assemble(prefix + (k,)) for k in range(window[depth])], axis=2 + depth)

  grads_view = assemble(())
  kept = [view.shape[a - 1] * view.shape[a] for a in axes]
  grads_x = grads_view.reshape([view.shape[0]] + kept + [view.shape[-1]])
  pad = [(0, 0)] + [(0, full - n) for full, n in zip(x_shape[1:-1], kept)] + [(0, 0)]
  return (jnp.pad(grads_x, pad),)


_tiled_max_pool.defvjp(_tiled_max_pool_fwd, _tiled_max_pool_bwd)


def max_pool(x: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID", *,
             impl: str = "reshape") -> jax.Array:
  """`flax.linen.max_pool` with the same arguments and results; faster for tiling windows.

  Args:
    x: [B, *spatial, C] inputs.
    window_shape, strides, padding: as in `nn.max_pool`.
    impl: "reshape" uses the reshape-and-reduce path when window == strides and padding is VALID
      (and Flax's otherwise); "reduce_window" always uses Flax's.
  """
  _check_impl(impl)
  window = tuple(window_shape)
  if impl == "reshape" and _tiles(x, window, strides and tuple(strides), padding):
    return _tiled_max_pool(x, window)
  return nn.max_pool(x, window, strides=strides, padding=padding)


def avg_pool(x: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID", *,
             impl: str = "reshape") -> jax.Array:
  """`flax.linen.avg_pool` (count_include_pad=True) with a reshape path for tiling windows."""
  _check_impl(impl)
  window = tuple(window_shape)
  if impl == "reshape" and _tiles(x, window, strides and tuple(strides), padding):
    axes = _window_axes(len(window))
    # Flax sums the window with reduce_window, then divides by its size: do the same.
    return jnp.sum(_window_view(x, window), axis=axes) / math.prod(window)
  return nn.avg_pool(x, window, strides=strides, padding=padding)
