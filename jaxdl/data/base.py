"""What the trainer needs from a dataset, whatever it holds (images, text, token pairs).

A dataset is loaded into host memory once (or, for large image folders, only its file list:
jaxdl.data.image_stream decodes per example) and then hands out two kinds of batches:
- training batches from a Grain pipeline: infinite, deterministic for a seed, sharded per process,
  resumable through the iterator's get_state()/set_state();
- evaluation batches covering its evaluation split exactly once, padded to a fixed shape, with a
  bool "mask" [B] that is True for real rows.

Its `task` names how the batch becomes a loss (jaxdl.train.tasks): "classify" passes
`batch[input_key]` to the model and scores `batch["label"]`; "lm" feeds `batch["tokens"][:, :-1]`
and predicts `[:, 1:]`; "masked_lm" feeds `batch["tokens"]` (masked) and predicts
`batch["targets"]` where `batch["weights"]` is 1; "seq2seq" feeds `batch["src"]` and
`batch["tgt"][:, :-1]` and predicts `batch["tgt"][:, 1:]`. `model_hints` are constructor
arguments the model must agree with, e.g. {"num_classes": 10} or {"vocab_size": 65}; the trainer
fills them in when the config leaves them unset and refuses a config that contradicts them.

Implementations: `jaxdl.data.pipeline.LoadedData` (images and labels, e.g. MNIST);
`jaxdl.data.pipeline.ArrayDataset` (named arrays of token ids, shuffled per epoch: review sentiment
in jaxdl.data.reviews, and jaxdl.data.synthetic's `Seq2SeqDataset`, which adds the pad_id, bos_id
and eos_id a decoder needs); `jaxdl.data.text.TextDataset` (a token stream read in random
windows, for language modelling); `jaxdl.data.image_stream.StreamingImageFolder` (image files
decoded and augmented per example in Grain threads, for ImageNet-sized folders).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import grain
import numpy as np


class Dataset(Protocol):
  """The interface of every dataset the trainer can train on."""

  task: str  # "classify" | "lm" | "masked_lm" | "seq2seq"
  input_key: str  # The batch key that holds the model's input ("image", "tokens", "src").
  model_hints: dict[str, Any]
  tokenizer: Any  # A jaxdl.data.tokenizers tokenizer for text data, else None.
  source: dict[str, Any]  # JSON provenance; always has "kind" and "num_train".

  def train_batches(
    self,
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 4,
  ) -> grain.IterDataset:
    """An endless, shuffled stream of batches of `batch_size` (per process) for one shard."""

  def steps_per_epoch(self, batch_size: int) -> int:
    """Updates per pass over the training data at global batch `batch_size`."""

  def eval_batches(self, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The evaluation split once, padded to `batch_size`, with "mask" bool [B]."""

  def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """Zeros shaped and typed like a training batch of `batch_size`."""
