"""A convolution, its bias, ReLU and a tiling max-pool as one op: im2col per pool phase.

In the seed MNIST CNN on XLA:CPU ~45% of the step's op time was memory-bound work on conv1's
[B, 26, 26, 32] output: adding the bias, the ReLU, the pool and their three gradients, each a pass
over that array. Here the convolution is computed separately for each position of the pool window
(its "phase"): phase (a, b) of a 2x2 pool holds the convolution at output pixels (2i + a, 2j + b),
and all phases' patches go through one im2col matmul. The pool is then a max over the phase axis,
and the bias and ReLU run after it, on the pooled array (4x smaller), which gives the same numbers:

    y = relu(max_p(z_p) + bias),  z_p = patches_p @ kernel     z: [B, *pooled, P, O], P = h*w

since x -> x + bias and relu are monotone, also in floating point. The forward pass keeps the
patches and, per pooled output, the phase its gradient goes to (int8): the first holding the
maximum, as select_and_scatter and jaxdl.nn.pooling.max_pool choose, or none where the ReLU is
off. The backward pass routes the gradient there in one elementwise pass, and the kernel gradient
is one matmul over all phases' patches. Conv outputs that a VALID pool drops (conv2's 11th row and
column in the seed CNN) are never computed.

Measured on the seed CNN's train step (2-core x86, one device; benchmarks/conv_impl.py, see
benchmarks/README.md): 1.3x faster at batch 64 and at 256 than im2col convolutions with separate
bias, ReLU and pool (15.1 against 19.9 ms, 60.0 against 77.3 ms). VGG-11: the same speed.

The results equal jaxdl.nn.conv's im2col convolution, then bias, relu and max_pool, up to float
rounding of the kernel and bias gradients (they are summed in another order;
tests/test_conv_pool.py). Stride-1 channels-last convolutions with a window-tiling pool of up to
64 positions only; reverse-mode differentiation only, as for any `jax.custom_vjp`.
"""

import functools
import itertools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxdl.nn import conv as conv_lib


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
  return jnp.concatenate([
      conv_lib.extract_patches(x_padded[(slice(None),) + tuple(slice(p, None) for p in phase)],
                               kernel_size, window, pooled_size)
      for phase in _phases(window)], axis=-1)


def _forward(x, kernel, bias, pads, window, precision):
  n = x.ndim - 2
  kernel_size = kernel.shape[:n]
  if kernel.ndim != n + 2 or kernel.shape[n] != x.shape[-1] or bias.shape != kernel.shape[-1:]:
    raise ValueError(f"conv_relu_max_pool: kernel {kernel.shape} [*K, C, O] and bias "
                     f"{bias.shape} [O] do not fit an input {x.shape} [B, *S, C].")
  if math.prod(window) > MAX_WINDOW:  # Checked first: tracing a huge window would take minutes.
    raise ValueError(f"conv_relu_max_pool: a {window} pool window has {math.prod(window)} "
                     f"positions; at most {MAX_WINDOW} are supported (each is traced as its own "
                     "views). Run the convolution, ReLU and jaxdl.nn.pooling.max_pool "
                     "separately for such windows.")
  x_padded = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  conv_size = [conv_lib.output_size(s, k, 1) for s, k in zip(x_padded.shape[1:-1], kernel_size)]
  pooled_size = tuple(s // w for s, w in zip(conv_size, window))
  if min(pooled_size) < 1:
    raise ValueError(f"conv_relu_max_pool: a {window} pool does not fit the convolution's "
                     f"{tuple(conv_size)} output; use a smaller window or a larger input.")
  num_phases, o = math.prod(window), kernel.shape[-1]
  patches = _phase_patches(x_padded, kernel_size, window, pooled_size)  # [B, *pooled, P*K*C]
  rows_NK = patches.reshape(-1, patches.shape[-1] // num_phases)
  z = jnp.matmul(rows_NK, kernel.reshape(-1, o), precision=precision)
  z = z.reshape(patches.shape[:-1] + (num_phases, o))  # [B, *pooled, P, O]
  # The output as a reduction over the phases, which XLA:CPU materialises once. (As a chain of
  # elementwise maxima it was fused into, and recomputed by, each of the next layer's patch
  # views: traced op time 93 against 74 ms for the seed CNN's step at batch 256.)
  # max_p(z_p) + bias = max_p(z_p + bias) exactly, as rounding is monotone.
  y = jax.nn.relu(jnp.max(z, axis=-2) + bias)
  # Which phase gets the gradient: the first holding the maximum (ties as select_and_scatter),
  # or none (num_phases) where the ReLU is off: relu'(0) = 0, as in jax.nn.relu. Kept as int8,
  # a quarter of the pooled output's bytes, rather than z (P times them).
  pre = [z[..., p, :] + bias for p in range(num_phases)]
  top = functools.reduce(jnp.maximum, pre)
  winner = jnp.full(top.shape, num_phases, jnp.int8)
  for p in reversed(range(num_phases)):
    winner = jnp.where(pre[p] == top, jnp.int8(p), winner)
  winner = jnp.where(top > 0, winner, jnp.int8(num_phases))
  return y, (rows_NK, kernel, bias, winner, x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def conv_relu_max_pool(x, kernel, bias, pads: tuple[tuple[int, int], ...],
                       window: tuple[int, ...], precision=None):
  """relu(conv(x, kernel) + bias), max-pooled over non-overlapping `window`s (VALID).

  Args:
    x: the input, [B, *spatial, C].
    kernel: [*kernel_size, C, O]; the convolution has stride 1.
    bias: [O].
    pads: the convolution's (low, high) zero padding per spatial axis, each >= 0.
    window: the pool's window, also its strides; remainder rows and columns are dropped.
    precision: the matmuls' lax precision (None: the default).

  Returns:
    [B, *(conv output size // window), O].
  """
  return _forward(x, kernel, bias, pads, window, precision)[0]


def _bwd(pads, window, precision, residuals, dy):
  rows_NK, kernel, bias, winner, x_shape = residuals  # winner, dy: [B, *pooled, O]
  n = len(window)
  num_phases, kernel_size, (c, o) = math.prod(window), kernel.shape[:n], kernel.shape[n:]
  zero = jnp.zeros((), dy.dtype)
  # `through` first, then the phases from it: XLA:CPU then materialises it once. (Selecting each
  # phase from dy directly, it fused the previous layer's input gradient (a sum of 9 paddings)
  # into all 4 selects and the bias sum, recomputing it 5 times.)
  through = jnp.where(winner < num_phases, dy, zero)
  dz = jnp.stack([jnp.where(winner == p, through, zero) for p in range(num_phases)], axis=-2)
  dz_NO = dz.reshape(-1, o)  # [B * pooled * P, O], the rows of rows_NK
  dkernel = jnp.matmul(rows_NK.T, dz_NO, precision=precision).reshape(kernel.shape)
  dbias = jnp.sum(through.reshape(-1, o), axis=0)
  # The input gradient as jaxdl.nn.conv computes it, from the conv output's gradient: the
  # phases interleaved back into [B, *conv_size, O], zeros where the pool dropped pixels. (Put
  # back from each phase's own patches, 36 views for a 3x3 kernel and 2x2 pool, XLA:CPU wrote
  # the 36 paddings out as separate arrays before summing them.) XLA drops all of this when the
  # input needs no gradient (a first layer).
  pooled = dy.shape[1:-1]
  dz = dz.reshape(dy.shape[:-1] + tuple(window) + (o,))  # [B, *pooled, *window, O]
  order = [0] + [a for i in range(n) for a in (1 + i, 1 + n + i)] + [1 + 2 * n]
  dy_conv = dz.transpose(order).reshape(
      (dy.shape[0],) + tuple(q * w for q, w in zip(pooled, window)) + (o,))
  padded = [s + lo + hi for s, (lo, hi) in zip(x_shape[1:-1], pads)]
  conv_size = [s - k + 1 for s, k in zip(padded, kernel_size)]
  dy_conv = jnp.pad(dy_conv, [(0, 0)] + [(0, s - q * w) for s, q, w in
                                         zip(conv_size, pooled, window)] + [(0, 0)])
  dpatches = jnp.matmul(dy_conv.reshape(-1, o), kernel.reshape(-1, o).T, precision=precision)
  dpatches = dpatches.reshape(dy_conv.shape[:-1] + (-1,))  # [B, *conv_size, K*C]
  dx = conv_lib.input_gradient(dpatches, c, kernel_size, (1,) * n, pads,
                               x_shape).astype(rows_NK.dtype)
  return dx, dkernel.astype(kernel.dtype), dbias.astype(bias.dtype)


conv_relu_max_pool.defvjp(_forward, _bwd)


class ConvReluMaxPool(nn.Module):
  """`nn.Conv(features, kernel_size, padding=padding)` -> relu -> max_pool(window, window), as
  one `conv_relu_max_pool` op, with nn.Conv's parameters ("kernel", "bias": the same names,
  shapes and initial values), so checkpoints move freely between this and the unfused layers."""

  features: int
  kernel_size: Sequence[int]
  window: Sequence[int] = (2, 2)
  padding: str | Sequence[tuple[int, int]] = "VALID"
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    kernel_size = tuple(self.kernel_size)
    kernel = self.param("kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if isinstance(self.padding, str):
      pads = lax.padtype_to_pads(x.shape[1:-1], kernel_size, (1,) * len(kernel_size),
                                 self.padding)
    else:
      pads = self.padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return conv_relu_max_pool(x, kernel, bias, pads, tuple(self.window), self.precision)
