"""Hugging Face ViT (ViTForImageClassification, ViTModel) <-> jaxdl's ViT.

Both compute what jaxdl's ViT computes (pre-LN blocks, exact GELU, the class token after the final
LayerNorm), with LayerNorm eps from config.json (1e-12 by default, not timm's 1e-6).
ViTForImageClassification's `classifier` is jaxdl's `head`; a ViTModel becomes a headless ViT
(num_classes=0) whose output is the final-LayerNorm class token, `last_hidden_state[:, 0]`. Its
pooler (dense + tanh on that token, trained by no image objective since the original ViT) is
left out: its tensors are ignored on import, and a ViTModel written by jaxdl gets a freshly
initialised one from transformers, which says so when loading.

Images: jaxdl takes [B, H, W, C], transformers `pixel_values` [B, C, H, W].
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.errors import CheckpointError
from jaxdl.nn.vit import ViT
from jaxdl.pretrained import families, rules
from jaxdl.pretrained.rules import Rule

CLASSIFIER = "ViTForImageClassification"
HEADLESS = "ViTModel"
_PREFIX = "vit."  # ViTForImageClassification's encoder; a ViTModel's names have none.


def _detect(config: dict | None, names: set[str]) -> bool:
  if config is not None:
    return config.get("model_type") == "vit"
  return any(n.endswith("embeddings.patch_embeddings.projection.weight") for n in names)


def _normalize(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The names `_rules` use: "vit."-prefixed beside a classifier, unprefixed without one."""
  bare = {k.removeprefix(_PREFIX): v for k, v in tensors.items()}
  if "classifier.weight" not in bare:
    return bare
  return {(k if k.startswith("classifier.") else _PREFIX + k): v for k, v in bare.items()}


def _square(config: dict, key: str) -> int:
  value = config.get(key, 224 if key == "image_size" else 16)
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise CheckpointError(
        f"This ViT config has {key}={value}; jaxdl's ViT takes square images and patches."
      )
    value = value[0]
  return int(value)


def _model_config(config: dict | None, tensors: Any) -> dict[str, Any]:
  if config is None:
    raise CheckpointError(
      "A Hugging Face ViT checkpoint needs its config.json beside the weights (it holds the "
      "number of attention heads)."
    )
  architectures = config.get("architectures") or [
    CLASSIFIER if "classifier.weight" in tensors else HEADLESS
  ]
  if architectures[0] not in (CLASSIFIER, HEADLESS):
    raise CheckpointError(
      f"This ViT checkpoint is a {architectures[0]}; jaxdl reads {CLASSIFIER} and {HEADLESS}."
    )
  wanted = {"hidden_act": "gelu", "qkv_bias": True}
  bad = [
    f"{k}={config.get(k, v)!r} (jaxdl's ViT has {v!r})"
    for k, v in wanted.items()
    if config.get(k, v) != v
  ]
  if bad:
    raise CheckpointError(f"This ViT config differs from ViT's architecture: {'; '.join(bad)}.")
  section = {
    "name": "vit",
    "image_size": _square(config, "image_size"),
    "patch_size": _square(config, "patch_size"),
    "embed_dim": config["hidden_size"],
    "num_layers": config["num_hidden_layers"],
    "num_heads": config["num_attention_heads"],
    "mlp_dim": config["intermediate_size"],
    "num_classes": _num_labels(config) if architectures[0] == CLASSIFIER else 0,
    "dropout_rate": config.get("hidden_dropout_prob", 0.0),
    "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.0),
    "layer_norm_epsilon": config.get("layer_norm_eps", 1e-12),
  }
  # jaxdl's ViT takes C from its input; only a checkpoint for other than RGB images says it.
  if config.get("num_channels", 3) != 3:
    section["num_channels"] = config["num_channels"]
  return section


def _num_labels(config: dict) -> int:
  if "num_labels" in config:
    return int(config["num_labels"])
  return len(config.get("id2label") or {0: "LABEL_0", 1: "LABEL_1"})  # transformers' default 2


def patch_embedding(model: ViT, ref_prefix: str) -> list[Rule]:
  """The patch projection's conv rules; on export they refuse a kernel whose channel count is
  not the one the config will say (num_channels, 3 when None).

  Raises:
    CheckpointError: the model's stem is not the patch projection both libraries have.
  """
  if model.stem != "patch":
    raise CheckpointError(
      f"This ViT has stem={model.stem!r}; Hugging Face's and timm's ViTs have the 'patch' stem."
    )
  channels = model.num_channels or 3
  weight, bias = rules.conv("patch_embed/proj", ref_prefix)

  def to_ref(k_HWIO: np.ndarray) -> tuple[np.ndarray, ...]:
    if k_HWIO.shape[2] != channels:
      raise CheckpointError(
        f"This ViT's patch projection takes {k_HWIO.shape[2]}-channel images, but the config "
        f"written would say {channels} (num_channels={model.num_channels}); build the model "
        f"with num_channels={k_HWIO.shape[2]} to export it."
      )
    return weight.to_ref(k_HWIO)

  return [dataclasses.replace(weight, to_ref=to_ref), bias]


def _rules(model: ViT) -> list[Rule]:
  d, n, m = model.embed_dim, model.num_heads, model.mlp_dim
  p = _PREFIX if model.num_classes else ""
  out = [
    rules.copy("cls_token", f"{p}embeddings.cls_token"),
    rules.copy("pos_embed", f"{p}embeddings.position_embeddings"),
    *patch_embedding(model, f"{p}embeddings.patch_embeddings.projection"),
    *rules.layer_norm("norm", f"{p}layernorm"),
  ]
  if model.num_classes:
    out += rules.linear("head", "classifier", (d, model.num_classes))
  for i in range(model.num_layers):
    b, h = f"blocks_{i}", f"{p}encoder.layer.{i}"
    out += rules.layer_norm(f"{b}/self_attn_ln", f"{h}.layernorm_before")
    for name in ("query", "key", "value"):
      out += rules.linear(
        f"{b}/self_attn/{name}",
        f"{h}.attention.attention.{name}",
        (d, n, d // n),
        bias_shape=(n, d // n),
      )
    out += [
      *rules.linear(f"{b}/self_attn/out", f"{h}.attention.output.dense", (n, d // n, d)),
      *rules.layer_norm(f"{b}/mlp_ln", f"{h}.layernorm_after"),
      *rules.linear(f"{b}/mlp/fc_in", f"{h}.intermediate.dense", (d, m)),
      *rules.linear(f"{b}/mlp/fc_out", f"{h}.output.dense", (m, d)),
    ]
  return rules.under("params", out)


def _exports(model: nn.Module) -> bool:
  return isinstance(model, ViT)


def _export_config(model: ViT) -> dict[str, Any]:
  k = model.num_classes
  return {
    "architectures": [CLASSIFIER if k else HEADLESS],
    "model_type": "vit",
    "image_size": model.image_size,
    "patch_size": model.patch_size,
    "num_channels": model.num_channels or 3,
    "hidden_size": model.embed_dim,
    "num_hidden_layers": model.num_layers,
    "num_attention_heads": model.num_heads,
    "intermediate_size": model.mlp_dim,
    "hidden_act": "gelu",
    "hidden_dropout_prob": model.dropout_rate,
    "attention_probs_dropout_prob": model.attention_dropout_rate,
    "layer_norm_eps": model.layer_norm_epsilon,
    "qkv_bias": True,
    "initializer_range": 0.02,
    "encoder_stride": model.patch_size,
    **({"id2label": {str(i): f"LABEL_{i}" for i in range(k)}} if k else {}),
    **({"label2id": {f"LABEL_{i}": i for i in range(k)}} if k else {}),
  }


def example_input(model: ViT) -> jax.ShapeDtypeStruct:
  """One image of the model's size; RGB unless the model says num_channels."""
  s = model.image_size
  return jax.ShapeDtypeStruct((1, s, s, model.num_channels or 3), jnp.float32)


HF_VIT = families.register(
  families.Family(
    name="hf_vit",
    format="hf",
    detect=_detect,
    model_config=_model_config,
    rules=_rules,
    example_input=example_input,
    normalize=_normalize,
    ignore=("pooler.dense.weight", "pooler.dense.bias"),  # ViTModel's pooler: see the docstring.
    exports=_exports,
    export_config=_export_config,
    layer_prefix="blocks",
  )
)
