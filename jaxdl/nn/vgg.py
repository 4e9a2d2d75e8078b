"""VGG (Simonyan & Zisserman 2015) in torchvision's layout, with or without BatchNorm.

    features    3x3 convolutions (padding 1) [+ BatchNorm] + ReLU, a 2x2/2 max pool after each stage
    avgpool     adaptive average pool to 7x7 (torch's AdaptiveAvgPool2d bins; see adaptive_avg_pool)
    classifier  Dense(4096) + ReLU + dropout 0.5, Dense(4096) + ReLU + dropout 0.5, Dense(K)

Layers are named by their index in torchvision's `features` and `classifier` Sequentials
(`features_0` is torch's `features.0`), so parameter counts match torchvision's at any input size:
vgg16 has 138,357,544 parameters, vgg16_bn 138,365,992 (BatchNorm's scale and bias are parameters;
its running mean and variance are "batch_stats"). One difference to mind when porting weights: the
first classifier layer sees the 7x7x512 map flattened in (H, W, C) order, torch's in (C, H, W).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.nn import registry
from jaxdl.nn.conv_layers import ConvLayers
from jaxdl.nn.dropout import Dropout
from jaxdl.nn.transformer import F32_DOT_GENERAL

Array = jax.Array

# Channels of each 3x3 convolution, "M" = 2x2 max pool: configurations A, B, D, E of the paper.
VGG_CONFIGS: dict[int, tuple[int | str, ...]] = {
  11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
  13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
  16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
  19: (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
  ),
}

VGG_PRESETS: dict[str, dict[str, Any]] = {
  # torchvision's parameter counts at 1000 classes: 132,863,336 / 132,868,840 (vgg11, _bn),
  # 133,047,848 / 133,053,736, 138,357,544 / 138,365,992, 143,667,240 / 143,678,248.
  **{f"vgg{d}": dict(depth=d) for d in VGG_CONFIGS},
  **{f"vgg{d}_bn": dict(depth=d, batch_norm=True) for d in VGG_CONFIGS},
}

# torchvision's VGG initialisation: Kaiming-normal convolutions (fan_out), N(0, 0.01) linear layers,
# zero biases.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # Untruncated, as torch.
_DENSE_INIT = nn.initializers.normal(0.01)


def _bins(size: int, out: int) -> list[tuple[int, int]]:
  """torch's adaptive pooling bins: output i averages [floor(i*size/out), ceil((i+1)*size/out))."""
  return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _pool_matrix(size: int, out: int) -> Array:
  """[out, size] float32: row i holds 1/len over bin i and zeros elsewhere."""
  rows = []
  for start, end in _bins(size, out):
    rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(size)])
  return jnp.array(rows, jnp.float32)


def adaptive_avg_pool(x_BHWC: Array, output_size: int | Sequence[int]) -> Array:
  """torch.nn.AdaptiveAvgPool2d for NHWC: [B, H, W, C] -> [B, h, w, C].

  Output cell (i, j) is the mean of rows floor(i*H/h) .. ceil((i+1)*H/h) - 1 and the same columns
  for W/w. Bins overlap when h does not divide H, and a map smaller than the output repeats its
  cells (a 1x1 map becomes a constant 7x7 one), exactly as in torch. Averages accumulate in
  float32 and come back in x's dtype.
  """
  h, w = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  if x_BHWC.ndim != 4:
    raise ValueError(f"adaptive_avg_pool expects [B, H, W, C]; got shape {x_BHWC.shape}.")
  if min(h, w) < 1 or min(x_BHWC.shape[1:3]) < 1:
    raise ValueError(
      f"adaptive_avg_pool: cannot pool a {x_BHWC.shape[1]}x{x_BHWC.shape[2]} map "
      f"to {h}x{w}; both must be at least 1x1."
    )
  if x_BHWC.shape[1:3] == (h, w):
    return x_BHWC  # Every bin is one cell.
  rows_hH = _pool_matrix(x_BHWC.shape[1], h)
  cols_wW = _pool_matrix(x_BHWC.shape[2], w)
  out = jnp.einsum(
    "iy,byxc,jx->bijc",
    rows_hH,
    x_BHWC.astype(jnp.float32),
    cols_wW,
    precision=jax.lax.Precision.HIGHEST,
  )
  return out.astype(x_BHWC.dtype)


def _stages(config: tuple[int | str, ...]) -> list[list[int]]:
  """A VGG configuration as its stages: the convolutions' channels up to each "M" (max pool)."""
  stages, current = [], []
  for v in config:
    if v == "M":
      stages.append(current)
      current = []
    else:
      current.append(v)
  return stages


@registry.register("vgg", presets=VGG_PRESETS)  # vgg11 ... vgg19, *_bn
class VGG(nn.Module):
  """VGG-11/13/16/19. images [B, H, W, C] -> logits [B, num_classes] (float32).

  Inputs need at least 32x32 pixels (five 2x2 max pools); any larger size works, since the adaptive
  pool always hands the classifier a pool_size x pool_size map.

  Attributes:
    depth: 11, 13, 16 or 19 (configurations A, B, D, E).
    num_classes: K.
    batch_norm: BatchNorm after every convolution (torchvision's vgg*_bn).
    width_multiplier: scales every convolution's channels (1.0 = the paper's 64 ... 512).
    hidden_dim: width of the two hidden classifier layers (4096).
    pool_size: side of the adaptive pool's output (7); 1 gives the small-image VGGs whose
      classifier reads a 512-vector.
    dropout_rate: dropout after each hidden classifier layer (rng stream "dropout").
    kernels: how the convolutions and pools run (jaxdl.nn.conv_layers); the parameters are the
      same whichever is picked, the results equal up to float rounding. Without BatchNorm, the
      fused kernel sets run each stage's last convolution, ReLU and pool as one op.
    dtype, param_dtype: compute and parameter dtypes; BatchNorm statistics and logits are float32.
  """

  depth: int = 16
  num_classes: int = 1000
  batch_norm: bool = False
  width_multiplier: float = 1.0
  hidden_dim: int = 4096
  pool_size: int = 7
  dropout_rate: float = 0.5
  kernels: str = "auto"  # jaxdl.nn.conv_layers.KERNELS: plain, xla, im2col, fused, winograd.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: Array, *, train: bool = False) -> Array:
    """images [B, H, W, C] -> logits [B, K]; `train` enables dropout and batch statistics."""
    if self.depth not in VGG_CONFIGS:
      raise ValueError(
        f"VGG: unknown depth {self.depth}; choose one of {', '.join(map(str, VGG_CONFIGS))}."
      )
    if x_BHWC.ndim != 4:
      raise ValueError(f"VGG expects images [B, H, W, C]; got shape {x_BHWC.shape}.")
    if min(x_BHWC.shape[1:3]) < 32:
      raise ValueError(
        f"VGG needs images of at least 32x32 (it halves them five times); got "
        f"{x_BHWC.shape[1]}x{x_BHWC.shape[2]}. Resize or pad the inputs."
      )
    x = x_BHWC.astype(self.dtype)
    layers = ConvLayers(
      self.kernels, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_CONV_INIT
    )
    padding = ((1, 1), (1, 1))

    def conv_bn_relu(x, features, index):
      x = layers.conv(features, (3, 3), padding, name=f"features_{index}")(x)
      if self.batch_norm:
        x = nn.BatchNorm(
          use_running_average=not train,
          momentum=0.9,
          epsilon=1e-5,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"features_{index + 1}",
        )(x)
      return nn.relu(x)

    index = 0  # Position in torchvision's `features` Sequential, which names the layers.
    per_conv = 3 if self.batch_norm else 2  # conv [, BatchNorm], ReLU
    for stage in _stages(VGG_CONFIGS[self.depth]):
      *inner, last = [max(1, round(v * self.width_multiplier)) for v in stage]
      for features in inner:
        x = conv_bn_relu(x, features, index)
        index += per_conv
      if self.batch_norm:
        x = layers.max_pool(conv_bn_relu(x, last, index), (2, 2))
      else:
        x = layers.conv_relu_pool(x, last, (3, 3), (2, 2), padding, name=f"features_{index}")
      index += per_conv + 1  # and the max pool

    x = adaptive_avg_pool(x, self.pool_size)
    x = x.reshape(x.shape[0], -1)  # (H, W, C) order
    dense = lambda features, name, **kw: nn.Dense(
      features,
      kernel_init=_DENSE_INIT,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
      **kw,
    )
    for index in (0, 3):
      x = nn.relu(dense(self.hidden_dim, f"classifier_{index}")(x))
      x = Dropout(self.dropout_rate)(x, deterministic=not train)
    return dense(self.num_classes, "classifier_6", dot_general=F32_DOT_GENERAL)(x)
