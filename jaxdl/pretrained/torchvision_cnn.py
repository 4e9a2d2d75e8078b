"""torchvision's ResNet, VGG and DenseNet state dicts (.pth or .safetensors) <-> jaxdl's models.

A torchvision checkpoint is a bare state dict with no config, so the architecture is read off the
tensor names and shapes:

    ResNet-18/34/50/101/152   blocks per stage from the layerN.M names, Bottleneck if a block has
                              conv3, classes from fc.weight
    VGG-11/13/16/19 [_bn]     depth from the number of features.K convolutions, BatchNorm from
                              features.K.running_mean, the classifier's widths from its weights
    DenseNet-121/161/169/201  layers per dense block from the denselayerM names, growth rate,
                              bottleneck width and stem width from the convolutions' shapes

Convolutions are OIHW in torch and HWIO in flax; BatchNorm's running mean and variance go to the
"batch_stats" collection. jaxdl's layer names are torchvision's with "_" for "." (layer1_0/conv1,
features_0, denseblock1_denselayer1/norm1), its padding and BatchNorm epsilon are torch's, so the
networks compute the same function.

VGG's first classifier layer is the one place where the weights must move: torchvision flattens
its [B, 512, 7, 7] map in (C, H, W) order, jaxdl its [B, 7, 7, 512] map in (H, W, C) order, so
the kernel's 25,088 input rows are permuted on the way in and back on the way out. Both models
pool adaptively to 7x7 with the same bins before it, so they agree at every input size from 32x32
up, not only at 224x224.

Exported state dicts load into torchvision's models with load_state_dict(strict=True)
(num_batches_tracked is written as 0). Old DenseNet checkpoints, whose names read "norm.1" for
"norm1", are renamed on import as torchvision's own loader does.
"""

import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.errors import CheckpointError
from jaxdl.nn.densenet import DENSENET_DEPTHS, DenseNet
from jaxdl.nn.resnet import RESNET_DEPTHS, BasicBlock, Bottleneck, ResNet
from jaxdl.nn.vgg import VGG, VGG_CONFIGS
from jaxdl.pretrained import families, rules
from jaxdl.pretrained.rules import Rule

Tensors = dict[str, np.ndarray]


def _example_input(model: nn.Module) -> jax.ShapeDtypeStruct:
  # Only traced for the variables' shapes, which no input size changes (VGG pools adaptively).
  return jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)


def _conv(jax_path: str, ref: str, *, bias: bool = False) -> list[Rule]:
  return rules.under("params", rules.conv(jax_path, ref, bias=bias))


def _largest_index(pattern: str, names: Any) -> dict[int, int]:
  """{first group: largest second group} over the names matching `pattern` ("layer2.3.")."""
  found: dict[int, int] = {}
  for name in names:
    if m := re.match(pattern, name):
      outer, inner = int(m.group(1)), int(m.group(2))
      found[outer] = max(found.get(outer, 0), inner)
  return found


def _shape(tensors: Tensors, name: str, family: str) -> tuple[int, ...]:
  if name not in tensors:
    raise CheckpointError(
      f"This {family} state dict has no tensor {name!r}, which every torchvision {family} has; "
      "the checkpoint is incomplete or of another model."
    )
  return tuple(tensors[name].shape)


# ---------------------------------------------------------------------------------------- ResNet


def _resnet_detect(config: dict | None, names: set[str]) -> bool:
  return config is None and {"conv1.weight", "layer1.0.conv1.weight", "fc.weight"} <= names


def _resnet_model_config(config: dict | None, tensors: Tensors) -> dict[str, Any]:
  last_block = _largest_index(r"layer([1-4])\.(\d+)\.", tensors)  # layerN.M counts M from 0.
  stage_sizes = tuple(last_block[i] + 1 if i in last_block else 0 for i in range(1, 5))
  block = Bottleneck if "layer1.0.conv3.weight" in tensors else BasicBlock
  depths = [d for d, (b, sizes) in RESNET_DEPTHS.items() if b is block and sizes == stage_sizes]
  if not depths:
    table = "; ".join(f"{d}: {b.__name__} {list(s)}" for d, (b, s) in RESNET_DEPTHS.items())
    raise CheckpointError(
      f"This ResNet state dict has {block.__name__} blocks {list(stage_sizes)} per stage, "
      f"which is none of torchvision's ResNets ({table}); jaxdl's resnet builds only those."
    )
  stem = _shape(tensors, "conv1.weight", "ResNet")
  width = _shape(tensors, "layer1.0.conv1.weight", "ResNet")[0]
  if stem != (64, 3, 7, 7) or width != 64:
    raise CheckpointError(
      f"This ResNet's conv1.weight has shape {stem} and its first block {width} channels; "
      "torchvision's ResNet-18/34/50/101/152 have (64, 3, 7, 7) and 64, which is all jaxdl's "
      "resnet reads (not wide ResNets, ResNeXts or other stems)."
    )
  return {
    "name": "resnet",
    "depth": depths[0],
    "num_classes": _shape(tensors, "fc.weight", "ResNet")[0],
    "width": 64,
    "stem": "imagenet",
  }


def _resnet_rules(model: ResNet) -> list[Rule]:
  if model.stem != "imagenet" or model.width != 64:
    raise CheckpointError(
      f"A ResNet with stem={model.stem!r}, width={model.width} has no torchvision form; "
      "torchvision's ResNets have stem='imagenet' and width=64."
    )
  block, stage_sizes = RESNET_DEPTHS[model.depth]
  out = [*_conv("conv1", "conv1"), *rules.batch_norm("bn1", "bn1")]
  for i, num_blocks in enumerate(stage_sizes):
    for j in range(num_blocks):
      jax_block, ref_block = f"layer{i + 1}_{j}", f"layer{i + 1}.{j}"
      for k in range(1, 4 if block is Bottleneck else 3):
        out += _conv(f"{jax_block}/conv{k}", f"{ref_block}.conv{k}")
        out += rules.batch_norm(f"{jax_block}/bn{k}", f"{ref_block}.bn{k}")
      # A stage's first block changes the shape (stride 2, or 64 -> 256 channels): a projection.
      if j == 0 and (i > 0 or block is Bottleneck):
        out += _conv(f"{jax_block}/downsample_0", f"{ref_block}.downsample.0")
        out += rules.batch_norm(f"{jax_block}/downsample_1", f"{ref_block}.downsample.1")
  fc_in = 512 * block.expansion
  return out + rules.under("params", rules.linear("fc", "fc", (fc_in, model.num_classes)))


# ------------------------------------------------------------------------------------------- VGG

_VGG_DEPTHS = {sum(1 for v in config if v != "M"): d for d, config in VGG_CONFIGS.items()}


def _vgg_convs(depth: int, batch_norm: bool) -> list[tuple[int, int]]:
  """(index in torchvision's `features`, output channels) of each convolution."""
  convs, index = [], 0
  for v in VGG_CONFIGS[depth]:
    if v == "M":
      index += 1  # the max pool
    else:
      convs.append((index, v))
      index += 3 if batch_norm else 2  # conv [, BatchNorm], ReLU
  return convs


def _vgg_detect(config: dict | None, names: set[str]) -> bool:
  wanted = {"features.0.weight", "classifier.0.weight", "classifier.6.weight"}
  return config is None and wanted <= names


def _vgg_model_config(config: dict | None, tensors: Tensors) -> dict[str, Any]:
  convs = sorted(
    (int(m.group(1)), tensors[name].shape[0])
    for name in tensors
    if (m := re.fullmatch(r"features\.(\d+)\.weight", name)) and tensors[name].ndim == 4
  )
  batch_norm = any(re.fullmatch(r"features\.\d+\.running_mean", name) for name in tensors)
  depth = _VGG_DEPTHS.get(len(convs))
  if depth is None or convs != _vgg_convs(depth, batch_norm):
    raise CheckpointError(
      f"This VGG state dict's convolutions (features index, channels) are {convs}, which is "
      f"none of torchvision's VGG-11/13/16/19{' with BatchNorm' if batch_norm else ''}; jaxdl's "
      "vgg builds only those."
    )
  hidden_dim, flat = _shape(tensors, "classifier.0.weight", "VGG")
  last = convs[-1][1]
  pool_size = math.isqrt(flat // last)
  if pool_size**2 * last != flat:
    raise CheckpointError(
      f"classifier.0.weight reads {flat} features, not a square map of the last convolution's "
      f"{last} channels (torchvision's VGG reads {last} x 7 x 7 = {last * 49})."
    )
  return {
    "name": "vgg",
    "depth": depth,
    "batch_norm": batch_norm,
    "num_classes": _shape(tensors, "classifier.6.weight", "VGG")[0],
    "hidden_dim": hidden_dim,
    "pool_size": pool_size,
  }


def _vgg_classifier_in(model: VGG, channels: int) -> list[Rule]:
  """classifier.0 (torch reads the map flattened as (C, H, W)) <-> classifier_0 (H, W, C)."""
  h, p = model.hidden_dim, model.pool_size

  def to_jax(w_OI: np.ndarray) -> tuple[np.ndarray]:
    w_OCHW = w_OI.reshape(h, channels, p, p)
    return (w_OCHW.transpose(2, 3, 1, 0).reshape(p * p * channels, h),)

  def to_ref(k_IO: np.ndarray) -> tuple[np.ndarray]:
    k_HWCO = k_IO.reshape(p, p, channels, h)
    return (k_HWCO.transpose(3, 2, 0, 1).reshape(h, channels * p * p),)

  kernel = Rule(("params/classifier_0/kernel",), ("classifier.0.weight",), to_jax, to_ref)
  return [kernel, rules.copy("params/classifier_0/bias", "classifier.0.bias")]


def _vgg_rules(model: VGG) -> list[Rule]:
  if model.width_multiplier != 1.0:
    raise CheckpointError(
      f"A VGG with width_multiplier={model.width_multiplier} has no torchvision form "
      "(torchvision's VGGs have the paper's 64 ... 512 channels)."
    )
  convs = _vgg_convs(model.depth, model.batch_norm)
  out = []
  for index, _ in convs:
    out += _conv(f"features_{index}", f"features.{index}", bias=True)
    if model.batch_norm:
      out += rules.batch_norm(f"features_{index + 1}", f"features.{index + 1}")
  h = model.hidden_dim
  return (
    out
    + _vgg_classifier_in(model, convs[-1][1])
    + rules.under("params", rules.linear("classifier_3", "classifier.3", (h, h)))
    + rules.under("params", rules.linear("classifier_6", "classifier.6", (h, model.num_classes)))
  )


# -------------------------------------------------------------------------------------- DenseNet

# Checkpoints saved before torchvision 0.3 name a dense layer's modules "norm.1", "conv.2", ...
_OLD_DENSE_LAYER = re.compile(
  r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _densenet_detect(config: dict | None, names: set[str]) -> bool:
  return config is None and {"features.conv0.weight", "classifier.weight"} <= names


def _densenet_normalize(tensors: Tensors) -> Tensors:
  """The old "denselayer1.norm.1.weight" names as torchvision's loader renames them."""
  return {_OLD_DENSE_LAYER.sub(r"\1\2", name): array for name, array in tensors.items()}


def _densenet_model_config(config: dict | None, tensors: Tensors) -> dict[str, Any]:
  # denseblockN.denselayerM counts M from 1: the largest is the block's size.
  last_layer = _largest_index(r"features\.denseblock(\d+)\.denselayer(\d+)\.", tensors)
  block_sizes = tuple(last_layer[i] for i in sorted(last_layer))
  depths = [d for d, (_, sizes, _) in DENSENET_DEPTHS.items() if sizes == block_sizes]
  if not depths:
    table = "; ".join(f"{d}: {list(sizes)}" for d, (_, sizes, _) in DENSENET_DEPTHS.items())
    raise CheckpointError(
      f"This DenseNet state dict has {list(block_sizes)} layers per dense block, which is none "
      f"of torchvision's DenseNets ({table}); jaxdl's densenet builds only those."
    )
  depth = depths[0]
  table_growth, _, table_init = DENSENET_DEPTHS[depth]
  layer = "features.denseblock1.denselayer1"
  growth = _shape(tensors, f"{layer}.conv2.weight", "DenseNet")[0]
  bottleneck = _shape(tensors, f"{layer}.conv1.weight", "DenseNet")[0]
  init = _shape(tensors, "features.conv0.weight", "DenseNet")[0]
  if bottleneck % growth:
    raise CheckpointError(
      f"{layer}.conv1 has {bottleneck} output channels, not a multiple of the growth rate "
      f"{growth} (torchvision's bn_size * growth_rate)."
    )
  section = {
    "name": "densenet",
    "depth": depth,
    "num_classes": _shape(tensors, "classifier.weight", "DenseNet")[0],
    "bn_size": bottleneck // growth,
  }
  # Only where they differ from the depth's: the model leaves them None to mean the table's.
  if growth != table_growth:
    section["growth_rate"] = growth
  if init != table_init:
    section["num_init_features"] = init
  return section


def _densenet_rules(model: DenseNet) -> list[Rule]:
  if model.compression != 0.5:
    raise CheckpointError(
      f"A DenseNet with compression={model.compression} has no torchvision form (torchvision's "
      "transitions halve the channels)."
    )
  table_growth, block_sizes, init = DENSENET_DEPTHS[model.depth]
  growth = table_growth if model.growth_rate is None else model.growth_rate
  channels = init if model.num_init_features is None else model.num_init_features
  out = [*_conv("conv0", "features.conv0"), *rules.batch_norm("norm0", "features.norm0")]
  for i, num_layers in enumerate(block_sizes, start=1):
    for j in range(1, num_layers + 1):
      jax_layer, ref_layer = f"denseblock{i}_denselayer{j}", f"features.denseblock{i}.denselayer{j}"
      for k in (1, 2):
        out += rules.batch_norm(f"{jax_layer}/norm{k}", f"{ref_layer}.norm{k}")
        out += _conv(f"{jax_layer}/conv{k}", f"{ref_layer}.conv{k}")
    channels += num_layers * growth
    if i < len(block_sizes):
      out += rules.batch_norm(f"transition{i}/norm", f"features.transition{i}.norm")
      out += _conv(f"transition{i}/conv", f"features.transition{i}.conv")
      channels //= 2
  out += rules.batch_norm("norm5", "features.norm5")
  return out + rules.under(
    "params", rules.linear("classifier", "classifier", (channels, model.num_classes))
  )


RESNET = families.register(
  families.Family(
    name="torchvision_resnet",
    format="torchvision",
    detect=_resnet_detect,
    model_config=_resnet_model_config,
    rules=_resnet_rules,
    example_input=_example_input,
    exports=lambda model: isinstance(model, ResNet),
  )
)

VGG_FAMILY = families.register(
  families.Family(
    name="torchvision_vgg",
    format="torchvision",
    detect=_vgg_detect,
    model_config=_vgg_model_config,
    rules=_vgg_rules,
    example_input=_example_input,
    exports=lambda model: isinstance(model, VGG),
  )
)

DENSENET = families.register(
  families.Family(
    name="torchvision_densenet",
    format="torchvision",
    detect=_densenet_detect,
    model_config=_densenet_model_config,
    rules=_densenet_rules,
    example_input=_example_input,
    normalize=_densenet_normalize,
    exports=lambda model: isinstance(model, DenseNet),
  )
)
