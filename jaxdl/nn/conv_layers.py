"""Convolution and pooling layers by kernel set: one model field says how they run.

A CNN builds its layers through `ConvLayers(kernels, ...)`, and reads as its paper does:

    layers = ConvLayers(self.kernels, dtype=self.dtype, kernel_init=glorot_uniform)
    x = layers.conv_relu_pool(x, 32, (3, 3), name="conv1")    # Conv2D(32, 3, relu), MaxPool(2)
    x = nn.relu(layers.conv(64, (3, 3), name="conv3")(x))     # Conv2D(64, 3, relu)

The kernel sets (jaxdl.kernels holds the CPU speed paths):

    kernels   convolution           max-pool                 conv, ReLU and max-pool
    plain     nn.Conv (XLA's)       nn.max_pool              the three layers in turn
    xla       nn.Conv (XLA's)       reshape and reduce       the three layers in turn
    im2col    matmuls over patches  reshape and reduce       the three layers in turn
    fused     matmuls over patches  reshape and reduce       one op: im2col per pool phase
    winograd  matmuls over patches  reshape and reduce       one op: Winograd F(2x2, 3x3) where it
                                                             applies, a first layer's short
                                                             patches as elementwise products
    auto      winograd on a single CPU device, xla on several CPU devices, plain elsewhere

Every set creates the same parameters (names, shapes, initial values), so checkpoints move freely
between them. "xla" computes what "plain" does to the bit (the reshape pool routes gradients to
the first maximum, as select_and_scatter); the others equal it up to float rounding
(tests/test_conv_layers.py). Where each is faster is measured in benchmarks/README.md.
"""

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxdl.kernels import conv_pool, im2col
from jaxdl.nn import pooling

KERNELS = ("auto", "plain", "xla", "im2col", "fused", "winograd")
_IM2COL_CONVS = ("im2col", "fused", "winograd")


def resolve(kernels: str) -> str:
  """The kernel set `kernels` names; "auto" picks by the devices JAX sees: winograd on a single
  CPU device, xla on several (each device's share of the batch is small, and XLA's convolutions
  were the faster ones there), plain off the CPU."""
  if kernels not in KERNELS:
    raise ValueError(
      f"Unknown kernels {kernels!r}; choose one of {', '.join(KERNELS)} "
      "(jaxdl.nn.conv_layers: 'plain' is Flax's layers, 'auto' the fastest "
      "measured for the devices)."
    )
  if kernels != "auto":
    return kernels
  if jax.default_backend() != "cpu":
    return "plain"
  return "winograd" if jax.local_device_count() == 1 else "xla"


class ConvReluMaxPool(nn.Module):
  """`nn.Conv(features, kernel_size, padding=padding)` -> relu -> max_pool(window, window), as
  one `jaxdl.kernels.conv_pool.conv_relu_max_pool` op, with nn.Conv's parameters ("kernel",
  "bias": the same names, shapes and initial values), so checkpoints move freely between this
  and the unfused layers."""

  features: int
  kernel_size: Sequence[int]
  window: Sequence[int] = (2, 2)
  padding: str | Sequence[tuple[int, int]] = "VALID"
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  impl: str = "auto"  # conv_relu_max_pool's: "auto", "im2col" or "winograd".

  @nn.compact
  def __call__(self, x):
    kernel_size = tuple(self.kernel_size)
    kernel = self.param(
      "kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features), self.param_dtype
    )
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if isinstance(self.padding, str):
      pads = lax.padtype_to_pads(x.shape[1:-1], kernel_size, (1,) * len(kernel_size), self.padding)
    else:
      pads = self.padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return conv_pool.conv_relu_max_pool(
      x, kernel, bias, pads, tuple(self.window), self.precision, self.impl
    )


@dataclasses.dataclass(frozen=True)
class ConvLayers:
  """A model's convolution and pooling layers, built as `kernels` says; call its methods inside
  the model's compact `__call__`, where the layers they create become its submodules."""

  kernels: str = "auto"
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()

  @property
  def resolved(self) -> str:
    return resolve(self.kernels)

  def conv(
    self,
    features: int,
    kernel_size: Sequence[int],
    padding: str | Sequence[tuple[int, int]] = "VALID",
    *,
    name: str | None = None,
  ) -> nn.Conv:
    """`nn.Conv` (stride 1), run by matmuls over patches with the im2col-based kernel sets."""
    return nn.Conv(
      features,
      tuple(kernel_size),
      padding=padding,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      conv_general_dilated=(
        im2col.im2col_conv_general_dilated if self.resolved in _IM2COL_CONVS else None
      ),
      name=name,
    )

  def max_pool(self, x: jax.Array, window: Sequence[int]) -> jax.Array:
    """A max-pool whose strides are its window (VALID), as `nn.max_pool`."""
    impl = "reduce_window" if self.resolved == "plain" else "reshape"
    return pooling.max_pool(x, tuple(window), tuple(window), impl=impl)

  def conv_relu_pool(
    self,
    x: jax.Array,
    features: int,
    kernel_size: Sequence[int],
    window: Sequence[int] = (2, 2),
    padding: str | Sequence[tuple[int, int]] = "VALID",
    *,
    name: str | None = None,
  ) -> jax.Array:
    """max_pool(relu(conv(x))), as one op with the "fused" and "winograd" kernels; the
    convolution's parameters are `name`'s either way."""
    if self.resolved in ("fused", "winograd"):
      return ConvReluMaxPool(
        features,
        tuple(kernel_size),
        window=tuple(window),
        padding=padding,
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        impl="im2col" if self.resolved == "fused" else "auto",
        name=name,
      )(x)
    y = nn.relu(self.conv(features, kernel_size, padding, name=name)(x))
    return self.max_pool(y, window)
