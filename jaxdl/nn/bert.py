"""BERT (Devlin et al. 2019): a bidirectional post-LN Transformer encoder and its two heads.

    BertEncoder      tokens -> hidden [B, T, D]: token + learned position + segment embeddings,
                     LayerNorm, dropout, post-LN blocks with (erf) GELU; pad tokens are masked out
                     as keys.
    BertClassifier   hidden[:, 0] ([CLS]) -> pooler Dense + tanh -> dropout -> Dense(num_classes).
    BertForMaskedLM  hidden -> Dense + GELU + LayerNorm -> token embedding transposed + bias
                     -> logits [B, T, V].

Model names: "bert_encoder", "bert_classifier" (presets bert_base, bert_large, bert_tiny) and
"bert_mlm"; the other two take their sizes as arguments (BERT_PRESETS holds the published
ones) or from a checkpoint (jaxdl.pretrained.load).

Layout, initialisation (normal(0.02), zero biases) and LayerNorm epsilon (1e-12) follow Google's
release and Hugging Face's BertModel, so parameter counts match theirs: bert_base's encoder and
pooler have 109,482,240 parameters, bert_large's 335,141,888.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.nn import registry
from jaxdl.nn.attention import padding_mask
from jaxdl.nn.dropout import Dropout
from jaxdl.nn.layer_stack import apply_layers, transformer_layers
from jaxdl.nn.partitioning import EMBED, VOCAB
from jaxdl.nn.transformer import tied_logits

Array = jax.Array

BERT_PRESETS: dict[str, dict[str, Any]] = {
  "bert_base": dict(
    vocab_size=30522,
    max_length=512,
    type_vocab_size=2,
    num_layers=12,
    num_heads=12,
    hidden_dim=768,
    mlp_dim=3072,
  ),
  "bert_large": dict(
    vocab_size=30522,
    max_length=512,
    type_vocab_size=2,
    num_layers=24,
    num_heads=16,
    hidden_dim=1024,
    mlp_dim=4096,
  ),
  # Google's BERT-Tiny (Turc et al. 2019, "Well-read students learn better").
  "bert_tiny": dict(
    vocab_size=30522,
    max_length=512,
    type_vocab_size=2,
    num_layers=2,
    num_heads=2,
    hidden_dim=128,
    mlp_dim=512,
  ),
}

_INIT = nn.initializers.normal(0.02)


class _BertFields(nn.Module):
  """The fields shared by BERT's encoder and its heads (one config builds any of them).

  Attributes:
    vocab_size, max_length, type_vocab_size: sizes of the token, position and segment embeddings.
    num_layers, num_heads, hidden_dim (D), mlp_dim: the encoder's shape.
    dropout_rate: dropout on the embeddings and each residual branch.
    attention_dropout_rate: dropout on attention probabilities; None = dropout_rate (as BERT).
    num_classes: used by BertClassifier only (kept here so that all three share one config).
    pad_id: token id whose positions are masked out as keys.
    dtype, param_dtype, attention_impl, layer_norm_epsilon, remat, scan_layers: as in GPT.
  """

  vocab_size: int
  num_layers: int
  num_heads: int
  hidden_dim: int
  mlp_dim: int
  max_length: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float | None = None
  num_classes: int = 2
  pad_id: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str = "plain"
  layer_norm_epsilon: float = 1e-12
  remat: str = "none"
  scan_layers: bool = False


@registry.register("bert_encoder")
class BertEncoder(_BertFields):
  """BERT's encoder. tokens [B, T] (+ segment ids [B, T]) -> hidden states [B, T, D]."""

  def setup(self):
    embed = lambda num, names: nn.Embed(
      num,
      self.hidden_dim,
      embedding_init=nn.with_logical_partitioning(_INIT, names),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    self.word_embeddings = embed(self.vocab_size, (VOCAB, EMBED))
    self.position_embeddings = embed(self.max_length, (None, EMBED))
    self.segment_embeddings = embed(self.type_vocab_size, (None, EMBED))
    self.embeddings_ln = nn.LayerNorm(
      self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype
    )
    self.dropout = Dropout(self.dropout_rate)
    attention_dropout = (
      self.dropout_rate if self.attention_dropout_rate is None else self.attention_dropout_rate
    )
    self.blocks = transformer_layers(
      self.num_layers,
      remat=self.remat,
      scan=self.scan_layers,
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      pre_ln=False,
      activation="gelu",
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=attention_dropout,
      layer_norm_epsilon=self.layer_norm_epsilon,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_INIT,
      attention_impl=self.attention_impl,
    )

  def __call__(
    self, tokens_BT: Array, *, segment_ids_BT: Array | None = None, train: bool = False
  ) -> Array:
    """tokens [B, T], segment ids [B, T] (default all 0) -> hidden [B, T, D]."""
    if tokens_BT.ndim != 2:
      raise ValueError(f"BERT expects tokens [B, T]; got shape {tokens_BT.shape}.")
    t = tokens_BT.shape[1]
    if t > self.max_length:
      raise ValueError(
        f"BERT: sequence length {t} exceeds max_length={self.max_length}; truncate "
        "the input or build the model with a larger max_length."
      )
    if segment_ids_BT is None:
      segment_ids_BT = jnp.zeros_like(tokens_BT)
    elif segment_ids_BT.shape != tokens_BT.shape:
      raise ValueError(
        f"segment_ids_BT {segment_ids_BT.shape} must have the tokens' shape {tokens_BT.shape}."
      )
    x_BTD = (
      self.word_embeddings(tokens_BT)
      + self.position_embeddings(jnp.arange(t))
      + self.segment_embeddings(segment_ids_BT)
    )
    x_BTD = self.embeddings_ln(x_BTD)
    x_BTD = self.dropout(x_BTD, deterministic=not train)
    mask = padding_mask(tokens_BT, self.pad_id)
    return apply_layers(self.blocks, x_BTD, mask=mask, train=train)

  def attend(self, x_BTD: Array) -> Array:
    """x @ word_embeddings^T: [B, T, D] -> float32 [B, T, V] (the MLM decoder's tied weights)."""
    return tied_logits(x_BTD, self.word_embeddings.embedding)


def _encoder_kwargs(module: nn.Module) -> dict[str, Any]:
  return {
    f.name: getattr(module, f.name)
    for f in dataclasses.fields(_BertFields)
    if f.init and f.name not in ("parent", "name")
  }


@registry.register("bert_classifier", presets=BERT_PRESETS)
class BertClassifier(_BertFields):
  """BERT for sequence classification. tokens [B, T] -> logits [B, num_classes] (float32).

  Same fields as BertEncoder; `num_classes` sets the output width. Parameters: the encoder's, the
  pooler's (D * D + D) and the classifier's (D * num_classes + num_classes).
  """

  def setup(self):
    self.encoder = BertEncoder(**_encoder_kwargs(self))
    self.pooler = nn.Dense(
      self.hidden_dim, kernel_init=_INIT, dtype=self.dtype, param_dtype=self.param_dtype
    )
    self.dropout = Dropout(self.dropout_rate)
    self.classifier = nn.Dense(
      self.num_classes, kernel_init=_INIT, dtype=self.dtype, param_dtype=self.param_dtype
    )

  def __call__(
    self, tokens_BT: Array, *, segment_ids_BT: Array | None = None, train: bool = False
  ) -> Array:
    hidden_BTD = self.encoder(tokens_BT, segment_ids_BT=segment_ids_BT, train=train)
    pooled_BD = jnp.tanh(self.pooler(hidden_BTD[:, 0]))  # The [CLS] token's state.
    pooled_BD = self.dropout(pooled_BD, deterministic=not train)
    return self.classifier(pooled_BD).astype(jnp.float32)


@registry.register("bert_mlm")
class BertForMaskedLM(_BertFields):
  """BERT's masked-LM head on the encoder. tokens [B, T] -> logits [B, T, V] (float32).

  The logits are scored at the masked positions by the loss; the model predicts at every position.
  """

  def setup(self):
    self.encoder = BertEncoder(**_encoder_kwargs(self))
    self.transform = nn.Dense(
      self.hidden_dim, kernel_init=_INIT, dtype=self.dtype, param_dtype=self.param_dtype
    )
    self.transform_ln = nn.LayerNorm(
      self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype
    )
    self.output_bias = self.param(
      "output_bias", nn.initializers.zeros_init(), (self.vocab_size,), self.param_dtype
    )

  def __call__(
    self, tokens_BT: Array, *, segment_ids_BT: Array | None = None, train: bool = False
  ) -> Array:
    hidden_BTD = self.encoder(tokens_BT, segment_ids_BT=segment_ids_BT, train=train)
    h_BTD = self.transform_ln(nn.gelu(self.transform(hidden_BTD), approximate=False))
    return self.encoder.attend(h_BTD) + self.output_bias.astype(jnp.float32)
