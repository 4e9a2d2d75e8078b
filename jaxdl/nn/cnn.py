"""The seed document's Keras MNIST CNN, as a pure Flax Linen module.

Keras original (TensorFlow CNN tutorial):
    Conv2D(32, 3, relu) -> MaxPool(2) -> Conv2D(64, 3, relu) -> MaxPool(2) -> Conv2D(64, 3, relu)
    -> Flatten -> Dense(64, relu) -> Dense(10)
All convolutions are 'valid'; 93,322 parameters for 28x28x1 inputs. Kernels are Glorot-uniform and
biases zero, which is how Keras initialises Conv2D and Dense. The softmax lives in the loss.

`kernels` says how the convolutions and pools run (jaxdl.nn.conv_layers): the same parameters
whichever is picked, results equal up to float rounding. The default picks the fastest measured
for the devices.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.nn import registry
from jaxdl.nn.conv_layers import ConvLayers

# Keras' default kernel_initializer for Conv2D and Dense.
glorot_uniform = nn.initializers.glorot_uniform()


@registry.register("mnist_cnn")
class MnistCNN(nn.Module):
  """Keras' MNIST CNN. Input: images [B, 28, 28, 1] in [0, 1]; output: logits [B, num_classes]."""

  num_classes: int = 10
  dtype: Any = jnp.float32
  kernels: str = "auto"  # jaxdl.nn.conv_layers.KERNELS: plain, xla, im2col, fused, winograd.

  @nn.compact
  def __call__(self, x_BHWC: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    del train  # No dropout or BatchNorm; the argument keeps the model signature uniform.
    layers = ConvLayers(self.kernels, dtype=self.dtype, kernel_init=glorot_uniform)
    dense = lambda features, name: nn.Dense(
      features, kernel_init=glorot_uniform, dtype=self.dtype, name=name
    )
    x = x_BHWC.astype(self.dtype)
    x = layers.conv_relu_pool(x, 32, (3, 3), name="conv1")  # Conv2D(32, 3, relu), MaxPool(2)
    x = layers.conv_relu_pool(x, 64, (3, 3), name="conv2")  # Conv2D(64, 3, relu), MaxPool(2)
    x = nn.relu(layers.conv(64, (3, 3), name="conv3")(x))  # Conv2D(64, 3, relu): [B, 3, 3, 64]
    x = x.reshape((x.shape[0], -1))  # Flatten: [B, 576], row-major like Keras' on NHWC
    x = nn.relu(dense(64, "dense1")(x))  # Dense(64, relu)
    return dense(self.num_classes, "logits")(x)  # Dense(10): logits [B, num_classes]
