"""The seed document's Keras MNIST CNN, as a pure Flax Linen module.

Keras original (TensorFlow CNN tutorial):
    Conv2D(32, 3, relu) -> MaxPool(2) -> Conv2D(64, 3, relu) -> MaxPool(2) -> Conv2D(64, 3, relu)
    -> Flatten -> Dense(64, relu) -> Dense(10)
All convolutions are 'valid'; 93,322 parameters for 28x28x1 inputs. Kernels are Glorot-uniform and
biases zero, which is how Keras initialises Conv2D and Dense. The softmax lives in the loss.

`pool_impl` picks how the max-pools run (jaxdl.nn.pooling): "reshape" (default) gives the same
numbers as Flax's `nn.max_pool` ("reduce_window") with a gradient ~2.5x cheaper on XLA:CPU.
`conv_impl` picks how the convolutions run (jaxdl.nn.conv): "auto" (default) is "im2col" on a
single CPU device (matmuls over patches: the train step 1.6-1.7x faster there) and "xla"
elsewhere; the two give the same parameters and results equal up to float rounding.
`fuse_conv_pool` (default on) runs each im2col convolution with its bias, ReLU and max-pool as one
op (jaxdl.nn.conv_pool). `conv_pool_impl` picks that op's algorithm: "im2col" runs both layers as
im2col matmuls per pool phase (the same outputs as the unfused layers to the bit, gradients to
float rounding; a train step ~1.3x faster on one CPU); "auto" (default) runs conv2 by Winograd's
F(2x2, 3x3) (jaxdl.nn.winograd: 2.25x fewer multiplications) and conv1 as elementwise
multiply-adds, another 1.2-1.6x (benchmarks/conv_impl.py), equal to "im2col" up to float
rounding.
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.nn import conv as conv_lib
from jaxdl.nn import conv_pool
from jaxdl.nn import pooling

# Keras' default kernel_initializer for Conv2D and Dense.
glorot_uniform = nn.initializers.glorot_uniform()


class MnistCNN(nn.Module):
  """Keras' MNIST CNN. Input: images [B, 28, 28, 1] in [0, 1]; output: logits [B, num_classes]."""

  num_classes: int = 10
  dtype: jnp.dtype = jnp.float32
  pool_impl: str = "reshape"  # or "reduce_window" (Flax's nn.max_pool); same results.
  conv_impl: str = "auto"  # "im2col", "xla" (Flax's nn.Conv) or "auto": im2col on one CPU.
  fuse_conv_pool: bool = True  # With im2col and pool_impl "reshape": conv+bias+ReLU+pool as one op.
  conv_pool_impl: str = "auto"  # The fused op's algorithm: "auto", "im2col" or "winograd".

  @nn.compact
  def __call__(self, x_BHWC: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    del train  # No dropout or BatchNorm; the argument keeps the model signature uniform.
    conv_general_dilated = conv_lib.conv_general_dilated(self.conv_impl)
    conv = lambda features, name: nn.Conv(
        features, (3, 3), padding="VALID", kernel_init=glorot_uniform, dtype=self.dtype,
        conv_general_dilated=conv_general_dilated, name=name)
    fuse = (self.fuse_conv_pool and conv_general_dilated is not None
            and self.pool_impl == "reshape")

    def conv_relu_pool(x, features, name):
      if fuse:
        return conv_pool.ConvReluMaxPool(features, (3, 3), window=(2, 2), padding="VALID",
                                         kernel_init=glorot_uniform, dtype=self.dtype,
                                         impl=self.conv_pool_impl, name=name)(x)
      x = nn.relu(conv(features, name)(x))
      return pooling.max_pool(x, (2, 2), (2, 2), impl=self.pool_impl)

    x = x_BHWC.astype(self.dtype)
    x = conv_relu_pool(x, 32, "conv1")  # conv [B, 26, 26, 32], pooled [B, 13, 13, 32]
    x = conv_relu_pool(x, 64, "conv2")  # conv [B, 11, 11, 64], pooled [B, 5, 5, 64]
    x = nn.relu(conv(64, "conv3")(x))  # [B, 3, 3, 64]
    x = x.reshape((x.shape[0], -1))  # [B, 576], row-major like Keras' Flatten on NHWC
    x = nn.relu(nn.Dense(64, kernel_init=glorot_uniform, dtype=self.dtype, name="dense1")(x))
    logits_BK = nn.Dense(self.num_classes, kernel_init=glorot_uniform, dtype=self.dtype,
                         name="logits")(x)
    return logits_BK
