"""A convolution, its bias, ReLU and a tiling max-pool as one op: im2col per pool phase.

In the seed MNIST CNN on XLA:CPU much of the step's op time was memory-bound work on conv1's
[B, 26, 26, 32] output: adding the bias, the ReLU, the pool and their three gradients, each a pass
over that array. Here the convolution is computed separately for each position of the pool window
(its "phase"): phase (a, b) of a 2x2 pool holds the convolution at output pixels (2i + a, 2j + b),
and all phases' patches go through one im2col matmul. The pool is then a max over the phase axis,
and the bias and ReLU run after it, on the pooled array (4x smaller), which gives the same numbers:

    y = relu(max_p(z_p) + bias),  z_p = patches_p @ kernel     z: [B, *pooled, P, O], P = h*w

since x -> x + bias and relu are monotone, also in floating point. The forward pass keeps the
patches and, per pooled output, the phase its gradient goes to (int8): the first holding the
maximum, as select_and_scatter and jaxdl.kernels.pooling choose, or none where the ReLU is
off. The backward pass routes the gradient there in one elementwise pass, and the kernel gradient
is one matmul over all phases' patches. Conv outputs that a VALID pool drops (conv2's 11th row and
column in the seed CNN) are never computed.

`impl` picks the algorithm per layer. "im2col" is the above everywhere: its results equal
jaxdl.kernels.im2col's convolution, then bias, relu and max_pool, up to float rounding of the
kernel and bias gradients (they are summed in another order). "auto" (the default) runs 3x3
convolutions with a 2x2 pool and 8 or more input channels by Winograd's F(2x2, 3x3)
(jaxdl.kernels.winograd: 2.25x fewer multiplications, no patch arrays), and computes a first
layer's small patches (at most ELEMENTWISE_MAX_PATCH values) times the kernel as elementwise
multiply-adds fused with the pool, where a matmul with so short a contraction only moves memory.
Its results differ from "im2col" by float rounding (tests/test_conv_pool.py,
tests/test_winograd.py). The speed of each is measured in benchmarks/README.md.
Stride-1 channels-last convolutions with a window-tiling pool of up to 64 positions only;
reverse-mode differentiation only, as for any `jax.custom_vjp`.
"""

import functools
import itertools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxdl.kernels import im2col as conv_lib
from jaxdl.kernels import pooling, winograd

IMPLS = ("auto", "im2col", "winograd")

# Patches of at most this many values (a 3x3 kernel on up to 3 channels: first layers) run their
# forward product as elementwise multiply-adds under impl "auto".
ELEMENTWISE_MAX_PATCH = 27

# Pool windows up to 8x8: each position is traced as its own view and select, and the gradient's
# phase index is int8. (Classic CNNs pool 2x2 or 3x3.)
MAX_WINDOW = 64


def _phases(window: Sequence[int]):
  """The pool window's positions, row-major: the order in which ties go to the first maximum."""
  return itertools.product(*[range(w) for w in window])


def _phase_patches(x_padded, kernel_size, window, pooled_size):
  """[B, *S_padded, C] -> [B, *pooled, P * prod(K) * C]: for each pool phase, the patches of the
  conv output pixel it holds, side by side: im2col's patches of the input shifted by the phase,
  at the pool's stride. One concatenate of strided views (XLA merges the nested slices and
  concatenates), and the reshape to matmul rows [B * pooled * P, prod(K) * C] is free."""
  return jnp.concatenate(
    [
      conv_lib.extract_patches(
        x_padded[(slice(None),) + tuple(slice(p, None) for p in phase)],
        kernel_size,
        window,
        pooled_size,
      )
      for phase in _phases(window)
    ],
    axis=-1,
  )


def _forward(x, kernel, bias, pads, window, precision, impl):
  n = x.ndim - 2
  kernel_size = kernel.shape[:n]
  if math.prod(window) > MAX_WINDOW:  # Checked first: tracing a huge window would take minutes.
    raise ValueError(
      f"conv_relu_max_pool: a {window} pool window has {math.prod(window)} "
      f"positions; at most {MAX_WINDOW} are supported (each is traced as its own "
      "views). Run the convolution, ReLU and jaxdl.nn.pooling.max_pool "
      "separately for such windows."
    )
  x_padded = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  conv_size = [conv_lib.output_size(s, k, 1) for s, k in zip(x_padded.shape[1:-1], kernel_size)]
  pooled_size = tuple(s // w for s, w in zip(conv_size, window))
  if min(pooled_size) < 1:
    raise ValueError(
      f"conv_relu_max_pool: a {window} pool does not fit the convolution's "
      f"{tuple(conv_size)} output; use a smaller window or a larger input."
    )
  num_phases, o = math.prod(window), kernel.shape[-1]
  c = x.shape[-1]
  if _elementwise_product(impl, math.prod(kernel_size) * c):
    # A first layer's patch holds a few values (9 for a 3x3 kernel on one channel): as a matmul
    # with so short a contraction XLA:CPU writes z at memory speed. As multiply-adds fused into
    # one reduction that yields the pooled maximum and its phase, z never leaves the cache
    # (seed CNN conv1: ~3 + ~3.5 ms of a 37 ms step at batch 256).
    views = [
      conv_lib.patch_views(
        x_padded[(slice(None),) + tuple(slice(p, None) for p in phase)],
        kernel_size,
        window,
        pooled_size,
      )
      for phase in _phases(window)
    ]  # [P][prod(K)] x [B, *pooled, C]
    taps = [
      [view[..., i : i + 1] for view in phase_views for i in range(c)] for phase_views in views
    ]  # [P][K * C] x [B, *pooled, 1], in kernel.reshape order
    kernel_KO = kernel.reshape(-1, o)
    z = jnp.stack(
      [
        functools.reduce(jnp.add, [tap * kernel_KO[k] for k, tap in enumerate(row)]) for row in taps
      ],
      axis=-2,
    )  # [B, *pooled, P, O]
    top, first = pooling.max_and_first_argmax(z + bias, axis=-2)
    y = jax.nn.relu(top)
    winner = jnp.where(y > 0, first.astype(jnp.int8), jnp.int8(num_phases))
    # For the kernel gradient: the patches laid out [K * C, N * P], columns (pixel, phase), so
    # that it is a standard product, which XLA:CPU hands to YNNPACK (as patches.T it ran as a
    # single-threaded dot). Cut from the input in this layout, while the forward reads the
    # input directly: at batch 256 ~3.9 ms of op time for both, against ~4.4 for patches [B,
    # *pooled, P * K * C] that the forward read and the backward transposed. (The forward
    # reading this layout took 9 ms.) Columns (phase, pixel) measured no faster and would sum
    # the gradient in another order than the other layouts do.
    rows_KN = jnp.stack(
      [
        jnp.stack([row[k][..., 0] for row in taps], axis=-1).reshape(-1)
        for k in range(len(taps[0]))
      ]
    )
    return y, (rows_KN, kernel, bias, winner, x.shape)
  patches = _phase_patches(x_padded, kernel_size, window, pooled_size)  # [B, *pooled, P*K*C]
  rows_NK = patches.reshape(-1, patches.shape[-1] // num_phases)
  z = jnp.matmul(rows_NK, kernel.reshape(-1, o), precision=precision)
  z = z.reshape(patches.shape[:-1] + (num_phases, o))  # [B, *pooled, P, O]
  # The output as a reduction over the phases, which XLA:CPU materialises once. (As a chain of
  # elementwise maxima it was fused into, and recomputed by, each of the next layer's patch
  # views: traced op time 93 against 74 ms for the seed CNN's step at batch 256.)
  # max_p(z_p) + bias = max_p(z_p + bias) exactly, as rounding is monotone.
  y = jax.nn.relu(jnp.max(z, axis=-2) + bias)
  # Which phase gets the gradient: the first holding the maximum (argmax's ties, as
  # select_and_scatter's), or none (num_phases) where the ReLU is off: relu'(0) = 0, as in
  # jax.nn.relu. Kept as int8, a quarter of the pooled output's bytes, rather than z (P times
  # them). As an argmax reduction XLA:CPU computes it here; as a chain of compares it fused it
  # into the backward pass, keeping z alive until then and reading it again (the seed CNN's
  # conv1 as a matmul: ~4 ms of a 40 ms step at batch 256).
  winner = jnp.argmax(z + bias, axis=-2).astype(jnp.int8)
  winner = jnp.where(y > 0, winner, jnp.int8(num_phases))
  return y, (rows_NK, kernel, bias, winner, x.shape)


def _elementwise_product(impl: str, patch_size: int) -> bool:
  """Whether the forward product runs as elementwise multiply-adds (auto, small patches)."""
  return impl == "auto" and patch_size <= ELEMENTWISE_MAX_PATCH


def conv_relu_max_pool(
  x,
  kernel,
  bias,
  pads: tuple[tuple[int, int], ...],
  window: tuple[int, ...],
  precision=None,
  impl: str = "auto",
):
  """relu(conv(x, kernel) + bias), max-pooled over non-overlapping `window`s (VALID).

  Args:
    x: the input, [B, *spatial, C].
    kernel: [*kernel_size, C, O]; the convolution has stride 1.
    bias: [O].
    pads: the convolution's (low, high) zero padding per spatial axis, each >= 0.
    window: the pool's window, also its strides; remainder rows and columns are dropped.
    precision: the matmuls' lax precision (None: the default).
    impl: "auto" (the fastest measured: Winograd F(2x2, 3x3) where jaxdl.kernels.winograd applies,
      else im2col per pool phase, as elementwise multiply-adds for patches of at most
      ELEMENTWISE_MAX_PATCH values), "im2col" (im2col matmuls per phase everywhere) or
      "winograd" (an error where it does not apply). All give the same numbers up to float
      rounding.

  Returns:
    [B, *(conv output size // window), O].
  """
  if impl not in IMPLS:
    raise ValueError(
      f"conv_relu_max_pool: unknown impl {impl!r}; choose one of {IMPLS} "
      "('auto' picks the fastest measured per layer)."
    )
  n = x.ndim - 2
  if kernel.ndim != n + 2 or kernel.shape[n] != x.shape[-1] or bias.shape != kernel.shape[-1:]:
    raise ValueError(
      f"conv_relu_max_pool: kernel {kernel.shape} [*K, C, O] and bias "
      f"{bias.shape} [O] do not fit an input {x.shape} [B, *S, C]."
    )
  use_winograd = x.ndim == 4 and winograd.applies(kernel.shape, window, x.shape[-1])
  if impl == "winograd" and not use_winograd:
    raise ValueError(
      f"conv_relu_max_pool: impl 'winograd' needs a 2-D 3x3 kernel, a (2, 2) pool and at "
      f"least {winograd.MIN_CHANNELS} input channels; got a kernel {kernel.shape} [*K, C, O] "
      f"and window {tuple(window)}. Use impl 'auto' or 'im2col' for this layer."
    )
  if use_winograd and impl != "im2col":
    x_padded = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
    return winograd.conv3x3_relu_max_pool2x2(x_padded, kernel, bias, precision)
  return _conv_relu_max_pool_im2col(x, kernel, bias, tuple(pads), tuple(window), precision, impl)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _conv_relu_max_pool_im2col(x, kernel, bias, pads, window, precision, impl):
  return _forward(x, kernel, bias, pads, window, precision, impl)[0]


def _bwd(pads, window, precision, impl, residuals, dy):
  rows, kernel, bias, winner, x_shape = residuals  # winner, dy: [B, *pooled, O]
  n = len(window)
  num_phases, kernel_size, (c, o) = math.prod(window), kernel.shape[:n], kernel.shape[n:]
  through, dz = pooling.route_to_winner(dy, winner, num_phases, axis=-2)  # dz: [B, *pooled, P, O]
  if _elementwise_product(impl, math.prod(kernel_size) * c):
    # rows: the patches [K * C, N * P], columns in dz's row order.
    dkernel = jnp.matmul(rows, dz.reshape(-1, o), precision=precision).reshape(kernel.shape)
  else:
    # rows: the patches [N * P, K * C], rows in dz's row order.
    dkernel = jnp.matmul(rows.T, dz.reshape(-1, o), precision=precision).reshape(kernel.shape)
  dbias = jnp.sum(through.reshape(-1, o), axis=0)
  # The input gradient as jaxdl.kernels.im2col computes it, from the conv output's gradient: the
  # phases interleaved back into [B, *conv_size, O], zeros where the pool dropped pixels. (Put
  # back from each phase's own patches, 36 views for a 3x3 kernel and 2x2 pool, XLA:CPU wrote
  # the 36 paddings out as separate arrays before summing them.) XLA drops all of this when the
  # input needs no gradient (a first layer).
  pooled = dy.shape[1:-1]
  dz = dz.reshape(dy.shape[:-1] + tuple(window) + (o,))  # [B, *pooled, *window, O]
  order = [0] + [a for i in range(n) for a in (1 + i, 1 + n + i)] + [1 + 2 * n]
  dy_conv = dz.transpose(order).reshape(
    (dy.shape[0],) + tuple(q * w for q, w in zip(pooled, window)) + (o,)
  )
  padded = [s + lo + hi for s, (lo, hi) in zip(x_shape[1:-1], pads)]
  conv_size = [s - k + 1 for s, k in zip(padded, kernel_size)]
  dy_conv = jnp.pad(
    dy_conv, [(0, 0)] + [(0, s - q * w) for s, q, w in zip(conv_size, pooled, window)] + [(0, 0)]
  )
  dpatches = jnp.matmul(dy_conv.reshape(-1, o), kernel.reshape(-1, o).T, precision=precision)
  dpatches = dpatches.reshape(dy_conv.shape[:-1] + (-1,))  # [B, *conv_size, K*C]
  dx = conv_lib.input_gradient(dpatches, c, kernel_size, (1,) * n, pads, x_shape).astype(rows.dtype)
  return dx, dkernel.astype(kernel.dtype), dbias.astype(bias.dtype)


_conv_relu_max_pool_im2col.defvjp(_forward, _bwd)
