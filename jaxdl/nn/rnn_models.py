"""Whole models built on StackedRNN: a row-by-row image classifier, a char LM, a text classifier.

All take `train` (dropout only when True, rng stream "dropout"). The language model follows the
decode protocol it shares with the GPT model, so one sampler serves both: with decode=True the
recurrent carries live in the "cache" collection; `init` creates them (zeros, for the batch size
of the tokens given) without advancing them, and every later
`apply({"params": p, "cache": c}, tokens_BL, decode=True, mutable=["cache"])` runs the chunk
(a whole prompt or one token) from the cached carries and stores the carries after it.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.kernels.dense import flat_apply
from jaxdl.nn import registry
from jaxdl.nn.dropout import Dropout
from jaxdl.nn.recurrent import StackedRNN

Array = jax.Array


@registry.register("rows_rnn")
class RowsRNNClassifier(nn.Module):
  """Reads an image [B, H, W, C] as H timesteps of W*C features (MNIST: 28 steps of 28 pixels).

  StackedRNN -> final hidden state of the last layer (both directions concatenated when
  bidirectional) -> Dense(num_classes) logits. A one-layer LSTM has
  4 (D H + H^2 + H) + H K + K params for D = W*C inputs, H features and K classes.
  """

  num_classes: int = 10
  cell_type: str = "lstm"
  features: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: Array, *, train: bool = False) -> Array:
    if x_BHWC.ndim != 4:
      raise ValueError(f"RowsRNNClassifier takes images [B, H, W, C]; got shape {x_BHWC.shape}.")
    B, H, W, C = x_BHWC.shape
    x_BTD = x_BHWC.reshape(B, H, W * C).astype(self.dtype)
    rnn = StackedRNN(
      self.features,
      self.cell_type,
      num_layers=self.num_layers,
      bidirectional=self.bidirectional,
      dropout_rate=self.dropout_rate,
      dtype=self.dtype,
      name="rnn",
    )
    _, carries = rnn(x_BTD, train=train)
    h_BH = rnn.final_hidden(carries)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(h_BH).astype(jnp.float32)


@registry.register("rnn_lm")
class RNNLanguageModel(nn.Module):
  """Character-level recurrent language model: Embed -> StackedRNN -> Dense(vocab_size).

  Dropout (when train=True) on the embeddings, between layers and before the output layer, on
  the non-recurrent connections only (Zaremba et al. 2014).
  """

  vocab_size: int
  embed_dim: int = 64
  features: int = 256
  num_layers: int = 2
  cell_type: str = "lstm"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens_BT: Array, *, train: bool = False, decode: bool = False) -> Array:
    """Logits [B, T, vocab_size] (float32) for next-token prediction at every position."""
    if tokens_BT.ndim != 2:
      raise ValueError(f"RNNLanguageModel takes tokens [B, T]; got shape {tokens_BT.shape}.")
    rnn = StackedRNN(
      self.features,
      self.cell_type,
      num_layers=self.num_layers,
      dropout_rate=self.dropout_rate,
      dtype=self.dtype,
      name="rnn",
    )
    dropout = Dropout(self.dropout_rate, deterministic=not train)
    x_BTE = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name="embed")(tokens_BT)
    x_BTE = dropout(x_BTE)

    initial_carry, cache = None, None
    if decode:
      # Present before this call only after init: then run from it and advance it.
      advance = self.has_variable("cache", "carry")
      cache = self.variable("cache", "carry", rnn.initialize_carry, tokens_BT.shape[:1])
      if advance:
        initial_carry = cache.value
    y_BTH, carries = rnn(x_BTE, initial_carry=initial_carry, train=train)
    if decode and initial_carry is not None:
      cache.value = carries

    y_BTH = dropout(y_BTH)
    # On [B*T, H]: the same numbers, and a faster backward on CPU (jaxdl.kernels.dense.flat_apply).
    logits = flat_apply(nn.Dense(self.vocab_size, dtype=self.dtype, name="logits"), y_BTH)
    return logits.astype(jnp.float32)


@registry.register("rnn_classifier")
class RNNTextClassifier(nn.Module):
  """Classifies token sequences [B, L] padded with `pad_id` (anywhere: padded steps are skipped).

  Embed -> StackedRNN masked by tokens != pad_id -> final hidden state (directions concatenated
  when bidirectional) -> dropout -> Dense(num_classes).
  """

  vocab_size: int
  num_classes: int = 2
  embed_dim: int = 64
  features: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  cell_type: str = "lstm"
  dropout_rate: float = 0.0
  pad_id: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens_BL: Array, *, train: bool = False) -> Array:
    if tokens_BL.ndim != 2:
      raise ValueError(f"RNNTextClassifier takes tokens [B, L]; got shape {tokens_BL.shape}.")
    rnn = StackedRNN(
      self.features,
      self.cell_type,
      num_layers=self.num_layers,
      bidirectional=self.bidirectional,
      dropout_rate=self.dropout_rate,
      dtype=self.dtype,
      name="rnn",
    )
    dropout = Dropout(self.dropout_rate, deterministic=not train)
    x_BLE = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name="embed")(tokens_BL)
    _, carries = rnn(dropout(x_BLE), mask_BT=tokens_BL != self.pad_id, train=train)
    h_BH = dropout(rnn.final_hidden(carries))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(h_BH).astype(jnp.float32)
