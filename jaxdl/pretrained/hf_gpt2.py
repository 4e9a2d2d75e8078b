"""Hugging Face GPT-2 (GPT2Model, GPT2LMHeadModel) <-> jaxdl's GPT.

GPT-2 stores its projections as Conv1D, weight [in, out], so kernels copy without a transpose;
`c_attn` holds the query, key and value projections side by side ([D, 3D]), which jaxdl keeps as
three [D, N, H] kernels.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.errors import CheckpointError
from jaxdl.nn.gpt import GPT
from jaxdl.pretrained import families, rules
from jaxdl.pretrained.rules import Rule


def _detect(config: dict | None, names: set[str]) -> bool:
  if config is not None:
    return config.get("model_type") == "gpt2"
  return "h.0.attn.c_attn.weight" in names or "transformer.h.0.attn.c_attn.weight" in names


def _normalize(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """GPT2LMHeadModel's names under "transformer."; its lm_head is the tied embedding."""
  out = {k.removeprefix("transformer."): v for k, v in tensors.items()}
  if "lm_head.weight" in out and np.array_equal(out["lm_head.weight"], out.get("wte.weight")):
    del out["lm_head.weight"]
  return out


def _model_config(config: dict | None, tensors: Any) -> dict[str, Any]:
  if config is None:
    raise CheckpointError("A GPT-2 checkpoint needs its config.json beside the weights.")
  unsupported = {
    "activation_function": ("gelu_new", config.get("activation_function", "gelu_new")),
    "scale_attn_weights": (True, config.get("scale_attn_weights", True)),
    "scale_attn_by_inverse_layer_idx": (
      False,
      config.get("scale_attn_by_inverse_layer_idx", False),
    ),
    "add_cross_attention": (False, config.get("add_cross_attention", False)),
  }
  bad = [f"{k}={got!r} (jaxdl's GPT has {want!r})" for k, (want, got) in unsupported.items()]
  bad = [b for b, (want, got) in zip(bad, unsupported.values()) if want != got]
  if bad:
    raise CheckpointError(f"This GPT-2 config differs from GPT-2's architecture: {'; '.join(bad)}.")
  d = config["n_embd"]
  return {
    "name": "gpt",
    "vocab_size": config["vocab_size"],
    "block_size": config["n_positions"],
    "num_layers": config["n_layer"],
    "num_heads": config["n_head"],
    "embed_dim": d,
    "mlp_dim": config.get("n_inner") or 4 * d,
    "dropout_rate": config.get("resid_pdrop", 0.1),
    "attention_dropout_rate": config.get("attn_pdrop", 0.1),
    "tie_embeddings": config.get("tie_word_embeddings", True),
    "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-5),
  }


def _qkv(d: int, n: int) -> Rule:
  h = d // n

  def to_jax(w_D3D, b_3D):
    ws = np.split(w_D3D, 3, axis=1)
    bs = np.split(b_3D, 3)
    return tuple(w.reshape(d, n, h) for w in ws) + tuple(b.reshape(n, h) for b in bs)

  def to_ref(q, k, v, bq, bk, bv):
    w = np.concatenate([x.reshape(d, d) for x in (q, k, v)], axis=1)
    return w, np.concatenate([b.reshape(d) for b in (bq, bk, bv)])

  jax_paths = [f"{p}/kernel" for p in "qkv"] + [f"{p}/bias" for p in "qkv"]
  return Rule(tuple(jax_paths), ("c_attn.weight", "c_attn.bias"), to_jax, to_ref)


def _prefixed(rule: Rule, jax_prefix: str, ref_prefix: str) -> Rule:
  names = {"q": "query", "k": "key", "v": "value"}
  jax_paths = []
  for p in rule.jax:
    head, _, leaf = p.partition("/")
    jax_paths.append(f"{jax_prefix}/{names[head]}/{leaf}")
  return Rule(
    tuple(jax_paths), tuple(f"{ref_prefix}.{r}" for r in rule.ref), rule.to_jax, rule.to_ref
  )


def _rules(model: GPT) -> list[Rule]:
  d, n = model.embed_dim, model.num_heads
  out = [
    rules.copy("wte/embedding", "wte.weight"),
    rules.copy("wpe/embedding", "wpe.weight"),
    *rules.layer_norm("ln_f", "ln_f"),
  ]
  if not model.tie_embeddings:
    out += rules.linear("lm_head", "lm_head", (d, model.vocab_size), bias=False)
  for i in range(model.num_layers):
    b, h = f"block_{i}", f"h.{i}"
    out += [
      *rules.layer_norm(f"{b}/self_attn_ln", f"{h}.ln_1"),
      _prefixed(_qkv(d, n), f"{b}/self_attn", f"{h}.attn"),
      *rules.linear(f"{b}/self_attn/out", f"{h}.attn.c_proj", (n, d // n, d), transposed=False),
      *rules.layer_norm(f"{b}/mlp_ln", f"{h}.ln_2"),
      *rules.linear(
        f"{b}/mlp/fc_in", f"{h}.mlp.c_fc", (d, model.mlp_dim or 4 * d), transposed=False
      ),
      *rules.linear(
        f"{b}/mlp/fc_out", f"{h}.mlp.c_proj", (model.mlp_dim or 4 * d, d), transposed=False
      ),
    ]
  return rules.under("params", out)


def _exports(model: nn.Module) -> bool:
  return isinstance(model, GPT)


def _export_config(model: GPT) -> dict[str, Any]:
  unsupported = []
  if not model.use_bias:
    unsupported.append("use_bias=False (GPT-2 has biases)")
  if model.num_kv_heads not in (None, model.num_heads):
    unsupported.append(f"num_kv_heads={model.num_kv_heads} (GPT-2 has multi-head attention)")
  if unsupported:
    raise CheckpointError(f"This GPT cannot be written as GPT-2: {'; '.join(unsupported)}.")
  d = model.embed_dim
  attention_dropout = (
    model.dropout_rate if model.attention_dropout_rate is None else (model.attention_dropout_rate)
  )
  return {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "vocab_size": model.vocab_size,
    "n_positions": model.block_size,
    "n_ctx": model.block_size,
    "n_embd": d,
    "n_layer": model.num_layers,
    "n_head": model.num_heads,
    "n_inner": model.mlp_dim if model.mlp_dim not in (None, 4 * d) else None,
    "activation_function": "gelu_new",
    "resid_pdrop": model.dropout_rate,
    "embd_pdrop": model.dropout_rate,
    "attn_pdrop": attention_dropout,
    "layer_norm_epsilon": model.layer_norm_epsilon,
    "initializer_range": 0.02,
    "tie_word_embeddings": model.tie_embeddings,
    "scale_attn_weights": True,
    "use_cache": True,
    "bos_token_id": 50256 if model.vocab_size == 50257 else 0,
    "eos_token_id": 50256 if model.vocab_size == 50257 else 0,
  }


def _example_input(model: GPT) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1, 1), jnp.int32)


GPT2 = families.register(
  families.Family(
    name="hf_gpt2",
    format="hf",
    detect=_detect,
    model_config=_model_config,
    rules=_rules,
    example_input=_example_input,
    normalize=_normalize,
    ignore=("h.*.attn.bias", "h.*.attn.masked_bias"),  # Causal-mask buffers of older versions.
    exports=_exports,
    export_config=_export_config,
  )
)
