"""Vision Transformer (Dosovitskiy et al. 2021) in timm's layout.

    patch_embed  a conv with kernel = stride = patch_size: [B, H, W, C] -> [B, N, D] patch tokens
    cls_token    a learned token put in front: N + 1 tokens
    pos_embed    learned position embeddings [1, N + 1, D] (N follows image_size), then dropout
    blocks_i     pre-LN Transformer blocks (exact-erf GELU MLP, LayerNorm eps 1e-6)
    norm, head   final LayerNorm; Dense(num_classes) on the class token -> float32 logits
                 (num_classes=0: no head, the normed class token is returned as features [B, D])

Parameter counts match timm's at 224x224 and 1000 classes: vit_tiny_patch16_224 5,717,416,
vit_small 22,050,664, vit_base 86,567,656, vit_large 304,326,632. Initialisation is timm's:
normal(0.02) for the position embeddings and linear layers, normal(1e-6) for the class token,
zero biases, LeCun-normal for the patch projection.

The patch embedding is picked by name (`stem`, see STEMS), so a convolutional stem (Xiao et al.
2021) is one entry more: a module mapping [B, H, W, C] to tokens [B, N, D].
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.nn import registry
from jaxdl.nn.dropout import Dropout
from jaxdl.nn.layer_stack import apply_layers, transformer_layers
from jaxdl.nn.transformer import F32_DOT_GENERAL

Array = jax.Array

VIT_PRESETS: dict[str, dict[str, Any]] = {
  "vit_tiny_patch16_224": dict(embed_dim=192, num_layers=12, num_heads=3, mlp_dim=768),
  "vit_small_patch16_224": dict(embed_dim=384, num_layers=12, num_heads=6, mlp_dim=1536),
  "vit_base_patch16_224": dict(embed_dim=768, num_layers=12, num_heads=12, mlp_dim=3072),
  "vit_large_patch16_224": dict(embed_dim=1024, num_layers=24, num_heads=16, mlp_dim=4096),
  # Small images: 4x4 patches give 49 tokens (+ class token) at 28x28, 64 at 32x32.
  "vit_mnist": dict(
    image_size=28,
    patch_size=4,
    embed_dim=128,
    num_layers=6,
    num_heads=4,
    mlp_dim=256,
    num_classes=10,
  ),
  "vit_cifar": dict(
    image_size=32,
    patch_size=4,
    embed_dim=192,
    num_layers=9,
    num_heads=3,
    mlp_dim=768,
    num_classes=10,
  ),
}

_INIT = nn.initializers.normal(0.02)


class PatchEmbed(nn.Module):
  """Non-overlapping patches, linearly projected: [B, H, W, C] -> [B, (H/p) * (W/p), D].

  Attributes:
    patch_size: p; H and W must be multiples of it.
    embed_dim: D.
    dtype, param_dtype: compute and parameter dtypes.
  """

  patch_size: int
  embed_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: Array) -> Array:
    p = self.patch_size
    x = nn.Conv(
      self.embed_dim,
      (p, p),
      strides=(p, p),
      padding="VALID",
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="proj",
    )(x_BHWC)
    return x.reshape(x.shape[0], -1, self.embed_dim)  # Row-major over the patch grid.


STEMS: dict[str, type[nn.Module]] = {"patch": PatchEmbed}


@registry.register("vit", presets=VIT_PRESETS)
class ViT(nn.Module):
  """Vision Transformer classifier. images [B, S, S, C] (S = image_size) -> logits [B, K], float32.

  Attributes:
    image_size: side of the (square) input images; sets the number of position embeddings,
      (image_size / patch_size)^2 + 1.
    patch_size: side of the square patches; must divide image_size.
    embed_dim, num_layers, num_heads, mlp_dim: width D, depth, heads and MLP width of the encoder.
    num_classes: K; 0 = no head: the final-LayerNorm class token [B, D] is returned (timm's
      headless models, Hugging Face's ViTModel).
    dropout_rate: dropout after the position embeddings and on each residual branch.
    attention_dropout_rate: dropout on attention probabilities.
    stem: the patch embedding, a name in STEMS ("patch").
    layer_norm_epsilon: 1e-6 as in the paper and timm.
    dtype, param_dtype: compute and parameter dtypes; logits are float32 either way.
    attention_impl: "plain", "jax" or "cudnn" (see `dot_product_attention`).
    remat, scan_layers: as in GPT (jaxdl.nn.layer_stack); unrolled blocks are "blocks_0", ...
    num_channels: C of the images; None = whatever the input has (the patch projection takes its
      shape at init). Set it where C must be known without an input (converting checkpoints).
  """

  image_size: int = 224
  patch_size: int = 16
  embed_dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  num_classes: int = 1000
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stem: str = "patch"
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str = "plain"
  remat: str = "none"
  scan_layers: bool = False
  num_channels: int | None = None

  @nn.compact
  def __call__(self, x_BHWC: Array, *, train: bool = False) -> Array:
    """images [B, H, W, C] -> logits [B, K] (features [B, D] when num_classes=0), float32;
    `train` enables dropout (rng stream "dropout")."""
    if self.image_size % self.patch_size:
      raise ValueError(
        f"ViT: image_size={self.image_size} is not divisible by patch_size="
        f"{self.patch_size}; pick a patch size that divides it (e.g. 4 for 28 or "
        "32, 16 for 224)."
      )
    if self.stem not in STEMS:
      raise ValueError(
        f"ViT: unknown stem {self.stem!r}; choose one of {', '.join(map(repr, STEMS))}."
      )
    if x_BHWC.ndim != 4 or x_BHWC.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(
        f"ViT expects images [B, {self.image_size}, {self.image_size}, C] "
        f"(image_size={self.image_size}); got shape {x_BHWC.shape}. Resize the "
        "images or build the model with the matching image_size."
      )
    if self.num_channels is not None and x_BHWC.shape[-1] != self.num_channels:
      raise ValueError(
        f"ViT was built for {self.num_channels}-channel images (num_channels="
        f"{self.num_channels}); got shape {x_BHWC.shape}. Give {self.num_channels}-channel "
        "images or build the model with the images' num_channels."
      )
    num_patches = (self.image_size // self.patch_size) ** 2
    d = self.embed_dim
    x_BND = STEMS[self.stem](
      self.patch_size, d, dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embed"
    )(x_BHWC.astype(self.dtype))
    cls_11D = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), self.param_dtype)
    cls_B1D = jnp.broadcast_to(cls_11D.astype(self.dtype), (x_BND.shape[0], 1, d))
    x_BTD = jnp.concatenate([cls_B1D, x_BND], axis=1)
    pos_1TD = self.param("pos_embed", _INIT, (1, num_patches + 1, d), self.param_dtype)
    x_BTD = x_BTD + pos_1TD.astype(self.dtype)
    x_BTD = Dropout(self.dropout_rate)(x_BTD, deterministic=not train)

    blocks = transformer_layers(
      self.num_layers,
      remat=self.remat,
      scan=self.scan_layers,
      prefix="blocks",
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      pre_ln=True,
      activation="gelu",
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      layer_norm_epsilon=self.layer_norm_epsilon,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_INIT,
      attention_impl=self.attention_impl,
    )
    x_BTD = apply_layers(blocks, x_BTD, train=train)
    x_BTD = nn.LayerNorm(
      self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name="norm"
    )(x_BTD)
    if self.num_classes == 0:
      return x_BTD[:, 0].astype(jnp.float32)
    return nn.Dense(
      self.num_classes,
      kernel_init=_INIT,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      dot_general=F32_DOT_GENERAL,
      name="head",
    )(x_BTD[:, 0])
