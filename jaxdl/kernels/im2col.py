"""Convolution as a matmul over image patches (im2col), a faster lowering on XLA:CPU.

XLA:CPU runs a convolution's gradient with respect to its kernel as another convolution, whose
"batch" is the input channels and whose window is the whole output image; that runs far below
the machine's matmul speed (benchmarks/README.md, "im2col"). Written as matmuls the same work runs
near matmul speed:

    patches_NK = the kh*kw shifted views of the padded input, side by side   [B*Ho*Wo, kh*kw*C]
    y          = patches_NK @ kernel_KO                                       [B*Ho*Wo, O]
    d kernel   = patches_NK^T @ dy_NO
    d input    = the kh*kw slices of dy_NO @ kernel_KO^T, added back where each view came from

`im2col_conv_general_dilated` has `lax.conv_general_dilated`'s signature, for Flax's
`nn.Conv(conv_general_dilated=...)`: the parameters, their names and their initialisation stay
Flax's, so checkpoints move freely between implementations. The results equal XLA's convolution
up to float rounding (the sums run in another order; tests/test_conv.py bounds the difference).
The forward keeps the patches for the backward pass: kh*kw times the input's memory per layer,
which is one reason jaxdl.nn.conv_layers picks im2col only on a single CPU device.

Unsupported arguments (input or kernel dilation, feature groups, layouts other than Flax's
channels-last) fall back to `lax.conv_general_dilated`, so every `nn.Conv` keeps working.
Reverse mode differentiates through it to any order; forward mode (`jax.jvp`, `jax.hessian`)
does not, as for any `jax.custom_vjp`: use the plain kernels for that.
"""

import functools
import itertools
import math
from typing import Any, Sequence

import jax
from jax import lax
import jax.numpy as jnp


def _pairs(value: Sequence[int] | None, n: int) -> tuple[int, ...]:
  return (1,) * n if value is None else tuple(value)


def _channels_last(dimension_numbers: Any, ndim: int) -> bool:
  """Whether `dimension_numbers` is Flax's layout: input/output N...C, kernel ...IO."""
  if dimension_numbers is None:  # lax's own default is channels-first.
    return False
  spatial = tuple(range(1, ndim - 1))
  expected = lax.ConvDimensionNumbers(
    lhs_spec=(0, ndim - 1) + spatial,
    rhs_spec=(ndim - 1, ndim - 2) + tuple(range(ndim - 2)),
    out_spec=(0, ndim - 1) + spatial,
  )
  try:
    given = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
  except (TypeError, ValueError):
    return False
  return given == expected


def im2col_conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
):
  """`lax.conv_general_dilated` run as im2col matmuls, for channels-last inputs [B, *S, C] and
  kernels [*K, C, O]; any other case goes to `lax.conv_general_dilated` unchanged."""
  n = lhs.ndim - 2
  if (
    _pairs(lhs_dilation, n) != (1,) * n
    or _pairs(rhs_dilation, n) != (1,) * n
    or feature_group_count != 1
    or batch_group_count != 1
    or not _channels_last(dimension_numbers, lhs.ndim)
  ):
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
    )
  strides = _pairs(window_strides, n)
  kernel_size = rhs.shape[:n]
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:-1], kernel_size, strides, padding)
  else:
    pads = tuple(tuple(p) for p in padding)
  if any(lo < 0 or hi < 0 for lo, hi in pads):  # Cropping: rare, and XLA does it well.
    return lax.conv_general_dilated(
      lhs,
      rhs,
      strides,
      pads,
      dimension_numbers=dimension_numbers,
      precision=precision,
      preferred_element_type=preferred_element_type,
    )
  y = conv_im2col(lhs, rhs, strides, tuple(pads), precision)
  return y if preferred_element_type is None else y.astype(preferred_element_type)


def output_size(size: int, kernel: int, stride: int) -> int:
  """A VALID convolution's output length along one axis of the (padded) input."""
  if size < kernel:
    raise ValueError(
      f"A convolution window of {kernel} does not fit in a padded input of "
      f"{size}; pad the input or use a smaller kernel."
    )
  return (size - kernel) // stride + 1


def _offsets(kernel_size: Sequence[int]):
  """The kernel's positions in row-major order: the order of kernel.reshape(-1, C, O)."""
  return itertools.product(*[range(k) for k in kernel_size])


def patch_views(x_padded, kernel_size, strides, out_size):
  """[B, *S_padded, C] -> prod(K) views [B, *S_out, C], one per kernel position (row-major):
  view k holds the input pixel under kernel position k of every output pixel's window."""
  views = []
  for offset in _offsets(kernel_size):
    start = (0,) + offset + (0,)
    limit = (
      (x_padded.shape[0],)
      + tuple(o + s * (m - 1) + 1 for o, s, m in zip(offset, strides, out_size))
      + (x_padded.shape[-1],)
    )
    views.append(lax.slice(x_padded, start, limit, (1,) + tuple(strides) + (1,)))
  return views


def extract_patches(x_padded, kernel_size, strides, out_size):
  """[B, *S_padded, C] -> [B, *S_out, prod(K) * C]: each window position's view, side by side."""
  return jnp.concatenate(patch_views(x_padded, kernel_size, strides, out_size), axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_im2col(
  x, kernel, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...], precision=None
):
  """A channels-last convolution [B, *S, C] * [*K, C, O] -> [B, *S_out, O] by im2col matmuls.

  Args:
    x: the input, [B, *spatial, C].
    kernel: [*kernel_size, C, O].
    strides: one stride per spatial axis.
    pads: (low, high) zero padding per spatial axis, each >= 0.
    precision: the matmuls' lax precision (None: the default).
  """
  return _conv_forward(x, kernel, strides, pads, precision)[0]


def _conv_forward(x, kernel, strides, pads, precision):
  n = x.ndim - 2
  kernel_size = kernel.shape[:n]
  if kernel.ndim != n + 2 or kernel.shape[n] != x.shape[-1]:
    raise ValueError(
      f"conv_im2col: a kernel {kernel.shape} [*K, C, O] does not fit an input "
      f"{x.shape} [B, *S, C] (C must match)."
    )
  x_padded = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  out_size = tuple(
    output_size(s, k, st) for s, k, st in zip(x_padded.shape[1:-1], kernel_size, strides)
  )
  patches = extract_patches(x_padded, kernel_size, strides, out_size)  # [B, *S_out, K*C]
  rows_NK = patches.reshape(-1, patches.shape[-1])
  y_NO = jnp.matmul(rows_NK, kernel.reshape(-1, kernel.shape[-1]), precision=precision)
  return y_NO.reshape(patches.shape[:-1] + y_NO.shape[-1:]), patches


def _conv_im2col_fwd(x, kernel, strides, pads, precision):
  y, patches = _conv_forward(x, kernel, strides, pads, precision)
  return y, (patches, kernel, x.shape)


def _conv_im2col_bwd(strides, pads, precision, residuals, dy):
  patches, kernel, x_shape = residuals
  n = len(strides)
  kernel_size, (c, o) = kernel.shape[:n], kernel.shape[n:]
  rows = math.prod(dy.shape[:-1])
  dy_NO = dy.reshape(rows, o)
  dkernel_KO = jnp.matmul(patches.reshape(rows, -1).T, dy_NO, precision=precision)
  dpatches = jnp.matmul(dy_NO, kernel.reshape(-1, o).T, precision=precision).reshape(patches.shape)
  dx = input_gradient(dpatches, c, kernel_size, strides, pads, x_shape).astype(patches.dtype)
  return dx, dkernel_KO.reshape(kernel.shape).astype(kernel.dtype)


def place_and_sum(views, offsets, strides, padded_shape):
  """The sum of `views` [B, *S_view, C], each zero-padded into [B, *padded_shape, C] so that its
  element at index v lands at offset + strides * v: the gradient of cutting strided views out of
  an array. One interior padding per view, all fused by XLA into one pass (on XLA:CPU faster than
  interleaving shifted blocks with stacks and transposes)."""
  total = None
  for view, offset in zip(views, offsets):
    pad_config = [(0, 0, 0)]
    for start, stride, size, full in zip(offset, strides, view.shape[1:-1], padded_shape):
      pad_config.append((start, full - start - stride * (size - 1) - 1, stride - 1))
    pad_config.append((0, 0, 0))
    placed = lax.pad(view, jnp.zeros((), view.dtype), pad_config)
    total = placed if total is None else total + placed
  return total


def input_gradient(dpatches, c: int, kernel_size, strides, pads, x_shape):
  """The input gradient [B, *S, C] from the patches' gradient [B, *S_out, prod(K) * C].

  Each view's gradient goes back where the view was cut from: a zero-padding of it to the padded
  input's shape (interior padding for strides); the views' sum is the input gradient. (Padding
  all of dpatches once and summing shifted slices of it measured no faster.)
  """
  padded_shape = tuple(s + lo + hi for s, (lo, hi) in zip(x_shape[1:-1], pads))
  offsets = list(_offsets(kernel_size))
  views = [dpatches[..., index * c : (index + 1) * c] for index in range(len(offsets))]
  dx_padded = place_and_sum(views, offsets, strides, padded_shape)
  crop = (slice(None),) + tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, x_shape[1:-1]))
  return dx_padded[crop + (slice(None),)]


conv_im2col.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)
