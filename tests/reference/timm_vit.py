# timm's plain VisionTransformer, cut down from timm 1.0.31 (github.com/huggingface/
# pytorch-image-models: timm/models/vision_transformer.py VisionTransformer and Block,
# timm/layers/attention.py Attention, timm/layers/mlp.py Mlp, timm/layers/patch_embed.py
# PatchEmbed) so that tests can build it without timm, which needs torchvision, whose wheels need a
# matching CUDA build of torch. Kept: every module a plain vit_*_patch*_* model has, under timm's
# name (the parameterless ones too, as nn.Identity or nn.Dropout), and its eval-mode computation:
# fused scaled_dot_product_attention, exact GELU, timm's LayerNorm eps 1e-6, class-token pooling.
# Left out: the options plain ViTs leave off (register tokens, fc_norm and other pooling, layer
# scale, qk_norm, pre_norm, dynamic image size, patch dropout, drop path), weight initialisation
# schemes, gradient checkpointing and feature extraction. `create` builds from a timm hub
# config.json the way timm.create_model("local-dir:...") does for these architectures.
#
# Copyright 2019 Ross Wightman. Licensed under the Apache License, Version 2.0
# (http://www.apache.org/licenses/LICENSE-2.0); modified (cut down) for jaxdl's tests.

import json
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

# The state dict of timm.create_model("vit_tiny_patch16_224") (timm 1.0.31), names and shapes.
PUBLISHED_KEYS = Path(__file__).resolve().parents[1] / "data" / "timm_vit_keys.json"

# timm's registered plain ViTs this reference builds by name (vision_transformer.py model_args).
ARCHITECTURES = {
  "vit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
  "vit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
  "vit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
  "vit_base_patch32_224": dict(patch_size=32, embed_dim=768, depth=12, num_heads=12),
  "vit_large_patch16_224": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
}


def _pair(x):
  return tuple(x) if isinstance(x, (list, tuple)) else (x, x)  # timm's to_2tuple


class PatchEmbed(nn.Module):
  def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768):
    super().__init__()
    self.img_size = _pair(img_size)
    self.patch_size = _pair(patch_size)
    self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
    self.num_patches = self.grid_size[0] * self.grid_size[1]
    self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
    self.norm = nn.Identity()

  def forward(self, x):
    _, _, h, w = x.shape
    assert (h, w) == self.img_size, f"Input size ({h}, {w}) doesn't match model {self.img_size}."
    x = self.proj(x)
    x = x.flatten(2).transpose(1, 2)  # NCHW -> NLC
    return self.norm(x)


class Attention(nn.Module):
  def __init__(self, dim, num_heads=8, qkv_bias=False):
    super().__init__()
    assert dim % num_heads == 0, "dim should be divisible by num_heads"
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.scale = self.head_dim**-0.5
    self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
    self.q_norm = nn.Identity()
    self.k_norm = nn.Identity()
    self.attn_drop = nn.Dropout(0.0)
    self.norm = nn.Identity()
    self.proj = nn.Linear(dim, dim)
    self.proj_drop = nn.Dropout(0.0)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    x = F.scaled_dot_product_attention(q, k, v)
    x = x.transpose(1, 2).reshape(b, n, c)
    x = self.norm(x)
    return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
  def __init__(self, in_features, hidden_features):
    super().__init__()
    self.fc1 = nn.Linear(in_features, hidden_features)
    self.act = nn.GELU()
    self.drop1 = nn.Dropout(0.0)
    self.norm = nn.Identity()
    self.fc2 = nn.Linear(hidden_features, in_features)
    self.drop2 = nn.Dropout(0.0)

  def forward(self, x):
    return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


def LayerNorm(dim):
  return nn.LayerNorm(dim, eps=1e-6)  # timm.layers.LayerNorm's default eps.


class Block(nn.Module):
  def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False):
    super().__init__()
    self.norm1 = LayerNorm(dim)
    self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
    self.ls1 = nn.Identity()
    self.drop_path1 = nn.Identity()
    self.norm2 = LayerNorm(dim)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))
    self.ls2 = nn.Identity()
    self.drop_path2 = nn.Identity()

  def forward(self, x):
    x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
    return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
  def __init__(
    self,
    img_size=224,
    patch_size=16,
    in_chans=3,
    num_classes=1000,
    global_pool="token",
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    qkv_bias=True,
  ):
    super().__init__()
    assert global_pool == "token", "this reference has class-token pooling only"
    self.num_classes = num_classes
    self.num_prefix_tokens = 1
    self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
    num_patches = self.patch_embed.num_patches
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
    self.pos_drop = nn.Dropout(0.0)
    self.patch_drop = nn.Identity()
    self.norm_pre = nn.Identity()
    self.blocks = nn.Sequential(
      *[Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)]
    )
    self.norm = LayerNorm(embed_dim)
    self.fc_norm = nn.Identity()
    self.head_drop = nn.Dropout(0.0)
    self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

  def forward_features(self, x):
    x = self.patch_embed(x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = self.pos_drop(x + self.pos_embed)
    x = self.norm_pre(self.patch_drop(x))
    x = self.blocks(x)
    return self.norm(x)

  def forward_head(self, x, pre_logits=False):
    x = x[:, 0]  # global_pool="token"
    x = self.head_drop(self.fc_norm(x))
    return x if pre_logits else self.head(x)

  def forward(self, x):
    return self.forward_head(self.forward_features(x))


def create(architecture: str, **kwargs) -> VisionTransformer:
  """timm.create_model(architecture, **kwargs) for the names in ARCHITECTURES."""
  return VisionTransformer(**{**ARCHITECTURES[architecture], **kwargs})


def from_folder(folder: str | Path) -> VisionTransformer:
  """timm.create_model(f"local-dir:{folder}", pretrained=True): the architecture and model_args
  from config.json, the weights from model.safetensors."""
  from safetensors.torch import load_file

  config = json.loads((Path(folder) / "config.json").read_text())
  kwargs = {"num_classes": config["num_classes"], **config.get("model_args", {})}
  model = create(config["architecture"], **kwargs)
  model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
  return model
