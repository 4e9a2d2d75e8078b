"""Hugging Face BERT <-> jaxdl's BERT (jaxdl.nn.bert).

config.json's "architectures" picks the jaxdl model (without it, the tensor names do):

    BertForMaskedLM                  "bert_mlm"
    BertForPreTraining               "bert_mlm" (how bert-base-uncased is published); its
                                     next-sentence head (cls.seq_relationship) and pooler are left
                                     out
    BertForSequenceClassification    "bert_classifier", num_classes = num_labels
    BertModel                        "bert_encoder": hidden states [B, T, D]; the pooler is left
                                     out, so an exported encoder loads into transformers' BertModel
                                     with a newly initialised pooler (last_hidden_state is exact)

Masks differ: transformers' BERT attends where `attention_mask` is 1 (all positions by default),
jaxdl's masks the keys whose token is `pad_id` (config.json's pad_token_id, 0 when null). They
agree for attention_mask = (tokens != pad_token_id).

Old names are read too: "LayerNorm.gamma"/"beta", a head model's encoder without the "bert."
prefix, and the masked-LM decoder stored beside the word embeddings it is tied to.
"""

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.errors import CheckpointError
from jaxdl.nn.bert import BertClassifier, BertEncoder, BertForMaskedLM
from jaxdl.pretrained import families, rules
from jaxdl.pretrained.rules import Rule

# transformers' class -> the jaxdl model it loads as.
ARCHITECTURES = {
  "BertForMaskedLM": "bert_mlm",
  "BertForPreTraining": "bert_mlm",
  "BertForSequenceClassification": "bert_classifier",
  "BertModel": "bert_encoder",
}
# The jaxdl model -> the transformers class it is exported as.
EXPORTED_AS = {
  BertForMaskedLM: "BertForMaskedLM",
  BertClassifier: "BertForSequenceClassification",
  BertEncoder: "BertModel",
}

_HEADS = ("cls.", "classifier.")
_WORDS = "bert.embeddings.word_embeddings.weight"
_DECODER = "cls.predictions.decoder"


def _detect(config: dict | None, names: set[str]) -> bool:
  if config is not None:
    return config.get("model_type") == "bert"
  query = "encoder.layer.0.attention.self.query.weight"
  return query in names or f"bert.{query}" in names


def _renamed(name: str, has_head: bool) -> str:
  name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
  name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
  if name.startswith(_HEADS):
    return name
  # A head model keeps its encoder under "bert.", BertModel at the top.
  body = name.removeprefix("bert.")
  return f"bert.{body}" if has_head else body


def _normalize(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The names the rules use: "bert."-prefixed encoder in a model with a head, unprefixed in
  BertModel; LayerNorm weight/bias; the tied decoder folded into the embeddings and bias.

  Raises:
    CheckpointError: the decoder is not the word embeddings (or its bias not the output bias),
      which jaxdl's BertForMaskedLM always ties.
  """
  has_head = any(name.startswith(_HEADS) for name in tensors)
  out = {_renamed(name, has_head): x for name, x in tensors.items()}
  for decoder, tied in (
    (f"{_DECODER}.weight", _WORDS),
    (f"{_DECODER}.bias", "cls.predictions.bias"),
  ):
    if decoder not in out:
      continue
    x = out.pop(decoder)
    if tied not in out:
      out[tied] = x
    elif not np.array_equal(x, out[tied]):
      raise CheckpointError(
        f"This BERT checkpoint's {decoder!r} differs from {tied!r}; jaxdl's BertForMaskedLM ties "
        "them (as BERT does), so an untied masked-LM decoder cannot be loaded."
      )
  return out


def _jaxdl_model(config: dict, tensors: Any) -> tuple[str | None, str | None]:
  """(jaxdl model name, or None; the refused architecture, or None)."""
  architectures = config.get("architectures") or []
  if architectures:
    return ARCHITECTURES.get(architectures[0]), architectures[0]
  if "classifier.weight" in tensors:
    return "bert_classifier", None
  if "cls.predictions.transform.dense.weight" in tensors:
    return "bert_mlm", None
  return "bert_encoder", None


def _num_labels(config: dict) -> int:
  return len(config["id2label"]) if config.get("id2label") else int(config.get("num_labels", 2))


def _model_config(config: dict | None, tensors: Any) -> dict[str, Any]:
  """The jaxdl model section of a BERT config.json.

  Raises:
    CheckpointError: no config.json, or one naming every setting jaxdl's BERT does not have.
  """
  if config is None:
    raise CheckpointError("A BERT checkpoint needs its config.json beside the weights.")
  name, architecture = _jaxdl_model(config, tensors)
  bad = []
  if name is None:
    bad.append(f"architectures={[architecture]} (jaxdl reads {', '.join(ARCHITECTURES)})")
  wanted = {
    "hidden_act": "gelu",
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
  }
  for key, want in wanted.items():
    got = config.get(key, want)
    if got != want:
      bad.append(f"{key}={got!r} (jaxdl's BERT has {want!r})")
  if bad:
    raise CheckpointError(f"This BERT config differs from jaxdl's BERT: {'; '.join(bad)}.")
  section = {
    "name": name,
    "vocab_size": config["vocab_size"],
    "max_length": config.get("max_position_embeddings", 512),
    "type_vocab_size": config.get("type_vocab_size", 2),
    "num_layers": config["num_hidden_layers"],
    "num_heads": config["num_attention_heads"],
    "hidden_dim": config["hidden_size"],
    "mlp_dim": config["intermediate_size"],
    "dropout_rate": config.get("hidden_dropout_prob", 0.1),
    "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.1),
    "pad_id": config.get("pad_token_id") or 0,
    "layer_norm_epsilon": config.get("layer_norm_eps", 1e-12),
  }
  if name == "bert_classifier":
    section["num_classes"] = _num_labels(config)
  return section


def _encoder_rules(model: nn.Module, jax_prefix: str, ref_prefix: str) -> list[Rule]:
  """BertEncoder at `jax_prefix` ("" or "encoder/") <-> BertModel's tensors at `ref_prefix`."""
  d, n = model.hidden_dim, model.num_heads
  h = d // n
  e, r = jax_prefix, f"{ref_prefix}embeddings"
  out = [
    rules.copy(f"{e}word_embeddings/embedding", f"{r}.word_embeddings.weight"),
    rules.copy(f"{e}position_embeddings/embedding", f"{r}.position_embeddings.weight"),
    rules.copy(f"{e}segment_embeddings/embedding", f"{r}.token_type_embeddings.weight"),
    *rules.layer_norm(f"{e}embeddings_ln", f"{r}.LayerNorm"),
  ]
  for i in range(model.num_layers):
    b, layer = f"{jax_prefix}block_{i}", f"{ref_prefix}encoder.layer.{i}"
    for qkv in ("query", "key", "value"):
      out += rules.linear(
        f"{b}/self_attn/{qkv}", f"{layer}.attention.self.{qkv}", (d, n, h), bias_shape=(n, h)
      )
    out += [
      *rules.linear(f"{b}/self_attn/out", f"{layer}.attention.output.dense", (n, h, d)),
      *rules.layer_norm(f"{b}/self_attn_ln", f"{layer}.attention.output.LayerNorm"),
      *rules.linear(f"{b}/mlp/fc_in", f"{layer}.intermediate.dense", (d, model.mlp_dim)),
      *rules.linear(f"{b}/mlp/fc_out", f"{layer}.output.dense", (model.mlp_dim, d)),
      *rules.layer_norm(f"{b}/mlp_ln", f"{layer}.output.LayerNorm"),
    ]
  return out


def _rules(model: nn.Module) -> list[Rule]:
  d = model.hidden_dim
  if isinstance(model, BertEncoder):
    return rules.under("params", _encoder_rules(model, "", ""))
  out = _encoder_rules(model, "encoder/", "bert.")
  if isinstance(model, BertForMaskedLM):
    out += [
      *rules.linear("transform", "cls.predictions.transform.dense", (d, d)),
      *rules.layer_norm("transform_ln", "cls.predictions.transform.LayerNorm"),
      rules.copy("output_bias", "cls.predictions.bias"),
    ]
  elif isinstance(model, BertClassifier):
    out += [
      *rules.linear("pooler", "bert.pooler.dense", (d, d)),
      *rules.linear("classifier", "classifier", (d, model.num_classes)),
    ]
  else:
    raise CheckpointError(f"hf_bert has no conversion for a {type(model).__name__}.")
  return rules.under("params", out)


def _exports(model: nn.Module) -> bool:
  return isinstance(model, tuple(EXPORTED_AS))


def _export_config(model: nn.Module) -> dict[str, Any]:
  attention_dropout = (
    model.dropout_rate if model.attention_dropout_rate is None else model.attention_dropout_rate
  )
  config = {
    "architectures": [EXPORTED_AS[type(model)]],
    "model_type": "bert",
    "vocab_size": model.vocab_size,
    "hidden_size": model.hidden_dim,
    "num_hidden_layers": model.num_layers,
    "num_attention_heads": model.num_heads,
    "intermediate_size": model.mlp_dim,
    "max_position_embeddings": model.max_length,
    "type_vocab_size": model.type_vocab_size,
    "hidden_act": "gelu",
    "hidden_dropout_prob": model.dropout_rate,
    "attention_probs_dropout_prob": attention_dropout,
    "layer_norm_eps": model.layer_norm_epsilon,
    "pad_token_id": model.pad_id,
    "initializer_range": 0.02,
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,  # The masked-LM decoder is the word embeddings.
  }
  if isinstance(model, BertClassifier):
    labels = [f"LABEL_{i}" for i in range(model.num_classes)]
    config["num_labels"] = model.num_classes
    config["id2label"] = dict(enumerate(labels))
    config["label2id"] = {label: i for i, label in enumerate(labels)}
  return config


def _example_input(model: nn.Module) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1, 1), jnp.int32)


BERT = families.register(
  families.Family(
    name="hf_bert",
    format="hf",
    detect=_detect,
    model_config=_model_config,
    rules=_rules,
    example_input=_example_input,
    normalize=_normalize,
    ignore=(
      "bert.pooler.dense.*",  # BertForPreTraining's and BertModel's pooler (no jaxdl MLM has one)
      "pooler.dense.*",
      "cls.seq_relationship.*",  # BertForPreTraining's next-sentence head.
      "*embeddings.position_ids",  # Index buffers some transformers versions saved.
      "*embeddings.token_type_ids",
    ),
    exports=_exports,
    export_config=_export_config,
  )
)
