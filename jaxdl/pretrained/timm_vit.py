"""timm's plain Vision Transformers (vit_{tiny,small,base,...}_patch{P}_{S}) <-> jaxdl's ViT.

jaxdl's ViT is in timm's layout: the same class token, position embeddings over class token and
patches, pre-LN blocks with exact GELU, LayerNorm eps 1e-6, and the class token after the final
LayerNorm as the head's input (global_pool="token"). Only the fused `attn.qkv` needs splitting:
its [3D, D] weight stacks the query, key and value projections, each heads-major.

A checkpoint is a timm hub folder (config.json {"architecture": "vit_base_patch16_224",
"num_classes": ..., "model_args": {...}, "pretrained_cfg": {...}} and model.safetensors) or a bare
state dict. Sizes come from the tensors; the number of heads from model_args or from the
architecture's name, so a bare state dict needs a config.json beside it. timm's other ViTs
(register tokens, average pooling with fc_norm, layer scale, CLIP's pre-norm, ...) compute
differently and are refused by the tensors (or config values) that show them.
"""

import fnmatch
import math
import re
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from jaxdl.errors import CheckpointError
from jaxdl.nn.vit import ViT
from jaxdl.pretrained import families, rules
from jaxdl.pretrained.hf_vit import example_input, patch_embedding
from jaxdl.pretrained.rules import Rule

# Size name -> (width D, depth, heads, MLP width), as timm's vision_transformer.py defines them.
SIZES = {
  "tiny": (192, 12, 3, 768),
  "small": (384, 12, 6, 1536),
  "base": (768, 12, 12, 3072),
  "large": (1024, 24, 16, 4096),
  "huge": (1280, 32, 16, 5120),
  "giant": (1408, 40, 16, 6144),
  "gigantic": (1664, 48, 16, 8192),
}
# timm's registered plain ViTs (size, patch, image), the names an export may carry.
REGISTERED = {
  ("tiny", 16, 224),
  ("tiny", 16, 384),
  *((s, p, i) for s in ("small", "base") for p in (32, 16) for i in (224, 384)),
  ("small", 8, 224),
  ("base", 8, 224),
  *(("large", p, i) for p in (32, 16) for i in (224, 384)),
  ("large", 14, 224),
  ("huge", 14, 224),
  ("giant", 14, 224),
  ("gigantic", 14, 224),
}
_PLAIN = re.compile(rf"(?:vit|deit)_({'|'.join(SIZES)})_patch(\d+)_(\d+)")

# Tensors (shell patterns) of timm ViT variants that compute differently from the plain one.
VARIANTS = {
  "reg_token": "register tokens (reg_tokens > 0)",
  "dist_token": "a distillation token (DeiT distilled)",
  "head_dist.*": "a distillation head (DeiT distilled)",
  "fc_norm.*": "a LayerNorm after pooling (fc_norm, average pooling)",
  "attn_pool.*": "attention pooling (global_pool='map')",
  "norm_pre.*": "a LayerNorm before the blocks (pre_norm, as in CLIP)",
  "patch_embed.norm.*": "a LayerNorm in the patch embedding",
  "blocks.*.ls1.*": "layer scale (init_values)",
  "blocks.*.attn.q_norm.*": "query/key normalisation (qk_norm)",
  "blocks.*.attn.norm.*": "a LayerNorm on the attention output (scale_attn_norm)",
  "blocks.*.attn.gate.*": "gated attention",
  "blocks.*.mlp.norm.*": "a LayerNorm in the MLP (scale_mlp_norm)",
}
# Tensors every plain ViT has; missing, they show a variant.
REQUIRED = {
  "cls_token": "no class token (class_token=False)",
  "pos_embed": "no learned position embeddings",
  "norm.weight": "no final LayerNorm (final_norm=False or fc_norm)",
  "patch_embed.proj.bias": "no patch projection bias (pre_norm)",
  "blocks.0.attn.qkv.bias": "no query/key/value biases (qkv_bias=False)",
  "blocks.0.attn.proj.bias": "no attention projection bias (proj_bias=False)",
}
# model_args read from the tensors (checked against them), and those a plain ViT has as given.
_SIZE_ARGS = {"img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"}
_PLAIN_ARGS = {
  "global_pool": ("token",),
  "class_token": (True,),
  "qkv_bias": (True,),
  "proj_bias": (True,),
  "no_embed_class": (False,),
  "reg_tokens": (0,),
  "pre_norm": (False,),
  "final_norm": (True,),
  "fc_norm": (None, False),
  "init_values": (None,),
  "qk_norm": (False,),
  "scale_attn_norm": (False,),
  "scale_mlp_norm": (False,),
  "pos_embed": ("learn",),
  "dynamic_img_size": (False,),
  "dynamic_img_pad": (False,),
  "act_layer": (None, "gelu"),
  "norm_layer": (None, "layernorm"),
}


def _detect(config: dict | None, names: set[str]) -> bool:
  timm_config = config is None or ("architecture" in config and "model_type" not in config)
  return timm_config and {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= names


def _refuse_variants(tensors: Mapping[str, np.ndarray]) -> None:
  found = []
  for pattern, what in VARIANTS.items():
    names = sorted(n for n in tensors if fnmatch.fnmatchcase(n, pattern))
    if names:
      found.append(f"{what}: tensors {names[:3]}")
  found += [f"{what}: tensor {n!r} is missing" for n, what in REQUIRED.items() if n not in tensors]
  if found:
    raise CheckpointError(
      "This timm ViT is not the plain vit_*_patch*_* layout jaxdl's ViT computes: "
      + "; ".join(found)
      + "."
    )


def _sizes(tensors: Mapping[str, np.ndarray]) -> dict[str, int]:
  """The sizes the tensors show: D, C, patch, image side, depth, MLP width, classes."""
  d, c, p, _ = tensors["patch_embed.proj.weight"].shape
  tokens = tensors["pos_embed"].shape[1]
  side = math.isqrt(tokens - 1)
  if side * side != tokens - 1:
    no_class = math.isqrt(tokens) ** 2 == tokens
    raise CheckpointError(
      f"pos_embed {tuple(tensors['pos_embed'].shape)} is not a square grid of patches plus the "
      "class token"
      + (" (it covers the patches only: no_embed_class, as in DeiT III)" if no_class else "")
      + "; jaxdl's ViT reads plain timm ViTs."
    )
  depth = len({n.split(".")[1] for n in tensors if n.startswith("blocks.")})
  return {
    "embed_dim": d,
    "in_chans": c,
    "patch_size": p,
    "img_size": side * p,
    "depth": depth,
    "mlp_dim": tensors["blocks.0.mlp.fc1.weight"].shape[0],
    "num_classes": tensors["head.weight"].shape[0] if "head.weight" in tensors else 0,
  }


def _num_heads(config: dict, sizes: Mapping[str, int]) -> int:
  architecture = str(config.get("architecture", "")).split(".")[0]
  plain = _PLAIN.fullmatch(architecture)
  if not plain:
    raise CheckpointError(
      f"timm architecture {architecture!r} is not a plain ViT (vit_<size>_patch<P>_<S> with size "
      f"one of {', '.join(SIZES)}); other timm ViTs may compute differently (CLIP's QuickGELU, "
      "average pooling, ...), so jaxdl does not read them."
    )
  model_args = config.get("model_args") or {}
  if "num_heads" in model_args:
    return int(model_args["num_heads"])
  d, _, heads, _ = SIZES[plain.group(1)]
  if d != sizes["embed_dim"]:
    raise CheckpointError(
      f"timm architecture {architecture!r} has width {d}, but the tensors have "
      f"{sizes['embed_dim']}; give model_args.num_heads in config.json."
    )
  return heads


def _check_config(config: dict, sizes: Mapping[str, int], heads: int) -> None:
  """CheckpointError naming every config value a plain ViT of these sizes does not have."""
  model_args = config.get("model_args") or {}
  seen = {**sizes, "num_heads": heads}
  bad = []
  for key, value in model_args.items():
    if key.endswith("drop_rate") or key in ("weight_init", "fix_init"):
      continue  # Training and initialisation only.
    if key in _SIZE_ARGS:
      want = [value, value] if key == "img_size" and isinstance(value, int) else value
      got = [seen[key], seen[key]] if key == "img_size" else seen[key]
      if list(np.atleast_1d(want)) != list(np.atleast_1d(got)):
        bad.append(f"model_args.{key}={value!r} but the tensors show {seen[key]}")
    elif key == "mlp_ratio":
      if int(sizes["embed_dim"] * value) != sizes["mlp_dim"]:
        bad.append(f"model_args.mlp_ratio={value!r} but the tensors show MLP {sizes['mlp_dim']}")
    elif key == "num_classes":
      if value != sizes["num_classes"]:
        bad.append(f"model_args.num_classes={value!r} but the head has {sizes['num_classes']}")
    elif key not in _PLAIN_ARGS:
      bad.append(f"model_args.{key}={value!r}, which jaxdl does not read")
    elif value not in _PLAIN_ARGS[key]:
      bad.append(f"model_args.{key}={value!r} (a plain ViT has {_PLAIN_ARGS[key][0]!r})")
  pool = config.get("global_pool", "token")
  if pool != "token":
    bad.append(f"global_pool={pool!r} (jaxdl's ViT classifies the class token: 'token')")
  if config.get("num_classes", sizes["num_classes"]) != sizes["num_classes"]:
    bad.append(f"num_classes={config['num_classes']} but the head has {sizes['num_classes']}")
  if bad:
    raise CheckpointError(f"This timm ViT config is not jaxdl's ViT: {'; '.join(bad)}.")


def _model_config(config: dict | None, tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
  _refuse_variants(tensors)
  sizes = _sizes(tensors)
  if config is None:
    raise CheckpointError(
      "A bare timm ViT state dict does not say its number of attention heads. Put it in a folder "
      "as model.safetensors (or pytorch_model.bin) beside a config.json naming the timm "
      'architecture, e.g. {"architecture": "vit_base_patch16_224"}.'
    )
  heads = _num_heads(config, sizes)
  _check_config(config, sizes, heads)
  section = {
    "name": "vit",
    "image_size": sizes["img_size"],
    "patch_size": sizes["patch_size"],
    "embed_dim": sizes["embed_dim"],
    "num_layers": sizes["depth"],
    "num_heads": heads,
    "mlp_dim": sizes["mlp_dim"],
    "num_classes": sizes["num_classes"],
    "layer_norm_epsilon": 1e-6,
  }
  if sizes["in_chans"] != 3:  # jaxdl's ViT takes C from its input; only non-RGB is said.
    section["num_channels"] = sizes["in_chans"]
  return section


def _qkv(jax_prefix: str, ref_prefix: str, d: int, n: int) -> Rule:
  """timm's fused qkv Linear (weight [3D, D], bias [3D]) <-> three [D, N, H] kernels, [N, H]
  biases."""
  h = d // n

  def to_jax(w_3DD, b_3D):
    kernels = tuple(w.T.reshape(d, n, h) for w in np.split(w_3DD, 3))
    return kernels + tuple(b.reshape(n, h) for b in np.split(b_3D, 3))

  def to_ref(q, k, v, bq, bk, bv):
    w_3DD = np.concatenate([x.reshape(d, d).T for x in (q, k, v)])
    return w_3DD, np.concatenate([b.reshape(d) for b in (bq, bk, bv)])

  names = ("query", "key", "value")
  return Rule(
    tuple(f"{jax_prefix}/{x}/kernel" for x in names)
    + tuple(f"{jax_prefix}/{x}/bias" for x in names),
    (f"{ref_prefix}.weight", f"{ref_prefix}.bias"),
    to_jax,
    to_ref,
  )


def _rules(model: ViT) -> list[Rule]:
  d, n, m = model.embed_dim, model.num_heads, model.mlp_dim
  out = [
    rules.copy("cls_token", "cls_token"),
    rules.copy("pos_embed", "pos_embed"),
    *patch_embedding(model, "patch_embed.proj"),
    *rules.layer_norm("norm", "norm"),
  ]
  if model.num_classes:
    out += rules.linear("head", "head", (d, model.num_classes))
  for i in range(model.num_layers):
    b, t = f"blocks_{i}", f"blocks.{i}"
    out += [
      *rules.layer_norm(f"{b}/self_attn_ln", f"{t}.norm1"),
      _qkv(f"{b}/self_attn", f"{t}.attn.qkv", d, n),
      *rules.linear(f"{b}/self_attn/out", f"{t}.attn.proj", (n, d // n, d)),
      *rules.layer_norm(f"{b}/mlp_ln", f"{t}.norm2"),
      *rules.linear(f"{b}/mlp/fc_in", f"{t}.mlp.fc1", (d, m)),
      *rules.linear(f"{b}/mlp/fc_out", f"{t}.mlp.fc2", (m, d)),
    ]
  return rules.under("params", out)


def _exports(model: nn.Module) -> bool:
  return isinstance(model, ViT)


def architecture(model: ViT) -> str:
  """timm's registered name for the model's sizes, else "vit_base_patch16_224" (the config's
  model_args then give every size)."""
  for size, (d, depth, heads, mlp) in SIZES.items():
    shape = (model.embed_dim, model.num_layers, model.num_heads, model.mlp_dim)
    if shape == (d, depth, heads, mlp) and (size, model.patch_size, model.image_size) in REGISTERED:
      return f"vit_{size}_patch{model.patch_size}_{model.image_size}"
  return "vit_base_patch16_224"


def _export_config(model: ViT) -> dict[str, Any]:
  d, m, k = model.embed_dim, model.mlp_dim, model.num_classes
  problems = []
  if model.layer_norm_epsilon != 1e-6:
    problems.append(f"layer_norm_epsilon={model.layer_norm_epsilon} (timm's ViT has 1e-6)")
  if int(d * (m / d)) != m:
    problems.append(f"mlp_dim={m}, which timm's mlp_ratio cannot give for width {d}")
  if problems:
    raise CheckpointError(f"This ViT cannot be written as a timm ViT: {'; '.join(problems)}.")
  channels, side = model.num_channels or 3, model.image_size
  return {
    "architecture": architecture(model),
    "num_classes": k,
    "num_features": d,
    "global_pool": "token",
    "model_args": {
      "img_size": side,
      "patch_size": model.patch_size,
      "in_chans": channels,
      "embed_dim": d,
      "depth": model.num_layers,
      "num_heads": model.num_heads,
      "mlp_ratio": m / d,
      "num_classes": k,
      "global_pool": "token",
    },
    "pretrained_cfg": {
      "input_size": [channels, side, side],
      "fixed_input_size": True,
      "num_classes": k,
      "first_conv": "patch_embed.proj",
      "classifier": "head",
    },
  }


TIMM_VIT = families.register(
  families.Family(
    name="timm_vit",
    format="timm",
    detect=_detect,
    model_config=_model_config,
    rules=_rules,
    example_input=example_input,
    exports=_exports,
    export_config=_export_config,
    layer_prefix="blocks",
  )
)
