"""Residual networks (He et al. 2016): torchvision's ImageNet ResNets and the paper's CIFAR ResNets.

    ResNet       ResNet-18/34 (BasicBlock) and 50/101/152 (Bottleneck), torchvision "v1.5": the
                 stride of a bottleneck sits on its 3x3 convolution. stem="imagenet" is
                 7x7/2 conv + BN + ReLU + 3x3/2 max pool; stem="cifar" is one 3x3/1 conv + BN + ReLU
                 (the widely used kuangliu/pytorch-cifar ResNet18: 11,173,962 parameters at 10
                 classes). Projection shortcuts (1x1 conv + BN) where the shape changes.
    CifarResNet  ResNet-20/32/44/56/110 of the paper's section 4.2: 3x3 conv 16, three stages of n
                 basic blocks with 16/32/64 channels (depth 6n + 2), global pool, fc. Its default
                 shortcut is the paper's option A (subsample + zero-pad channels, no parameters):
                 resnet20 has 269,722 parameters at 10 classes; option B (projections) 272,474.

Names follow torchvision (conv1, bn1, layer1_0 = torch's layer1.0 with its conv1/bn1/conv2/...,
downsample_0/downsample_1, fc), so counts match it exactly: resnet50 has 25,557,032 parameters.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.nn import registry
from jaxdl.nn.remat import rematted
from jaxdl.nn.transformer import F32_DOT_GENERAL

Array = jax.Array

# torchvision: Kaiming-normal convolutions (fan_out, ReLU gain), BatchNorm scale 1 and bias 0, and
# torch's default nn.Linear weights U(+-1/sqrt(fan_in)) for fc (its bias here starts at zero).
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # Untruncated, as torch.
_FC_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

SHORTCUTS = ("projection", "zero_pad")


def _conv(features: int, kernel: int, strides: int, name: str, module: nn.Module) -> nn.Conv:
  """A bias-free convolution padded like torch's (kernel // 2 on every side)."""
  pad = kernel // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=strides,
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    kernel_init=_CONV_INIT,
    dtype=module.dtype,
    param_dtype=module.param_dtype,
    name=name,
  )


def _bn(train: bool, name: str, module: nn.Module, zero_scale: bool = False) -> nn.BatchNorm:
  """torch's BatchNorm2d defaults (momentum 0.1 = flax 0.9, eps 1e-5); statistics in float32."""
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
    dtype=module.dtype,
    param_dtype=module.param_dtype,
    name=name,
  )


def zero_pad_shortcut(x_BHWC: Array, features: int, strides: int) -> Array:
  """He et al.'s option A: keep every `strides`-th pixel and zero-pad the channels to `features`,
  half the new channels on each side (as the common PyTorch CIFAR ResNets do). No parameters."""
  x = x_BHWC[:, ::strides, ::strides, :]
  extra = features - x.shape[-1]
  if extra < 0:
    raise ValueError(
      f"zero_pad_shortcut cannot shrink {x.shape[-1]} channels to {features}; use "
      "shortcut='projection'."
    )
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class _Block(nn.Module):
  """Fields and shortcut shared by the two residual blocks.

  Attributes:
    features: channels of the block's 3x3 convolution(s) (torchvision's `planes`); the block puts
      out features * expansion channels.
    strides: stride of the block (1, or 2 at the start of a stage).
    shortcut: when the shape changes, "projection" (1x1 conv + BN, option B) or "zero_pad" (A).
    zero_init_residual: the last BatchNorm's scale starts at 0, so the block starts as its shortcut.
    dtype, param_dtype: compute and parameter dtypes.
  """

  features: int
  strides: int = 1
  shortcut: str = "projection"
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  expansion: ClassVar[int] = 1

  def _shortcut(self, x_BHWC: Array, train: bool) -> Array:
    out = self.features * self.expansion
    if self.strides == 1 and x_BHWC.shape[-1] == out:
      return x_BHWC
    if self.shortcut == "zero_pad":
      return zero_pad_shortcut(x_BHWC, out, self.strides)
    if self.shortcut != "projection":
      raise ValueError(
        f"Unknown shortcut {self.shortcut!r}; choose one of {', '.join(map(repr, SHORTCUTS))}."
      )
    x = _conv(out, 1, self.strides, "downsample_0", self)(x_BHWC)
    return _bn(train, "downsample_1", self)(x)


class BasicBlock(_Block):
  """Two 3x3 convolutions (the first strided), each with BN; ReLU after the first and the sum."""

  @nn.compact
  def __call__(self, x_BHWC: Array, train: bool = False) -> Array:
    y = _conv(self.features, 3, self.strides, "conv1", self)(x_BHWC)
    y = nn.relu(_bn(train, "bn1", self)(y))
    y = _conv(self.features, 3, 1, "conv2", self)(y)
    y = _bn(train, "bn2", self, self.zero_init_residual)(y)
    return nn.relu(y + self._shortcut(x_BHWC, train))


class Bottleneck(_Block):
  """1x1 (reduce) -> 3x3 (strided, torchvision v1.5) -> 1x1 (expand x4), each with BN."""

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x_BHWC: Array, train: bool = False) -> Array:
    y = nn.relu(_bn(train, "bn1", self)(_conv(self.features, 1, 1, "conv1", self)(x_BHWC)))
    y = nn.relu(_bn(train, "bn2", self)(_conv(self.features, 3, self.strides, "conv2", self)(y)))
    y = _conv(self.features * self.expansion, 1, 1, "conv3", self)(y)
    y = _bn(train, "bn3", self, self.zero_init_residual)(y)
    return nn.relu(y + self._shortcut(x_BHWC, train))


# depth -> (block, blocks per stage), torchvision's table.
RESNET_DEPTHS: dict[int, tuple[type[_Block], tuple[int, ...]]] = {
  18: (BasicBlock, (2, 2, 2, 2)),
  34: (BasicBlock, (3, 4, 6, 3)),
  50: (Bottleneck, (3, 4, 6, 3)),
  101: (Bottleneck, (3, 4, 23, 3)),
  152: (Bottleneck, (3, 8, 36, 3)),
}

STEMS = ("imagenet", "cifar")

# Presets of `ResNet`. torchvision's counts at 1000 classes: resnet18 11,689,512, resnet34
# 21,797,672, resnet50 25,557,032, resnet101 44,549,160, resnet152 60,192,808.
RESNET_PRESETS: dict[str, dict[str, Any]] = {
  **{f"resnet{d}": dict(depth=d) for d in RESNET_DEPTHS},
  "resnet18_cifar": dict(depth=18, stem="cifar", num_classes=10),
}

# Presets of `CifarResNet` (the paper's Table 6): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M parameters.
CIFAR_RESNET_PRESETS: dict[str, dict[str, Any]] = {
  f"resnet{d}": dict(depth=d) for d in (20, 32, 44, 56, 110)
}


def _check_images(name: str, x_BHWC: Array) -> None:
  if x_BHWC.ndim != 4:
    raise ValueError(f"{name} expects images [B, H, W, C]; got shape {x_BHWC.shape}.")


def _head(module: nn.Module, x_BHWC: Array) -> Array:
  """Global average pool (accumulated in float32) and fc -> float32 logits [B, K]."""
  x_BC = jnp.mean(x_BHWC, axis=(1, 2), dtype=jnp.float32).astype(module.dtype)
  return nn.Dense(
    module.num_classes,
    kernel_init=_FC_INIT,
    dtype=module.dtype,
    param_dtype=module.param_dtype,
    dot_general=F32_DOT_GENERAL,
    name="fc",
  )(x_BC)


@registry.register("resnet", presets=RESNET_PRESETS)
class ResNet(nn.Module):
  """ResNet-18/34/50/101/152. images [B, H, W, C] -> logits [B, num_classes] (float32).

  Attributes:
    depth: 18, 34, 50, 101 or 152.
    num_classes: K.
    width: channels of the first stage (64); the stages have width * (1, 2, 4, 8) (times 4 out of
      a bottleneck).
    stem: "imagenet" (7x7/2 conv, BN, ReLU, 3x3/2 max pool) or "cifar" (3x3/1 conv, BN, ReLU).
    zero_init_residual: each block's last BatchNorm scale starts at 0 (Goyal et al. 2017).
    dtype, param_dtype: compute and parameter dtypes; BatchNorm statistics and logits are float32.
    remat: recompute each residual block's activations in the backward pass, a policy of
      jaxdl.nn.remat.REMAT_POLICIES ("none", "full", ...).
  """

  depth: int = 50
  num_classes: int = 1000
  width: int = 64
  stem: str = "imagenet"
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x_BHWC: Array, *, train: bool = False) -> Array:
    """images [B, H, W, C] -> logits [B, K]; `train` uses and updates batch statistics."""
    if self.depth not in RESNET_DEPTHS:
      raise ValueError(
        f"ResNet: unknown depth {self.depth}; choose one of "
        f"{', '.join(map(str, RESNET_DEPTHS))} (CifarResNet has depths 6n + 2)."
      )
    if self.stem not in STEMS:
      raise ValueError(
        f"ResNet: unknown stem {self.stem!r}; choose one of {', '.join(map(repr, STEMS))}."
      )
    _check_images("ResNet", x_BHWC)
    block, stage_sizes = RESNET_DEPTHS[self.depth]
    block = rematted(block, self.remat, static_argnums=(2,))  # train is argument 2.
    x = x_BHWC.astype(self.dtype)
    if self.stem == "imagenet":
      x = nn.relu(_bn(train, "bn1", self)(_conv(self.width, 7, 2, "conv1", self)(x)))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = nn.relu(_bn(train, "bn1", self)(_conv(self.width, 3, 1, "conv1", self)(x)))
    for i, num_blocks in enumerate(stage_sizes):
      for j in range(num_blocks):
        x = block(
          self.width * 2**i,
          strides=2 if i > 0 and j == 0 else 1,
          zero_init_residual=self.zero_init_residual,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"layer{i + 1}_{j}",
        )(x, train)
    return _head(self, x)


@registry.register("cifar_resnet", presets=CIFAR_RESNET_PRESETS)
class CifarResNet(nn.Module):
  """He et al.'s CIFAR ResNets (depth 6n + 2). images [B, H, W, C] -> logits [B, K] (float32).

  Attributes:
    depth: 6n + 2 (20, 32, 44, 56, 110, 1202 in the paper).
    num_classes: K (10 for CIFAR-10).
    width: channels of the first stage (16); the stages have width * (1, 2, 4).
    shortcut: "zero_pad" (the paper's option A, parameter-free) or "projection" (option B).
    zero_init_residual: each block's last BatchNorm scale starts at 0.
    dtype, param_dtype: compute and parameter dtypes; BatchNorm statistics and logits are float32.
    remat: as in ResNet.
  """

  depth: int = 20
  num_classes: int = 10
  width: int = 16
  shortcut: str = "zero_pad"
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x_BHWC: Array, *, train: bool = False) -> Array:
    """images [B, H, W, C] -> logits [B, K]; `train` uses and updates batch statistics."""
    if self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(
        f"CifarResNet: depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, "
        f"...); got {self.depth}. ImageNet depths (18, 34, 50, ...) are ResNet's."
      )
    if self.shortcut not in SHORTCUTS:
      raise ValueError(
        f"CifarResNet: unknown shortcut {self.shortcut!r}; choose one of "
        f"{', '.join(map(repr, SHORTCUTS))}."
      )
    _check_images("CifarResNet", x_BHWC)
    x = x_BHWC.astype(self.dtype)
    x = nn.relu(_bn(train, "bn1", self)(_conv(self.width, 3, 1, "conv1", self)(x)))
    block = rematted(BasicBlock, self.remat, static_argnums=(2,))  # train is argument 2.
    for i in range(3):
      for j in range((self.depth - 2) // 6):
        x = block(
          self.width * 2**i,
          strides=2 if i > 0 and j == 0 else 1,
          shortcut=self.shortcut,
          zero_init_residual=self.zero_init_residual,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"layer{i + 1}_{j}",
        )(x, train)
    return _head(self, x)
