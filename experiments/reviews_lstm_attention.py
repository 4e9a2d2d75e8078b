"""A bidirectional LSTM with attention pooling classifying movie-review snippets as fresh or rotten.

Run (the review corpus is not shipped with jaxdl; dev machines have it in ../shared/data):
    jaxdl train experiments/reviews_lstm_attention.py data.dir=../shared/data/rotten_tomatoes

Data as in reviews_bert.py: 12,808 Rotten Tomatoes snippets, 10% held out, lowercased words (the
8,000 most frequent), [CLS] first, 64 tokens at most, [PAD] (id 0) after.
Model (`LstmAttentionClassifier` below, built from jaxdl.nn parts): Embed(128) -> dropout ->
one bidirectional LSTM layer of 128 units per direction, padded steps masked -> AttentionPooling
(a learned query over the 256-wide outputs, padded steps weighted 0) -> dropout -> Dense(2).
Recipe: dropout 0.3, AdamW (lr 2e-3, weight decay 0.01) with cosine decay, gradient clipping at
1.0, batch 64, 4 epochs. 1.32M parameters, 1.02M of them the embeddings.
Measured (2-core x86 CPU, jax 0.10.2, 2026-11-28, other jobs sharing the CPU): 80.4% test
accuracy (991/1,233) after 4 epochs, 1 min 54 s (78.2, 79.4, 81.2% after epochs 1-3; the test
loss is lowest, 0.45, after epoch 2). reviews_bert.py reaches 78.2% in 7 min 26 s; always
guessing "fresh" would score about 58%.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.config import base_config
from jaxdl.nn import RNN, AttentionPooling, Classifier, Dropout, Embed

PAD_ID = 0  # [PAD] in every tokenizer of jaxdl.data.reviews.


class LstmAttentionClassifier(nn.Module):
  """tokens [B, L] padded with PAD_ID -> logits [B, num_classes] (float32).

  `vocab_size` and `num_classes` come from the data.
  """

  vocab_size: int
  num_classes: int = 2
  embed_dim: int = 128
  features: int = 128
  attention_dim: int = 128
  dropout_rate: float = 0.3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, *, train: bool = False) -> jax.Array:
    mask_BL = tokens_BL != PAD_ID  # The model finds its padding itself: the data gives tokens only.
    x_BLE = Embed(self.vocab_size, self.embed_dim, dtype=self.dtype)(tokens_BL)
    x_BLE = Dropout(self.dropout_rate)(x_BLE, train=train)
    h_BLH = RNN(self.features, cell_type="lstm", bidirectional=True, dtype=self.dtype)(
      x_BLE, mask_BT=mask_BL, train=train
    )  # [B, L, 2 * features], zeros at padding
    pooled_BH = AttentionPooling(self.attention_dim, dtype=self.dtype)(h_BLH, mask_BL)
    pooled_BH = Dropout(self.dropout_rate)(pooled_BH, train=train)
    return Classifier(self.num_classes, dtype=self.dtype)(pooled_BH)


def get_config():
  config = base_config()
  config.model = {
    "name": "reviews_lstm_attention",
    "cls": f"{__file__}:LstmAttentionClassifier",
    "embed_dim": 128,
    "features": 128,
    "attention_dim": 128,
    "dropout_rate": 0.3,
  }
  config.data.name = "reviews"
  config.data.tokenizer = "word"
  config.data.vocab_size = 8000
  config.data.max_length = 64
  config.data.eval_batch_size = 500
  config.train.num_epochs = 4
  config.train.batch_size = 64
  config.train.log_every_steps = 50
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.weight_decay = 0.01
  config.optimizer.schedule = "cosine"
  config.optimizer.grad_clip_norm = 1.0
  return config
