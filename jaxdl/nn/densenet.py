"""DenseNet-BC (Huang et al. 2017) in torchvision's layout.

    stem         7x7/2 conv (num_init_features) + BN + ReLU + 3x3/2 max pool  (conv0, norm0)
    dense block  layers of BN-ReLU-1x1 conv (bn_size * k) -BN-ReLU-3x3 conv (k), each layer's k
                 new channels concatenated to its input (denseblock{i}_denselayer{j})
    transition   BN-ReLU-1x1 conv (compression x channels, rounded down) -2x2/2 average pool
                 (transition{i}, between blocks)
    head         BN (norm5) + ReLU + global average pool + fc (classifier)

Parameter counts match torchvision's: densenet121 7,978,856, densenet169 14,149,480, densenet201
20,013,928, densenet161 28,681,000.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.nn import pooling, registry
from jaxdl.nn.dropout import Dropout
from jaxdl.nn.remat import rematted
from jaxdl.nn.transformer import F32_DOT_GENERAL

Array = jax.Array

# depth -> (growth rate k, layers per block, stem channels), torchvision's table.
DENSENET_DEPTHS: dict[int, tuple[int, tuple[int, ...], int]] = {
  121: (32, (6, 12, 24, 16), 64),
  161: (48, (6, 12, 36, 24), 96),
  169: (32, (6, 12, 32, 32), 64),
  201: (32, (6, 12, 48, 32), 64),
}

DENSENET_PRESETS: dict[str, dict[str, Any]] = {
  f"densenet{d}": dict(depth=d) for d in DENSENET_DEPTHS
}

# torchvision: Kaiming-normal convolutions (fan_in, ReLU gain), BatchNorm 1/0, torch's default
# nn.Linear weights U(+-1/sqrt(fan_in)) and a zero bias for the classifier.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # Untruncated, as torch.
_FC_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class _ConvBN(nn.Module):
  """Layer factories shared by the modules below (which define `dtype` and `param_dtype`):
  bias-free convolutions padded like torch's, and BatchNorm + ReLU."""

  def conv(self, features: int, kernel: int, name: str, strides: int = 1) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(
      features,
      (kernel, kernel),
      strides=strides,
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      kernel_init=_CONV_INIT,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )

  def bn_relu(self, x: Array, train: bool, name: str) -> Array:
    bn = nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )
    return nn.relu(bn(x))


class DenseLayer(_ConvBN):
  """BN-ReLU-1x1 conv-BN-ReLU-3x3 conv: [B, H, W, C] -> [B, H, W, C + growth_rate] (input first).

  Attributes:
    growth_rate: k, the channels this layer adds.
    bn_size: the 1x1 bottleneck has bn_size * k channels.
    drop_rate: dropout on the new channels (rng stream "dropout").
    dtype, param_dtype: compute and parameter dtypes.
  """

  growth_rate: int
  bn_size: int = 4
  drop_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: Array, train: bool = False) -> Array:
    y = self.conv(self.bn_size * self.growth_rate, 1, "conv1")(self.bn_relu(x_BHWC, train, "norm1"))
    y = self.conv(self.growth_rate, 3, "conv2")(self.bn_relu(y, train, "norm2"))
    y = Dropout(self.drop_rate)(y, deterministic=not train)
    return jnp.concatenate([x_BHWC, y], axis=-1)


class Transition(_ConvBN):
  """BN-ReLU-1x1 conv to `features` channels, then a 2x2/2 average pool (halves H and W)."""

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: Array, *, train: bool = False) -> Array:
    x = self.conv(self.features, 1, "conv")(self.bn_relu(x_BHWC, train, "norm"))
    return pooling.avg_pool(x, (2, 2), (2, 2))


@registry.register("densenet", presets=DENSENET_PRESETS)
class DenseNet(_ConvBN):
  """DenseNet-121/161/169/201. images [B, H, W, C] -> logits [B, num_classes] (float32).

  Attributes:
    depth: 121, 161, 169 or 201; sets the growth rate, block sizes and stem width (torchvision's).
    num_classes: K.
    growth_rate, num_init_features: override depth's growth rate k and stem channels (None = the
      table's), e.g. to make the network narrower.
    bn_size: bottleneck width factor of each dense layer (4).
    compression: a transition keeps floor(compression * channels) channels (0.5).
    drop_rate: dropout on each dense layer's new channels.
    dtype, param_dtype: compute and parameter dtypes; BatchNorm statistics and logits are float32.
    remat: recompute each dense layer's activations in the backward pass (the concatenated inputs
      and bottlenecks that make DenseNet memory-bound), a policy of
      jaxdl.nn.remat.REMAT_POLICIES ("none", "full", ...).
  """

  depth: int = 121
  num_classes: int = 1000
  growth_rate: int | None = None
  num_init_features: int | None = None
  bn_size: int = 4
  compression: float = 0.5
  drop_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x_BHWC: Array, *, train: bool = False) -> Array:
    """images [B, H, W, C] -> logits [B, K]; `train` uses and updates batch statistics."""
    if self.depth not in DENSENET_DEPTHS:
      raise ValueError(
        f"DenseNet: unknown depth {self.depth}; choose one of "
        f"{', '.join(map(str, DENSENET_DEPTHS))}."
      )
    if not 0.0 < self.compression <= 1.0:
      raise ValueError(f"DenseNet: compression must be in (0, 1]; got {self.compression}.")
    if x_BHWC.ndim != 4:
      raise ValueError(f"DenseNet expects images [B, H, W, C]; got shape {x_BHWC.shape}.")
    growth, block_sizes, init_features = DENSENET_DEPTHS[self.depth]
    growth = growth if self.growth_rate is None else self.growth_rate
    channels = init_features if self.num_init_features is None else self.num_init_features
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dense_layer = rematted(DenseLayer, self.remat, static_argnums=(2,))  # train is argument 2.

    x = self.conv(channels, 7, "conv0", strides=2)(x_BHWC.astype(self.dtype))
    x = nn.max_pool(
      self.bn_relu(x, train, "norm0"), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))
    )
    for i, num_layers in enumerate(block_sizes, start=1):
      for j in range(1, num_layers + 1):
        x = dense_layer(
          growth_rate=growth,
          bn_size=self.bn_size,
          drop_rate=self.drop_rate,
          name=f"denseblock{i}_denselayer{j}",
          **kw,
        )(x, train)
      channels += num_layers * growth
      if i < len(block_sizes):
        channels = int(channels * self.compression)  # torchvision: int(), i.e. rounded down.
        x = Transition(features=channels, name=f"transition{i}", **kw)(x, train=train)
    x = self.bn_relu(x, train, "norm5")
    x_BC = jnp.mean(x, axis=(1, 2), dtype=jnp.float32).astype(self.dtype)
    return nn.Dense(
      self.num_classes,
      kernel_init=_FC_INIT,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      dot_general=F32_DOT_GENERAL,
      name="classifier",
    )(x_BC)
