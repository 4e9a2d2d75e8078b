# torchvision's ResNet, VGG and DenseNet, copied from torchvision 0.28.0
# (github.com/pytorch/vision, torchvision/models/resnet.py, vgg.py, densenet.py) so that tests can
# build them without torchvision, whose wheels need a matching CUDA build of torch. Kept: every
# module, its name and its forward computation, and the weight initialisation. Left out: the
# pretrained-weight enums and registry, API-usage logging, ResNeXt/wide/dilated options, and
# DenseNet's TorchScript overloads and gradient checkpointing (memory_efficient), none of which
# changes a state dict or an eval-mode output.
#
# BSD 3-Clause License
#
# Copyright (c) Soumith Chintala 2016,
# All rights reserved.
#
# Redistribution and use in source and binary forms, with or without
# modification, are permitted provided that the following conditions are met:
#
# * Redistributions of source code must retain the above copyright notice, this
#   list of conditions and the following disclaimer.
#
# * Redistributions in binary form must reproduce the above copyright notice,
#   this list of conditions and the following disclaimer in the documentation
#   and/or other materials provided with the distribution.
#
# * Neither the name of the copyright holder nor the names of its
#   contributors may be used to endorse or promote products derived from
#   this software without specific prior written permission.
#
# THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
# AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
# IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
# DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
# FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
# DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
# SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
# CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
# OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
# OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.

from collections import OrderedDict
from typing import Any, Optional, Union, cast

import torch
from torch import Tensor
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------- ResNet


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
  """3x3 convolution with padding"""
  return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
  """1x1 convolution"""
  return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
  expansion: int = 1

  def __init__(
    self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None
  ) -> None:
    super().__init__()
    # Both self.conv1 and self.downsample layers downsample the input when stride != 1
    self.conv1 = conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample
    self.stride = stride

  def forward(self, x: Tensor) -> Tensor:
    identity = x

    out = self.conv1(x)
    out = self.bn1(out)
    out = self.relu(out)

    out = self.conv2(out)
    out = self.bn2(out)

    if self.downsample is not None:
      identity = self.downsample(x)

    out += identity
    out = self.relu(out)

    return out


class Bottleneck(nn.Module):
  # Bottleneck in torchvision places the stride for downsampling at 3x3 convolution(self.conv2)
  # while original implementation places the stride at the first 1x1 convolution(self.conv1)
  # according to "Deep residual learning for image recognition" https://arxiv.org/abs/1512.03385.
  # This variant is also known as ResNet V1.5 and improves accuracy according to
  # https://ngc.nvidia.com/catalog/model-scripts/nvidia:resnet_50_v1_5_for_pytorch.

  expansion: int = 4

  def __init__(
    self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None
  ) -> None:
    super().__init__()
    width = planes  # torchvision: int(planes * (base_width / 64.0)) * groups, base_width 64.
    # Both self.conv2 and self.downsample layers downsample the input when stride != 1
    self.conv1 = conv1x1(inplanes, width)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = conv3x3(width, width, stride)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = conv1x1(width, planes * self.expansion)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample
    self.stride = stride

  def forward(self, x: Tensor) -> Tensor:
    identity = x

    out = self.conv1(x)
    out = self.bn1(out)
    out = self.relu(out)

    out = self.conv2(out)
    out = self.bn2(out)
    out = self.relu(out)

    out = self.conv3(out)
    out = self.bn3(out)

    if self.downsample is not None:
      identity = self.downsample(x)

    out += identity
    out = self.relu(out)

    return out


class ResNet(nn.Module):
  def __init__(
    self,
    block: type[Union[BasicBlock, Bottleneck]],
    layers: list[int],
    num_classes: int = 1000,
    zero_init_residual: bool = False,
  ) -> None:
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(self.inplanes)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
    self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
    self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)

    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)

    # Zero-initialize the last BN in each residual branch,
    # so that the residual branch starts with zeros, and each residual block behaves like an
    # identity. This improves the model by 0.2~0.3% according to https://arxiv.org/abs/1706.02677
    if zero_init_residual:
      for m in self.modules():
        if isinstance(m, Bottleneck) and m.bn3.weight is not None:
          nn.init.constant_(m.bn3.weight, 0)
        elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
          nn.init.constant_(m.bn2.weight, 0)

  def _make_layer(
    self,
    block: type[Union[BasicBlock, Bottleneck]],
    planes: int,
    blocks: int,
    stride: int = 1,
  ) -> nn.Sequential:
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
        conv1x1(self.inplanes, planes * block.expansion, stride),
        nn.BatchNorm2d(planes * block.expansion),
      )

    layers = []
    layers.append(block(self.inplanes, planes, stride, downsample))
    self.inplanes = planes * block.expansion
    for _ in range(1, blocks):
      layers.append(block(self.inplanes, planes))

    return nn.Sequential(*layers)

  def forward(self, x: Tensor) -> Tensor:
    x = self.conv1(x)
    x = self.bn1(x)
    x = self.relu(x)
    x = self.maxpool(x)

    x = self.layer1(x)
    x = self.layer2(x)
    x = self.layer3(x)
    x = self.layer4(x)

    x = self.avgpool(x)
    x = torch.flatten(x, 1)
    x = self.fc(x)

    return x


def resnet18(**kwargs: Any) -> ResNet:
  return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs: Any) -> ResNet:
  return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs: Any) -> ResNet:
  return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs: Any) -> ResNet:
  return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


def resnet152(**kwargs: Any) -> ResNet:
  return ResNet(Bottleneck, [3, 8, 36, 3], **kwargs)


# -------------------------------------------------------------------------------------------- VGG


class VGG(nn.Module):
  def __init__(
    self,
    features: nn.Module,
    num_classes: int = 1000,
    init_weights: bool = True,
    dropout: float = 0.5,
  ) -> None:
    super().__init__()
    self.features = features
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
      nn.Linear(512 * 7 * 7, 4096),
      nn.ReLU(True),
      nn.Dropout(p=dropout),
      nn.Linear(4096, 4096),
      nn.ReLU(True),
      nn.Dropout(p=dropout),
      nn.Linear(4096, num_classes),
    )
    if init_weights:
      for m in self.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
          if m.bias is not None:
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
          nn.init.constant_(m.weight, 1)
          nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
          nn.init.normal_(m.weight, 0, 0.01)
          nn.init.constant_(m.bias, 0)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.features(x)
    x = self.avgpool(x)
    x = torch.flatten(x, 1)
    x = self.classifier(x)
    return x


def make_layers(cfg: list[Union[str, int]], batch_norm: bool = False) -> nn.Sequential:
  layers: list[nn.Module] = []
  in_channels = 3
  for v in cfg:
    if v == "M":
      layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
    else:
      v = cast(int, v)
      conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
      if batch_norm:
        layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
      else:
        layers += [conv2d, nn.ReLU(inplace=True)]
      in_channels = v
  return nn.Sequential(*layers)


# fmt: off
cfgs: dict[str, list[Union[str, int]]] = {
  "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
  "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
  "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
  "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512,
        512, 512, "M"],
}
# fmt: on


def _vgg(cfg: str, batch_norm: bool, **kwargs: Any) -> VGG:
  return VGG(make_layers(cfgs[cfg], batch_norm=batch_norm), **kwargs)


def vgg11(**kwargs: Any) -> VGG:
  return _vgg("A", False, **kwargs)


def vgg11_bn(**kwargs: Any) -> VGG:
  return _vgg("A", True, **kwargs)


def vgg13(**kwargs: Any) -> VGG:
  return _vgg("B", False, **kwargs)


def vgg13_bn(**kwargs: Any) -> VGG:
  return _vgg("B", True, **kwargs)


def vgg16(**kwargs: Any) -> VGG:
  return _vgg("D", False, **kwargs)


def vgg16_bn(**kwargs: Any) -> VGG:
  return _vgg("D", True, **kwargs)


def vgg19(**kwargs: Any) -> VGG:
  return _vgg("E", False, **kwargs)


def vgg19_bn(**kwargs: Any) -> VGG:
  return _vgg("E", True, **kwargs)


# --------------------------------------------------------------------------------------- DenseNet


class _DenseLayer(nn.Module):
  def __init__(
    self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float
  ) -> None:
    super().__init__()
    self.norm1 = nn.BatchNorm2d(num_input_features)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(
      num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False
    )

    self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(
      bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False
    )

    self.drop_rate = float(drop_rate)

  def bn_function(self, inputs: list[Tensor]) -> Tensor:
    concated_features = torch.cat(inputs, 1)
    bottleneck_output = self.conv1(self.relu1(self.norm1(concated_features)))
    return bottleneck_output

  def forward(self, input: Union[Tensor, list[Tensor]]) -> Tensor:
    if isinstance(input, Tensor):
      prev_features = [input]
    else:
      prev_features = input

    bottleneck_output = self.bn_function(prev_features)

    new_features = self.conv2(self.relu2(self.norm2(bottleneck_output)))
    if self.drop_rate > 0:
      new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
    return new_features


class _DenseBlock(nn.ModuleDict):
  _version = 2

  def __init__(
    self,
    num_layers: int,
    num_input_features: int,
    bn_size: int,
    growth_rate: int,
    drop_rate: float,
  ) -> None:
    super().__init__()
    for i in range(num_layers):
      layer = _DenseLayer(
        num_input_features + i * growth_rate,
        growth_rate=growth_rate,
        bn_size=bn_size,
        drop_rate=drop_rate,
      )
      self.add_module("denselayer%d" % (i + 1), layer)

  def forward(self, init_features: Tensor) -> Tensor:
    features = [init_features]
    for _name, layer in self.items():
      new_features = layer(features)
      features.append(new_features)
    return torch.cat(features, 1)


class _Transition(nn.Sequential):
  def __init__(self, num_input_features: int, num_output_features: int) -> None:
    super().__init__()
    self.norm = nn.BatchNorm2d(num_input_features)
    self.relu = nn.ReLU(inplace=True)
    self.conv = nn.Conv2d(
      num_input_features, num_output_features, kernel_size=1, stride=1, bias=False
    )
    self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
  r"""Densenet-BC model class, based on
  `"Densely Connected Convolutional Networks" <https://arxiv.org/pdf/1608.06993.pdf>`_.

  Args:
      growth_rate (int) - how many filters to add each layer (`k` in paper)
      block_config (list of 4 ints) - how many layers in each pooling block
      num_init_features (int) - the number of filters to learn in the first convolution layer
      bn_size (int) - multiplicative factor for number of bottle neck layers
        (i.e. bn_size * k features in the bottleneck layer)
      drop_rate (float) - dropout rate after each dense layer
      num_classes (int) - number of classification classes
  """

  def __init__(
    self,
    growth_rate: int = 32,
    block_config: tuple[int, int, int, int] = (6, 12, 24, 16),
    num_init_features: int = 64,
    bn_size: int = 4,
    drop_rate: float = 0,
    num_classes: int = 1000,
  ) -> None:
    super().__init__()

    # First convolution
    self.features = nn.Sequential(
      OrderedDict(
        [
          (
            "conv0",
            nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
          ),
          ("norm0", nn.BatchNorm2d(num_init_features)),
          ("relu0", nn.ReLU(inplace=True)),
          ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]
      )
    )

    # Each denseblock
    num_features = num_init_features
    for i, num_layers in enumerate(block_config):
      block = _DenseBlock(
        num_layers=num_layers,
        num_input_features=num_features,
        bn_size=bn_size,
        growth_rate=growth_rate,
        drop_rate=drop_rate,
      )
      self.features.add_module("denseblock%d" % (i + 1), block)
      num_features = num_features + num_layers * growth_rate
      if i != len(block_config) - 1:
        trans = _Transition(num_input_features=num_features, num_output_features=num_features // 2)
        self.features.add_module("transition%d" % (i + 1), trans)
        num_features = num_features // 2

    # Final batch norm
    self.features.add_module("norm5", nn.BatchNorm2d(num_features))

    # Linear layer
    self.classifier = nn.Linear(num_features, num_classes)

    # Official init from torch repo.
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)
      elif isinstance(m, nn.Linear):
        nn.init.constant_(m.bias, 0)

  def forward(self, x: Tensor) -> Tensor:
    features = self.features(x)
    out = F.relu(features, inplace=True)
    out = F.adaptive_avg_pool2d(out, (1, 1))
    out = torch.flatten(out, 1)
    out = self.classifier(out)
    return out


def densenet121(**kwargs: Any) -> DenseNet:
  return DenseNet(32, (6, 12, 24, 16), 64, **kwargs)


def densenet161(**kwargs: Any) -> DenseNet:
  return DenseNet(48, (6, 12, 36, 24), 96, **kwargs)


def densenet169(**kwargs: Any) -> DenseNet:
  return DenseNet(32, (6, 12, 32, 32), 64, **kwargs)


def densenet201(**kwargs: Any) -> DenseNet:
  return DenseNet(32, (6, 12, 48, 32), 64, **kwargs)
