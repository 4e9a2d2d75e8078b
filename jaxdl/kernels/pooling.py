"""Pooling over windows that tile the input, as a reshape and a reduction; the fused conv-pool's
max-and-argmax reduction and gradient routing.

Flax's `nn.max_pool` lowers to XLA's `reduce_window`, whose gradient is `select_and_scatter`, slow
on XLA:CPU (benchmarks/README.md, "pooling"). When the windows tile the input (window == strides,
no padding: every classic CNN's 2x2/2 pool), pooling is a reshape to [B, H/h, h, W/w, w, C] and a
reduction over the two window axes, and its gradient is an elementwise mask. The results are
Flax's to the bit: the forward is a max (or a sum then a division, in the same order), and the max
gradient goes to the *first* maximal element of each window in row-major order, as
`select_and_scatter` sends it. jaxdl.nn.pooling picks this path where it applies.
"""

import functools
import itertools
import math
from typing import Sequence

import jax
from jax import lax
import jax.numpy as jnp


def tiles(x: jax.Array, window: tuple[int, ...], strides: tuple[int, ...] | None, padding) -> bool:
  """Whether the windows tile the spatial axes of `x` (the remainder is dropped, as VALID does)."""
  return (
    tuple(strides or window) == tuple(window) and padding == "VALID" and x.ndim == len(window) + 2
  )


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


def max_and_first_argmax(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """The maximum along `axis` and the first index holding it (int32; argmax's ties, as
  select_and_scatter's), in one reduction. Differentiable in the maximum, whose derivative is
  that of the first maximum's element.

  XLA:CPU fuses the producer of `x` into this reduction, so an `x` computed elementwise (a fused
  conv-pool's per-phase outputs) is never written out; jnp.max and jnp.argmax are two passes,
  and jnp.max alone becomes a YNNPACK reduction that needs `x` in memory. NaNs are not ranked.
  """
  top, first = _max_and_first_index(x, axis % x.ndim)
  return top, first.astype(jnp.int32)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_and_first_index(x, axis):
  # The index is carried in x's dtype (exact up to 256 positions even in bfloat16), so that the
  # JVP below can give it an ordinary zero tangent.
  if x.shape[axis] > 256:
    raise ValueError(
      f"max_and_first_argmax: at most 256 positions along the axis; got "
      f"{x.shape[axis]}. Use jnp.max and jnp.argmax."
    )
  index = lax.broadcasted_iota(x.dtype, x.shape, axis)

  def keep_first_max(a, b):
    (a_value, a_index), (b_value, b_index) = a, b
    take_b = (b_value > a_value) | ((b_value == a_value) & (b_index < a_index))
    return jnp.where(take_b, b_value, a_value), jnp.where(take_b, b_index, a_index)

  init = (jnp.array(-jnp.inf, x.dtype), jnp.array(x.shape[axis], x.dtype))
  return lax.reduce((x, index), init, keep_first_max, (axis,))


@_max_and_first_index.defjvp
def _max_and_first_index_jvp(axis, primals, tangents):
  (x,), (x_dot,) = primals, tangents
  top, first = _max_and_first_index(x, axis)
  where = jnp.expand_dims(first.astype(jnp.int32), axis)
  top_dot = jnp.squeeze(jnp.take_along_axis(x_dot, where, axis), axis)
  return (top, first), (top_dot, jnp.zeros_like(first))


def route_to_winner(dy: jax.Array, winner: jax.Array, num_phases: int, axis: int):
  """A fused conv-pool's backward routing: the pooled output's gradient `dy` goes to the phase
  `winner` names, none where winner == num_phases (the ReLU was off).

  Returns (through, dz): `dy` where any phase wins, else 0 (the bias gradient sums it), and the
  per-phase gradients stacked on `axis`. `through` is formed first and the phases from it, so
  XLA:CPU materialises it once; selecting each phase from dy directly, it fused the previous
  layer's input gradient into all the selects and the bias sum, recomputing it each time.
  """
  zero = jnp.zeros((), dy.dtype)
  through = jnp.where(winner < num_phases, dy, zero)
  dz = jnp.stack([jnp.where(winner == p, through, zero) for p in range(num_phases)], axis=axis)
  return through, dz


def tiled_max_pool(x: jax.Array, window: Sequence[int]) -> jax.Array:
  """Max over the windows that tile x's spatial axes (remainder dropped, as VALID does), with a
  gradient to each window's first maximum, as select_and_scatter's. Requires `tiles(...)`."""
  return _tiled_max_pool(x, tuple(window))


def tiled_avg_pool(x: jax.Array, window: Sequence[int]) -> jax.Array:
  """Mean over the windows that tile x's spatial axes, summed then divided as Flax's avg_pool."""
  window = tuple(window)
  return jnp.sum(_window_view(x, window), axis=_window_axes(len(window))) / math.prod(window)
