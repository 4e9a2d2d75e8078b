"""Masked language modelling data (BERT, Devlin et al. 2019): which tokens to hide, and text windows
masked that way.

`BertMasking` is BERT's recipe. Of a sequence's n non-special tokens it chooses a fixed count,
round(rate * n) (round half to even, as Python's round), at least 1, uniformly without replacement
(BERT's create_pretraining_data counts [CLS] and [SEP] in n too; at 128 tokens both give 19). Each
chosen token independently becomes [MASK] with probability 0.8, a token drawn uniformly from the
non-special vocabulary with 0.1 (which may be the token itself, as in BERT), and stays as it is
with 0.1. Special tokens ([PAD], [UNK], [CLS], [SEP], [MASK]) are never chosen and never drawn.
The loss is scored at the chosen positions only.

Masks are a pure function of (data seed, batch index): `masking_rng` seeds numpy's Philox from
both, never from global state. So a resumed run sees exactly the masks an uninterrupted one would,
and evaluation, masked with a fixed seed, scores the same positions at every evaluation of every
run.

`MaskedTextDataset` is the text of jaxdl.data.text cut into windows of block_size - 2 tokens, each
read as [CLS] window [SEP] and masked per batch; `load_text(objective="masked_lm")` builds it.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import sys
from typing import Any, ClassVar

import grain
import numpy as np

from jaxdl.data import pipeline
from jaxdl.errors import DataError

# Of the chosen tokens: this fraction becomes [MASK], the next RANDOM_FRACTION a random token, the
# rest stay (BERT's 80/10/10).
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1
# The third word of the masking generator's seed. Text windows draw their starts from numpy's
# generator seeded with (seed, batch index, 0), so masking draws from another stream.
_TRAIN_STREAM, _EVAL_STREAM = 1, 2
# Evaluation masks come from this seed whatever the run's, so all runs score the same positions.
EVAL_MASK_SEED = 0
# The special-token ids a tokenizer may have (jaxdl.data.tokenizers names them so).
_SPECIAL_ID_NAMES = ("pad_id", "unk_id", "cls_id", "sep_id", "mask_id", "bos_id", "eos_id")


def masking_rng(seed: int, batch_index: int, stream: int = _TRAIN_STREAM) -> np.random.Generator:
  """Numpy's Philox generator for the masks of batch `batch_index` of a run with data seed
  `seed`."""
  return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, batch_index, stream])))


def special_ids(tokenizer: Any) -> tuple[int, ...]:
  """The ids of `tokenizer`'s special tokens ([PAD], [UNK], [CLS], [SEP], [MASK], ...), sorted."""
  ids = (getattr(tokenizer, name, None) for name in _SPECIAL_ID_NAMES)
  return tuple(sorted({int(i) for i in ids if i is not None}))


@dataclasses.dataclass(frozen=True)
class BertMasking:
  """BERT's masking of token sequences (see the module docstring).

  Attributes:
    vocab_size: ids lie in [0, vocab_size).
    mask_id: the [MASK] token's id.
    special_ids: ids never chosen and never drawn as a random replacement (mask_id among them).
    rate: the fraction of each sequence's non-special tokens that is chosen.
  """

  vocab_size: int
  mask_id: int
  special_ids: tuple[int, ...]
  rate: float = 0.15

  def __post_init__(self):
    specials = tuple(sorted({int(i) for i in self.special_ids}))
    if self.mask_id not in specials:
      raise DataError(f"The [MASK] id {self.mask_id} must be one of the special ids {specials}.")
    if not 0 < self.rate < 1:
      raise DataError(f"data.mask_rate must be strictly between 0 and 1, got {self.rate!r}.")
    regular = np.setdiff1d(np.arange(self.vocab_size), specials).astype(np.int32)
    if not regular.size:
      raise DataError(f"All {self.vocab_size} ids are special; nothing is left to mask.")
    object.__setattr__(self, "special_ids", specials)
    object.__setattr__(self, "_regular_ids", regular)

  def chosen_counts(self, num_candidates_B: np.ndarray) -> np.ndarray:
    """int [B]: how many of each sequence's candidates (non-special tokens) are chosen."""
    n = np.asarray(num_candidates_B)
    return np.where(n > 0, np.maximum(1, np.rint(self.rate * n)), 0).astype(np.int64)

  def __call__(
    self,
    tokens_BT: np.ndarray,
    rng: np.random.Generator,
    *,
    first_row: int = 0,
    total_rows: int | None = None,
  ) -> dict[str, np.ndarray]:
    """The batch masked: {"tokens": int32 [B, T] the model reads, "targets": int32 [B, T] the
    original tokens, "weights": float32 [B, T] 1 at the chosen positions, else 0}.

    The random numbers are drawn for `total_rows` rows (default B) and rows
    [first_row, first_row + B) of them mask `tokens_BT`; so shards of a global batch, each masking
    its own rows, together mask it exactly as one process would.
    """
    tokens_BT = np.asarray(tokens_BT, np.int32)
    b, t = tokens_BT.shape
    total_rows = b if total_rows is None else total_rows
    rows = slice(first_row, first_row + b)
    order_keys = rng.random((total_rows, t))[rows]
    actions = rng.random((total_rows, t))[rows]
    replacements = rng.integers(0, len(self._regular_ids), (total_rows, t))[rows]

    candidate_BT = ~np.isin(tokens_BT, self.special_ids)
    # The k smallest keys among a row's candidates: a uniform choice of k of them.
    order_keys = np.where(candidate_BT, order_keys, 2.0)
    ranks_BT = np.argsort(np.argsort(order_keys, axis=1, kind="stable"), axis=1, kind="stable")
    chosen_BT = ranks_BT < self.chosen_counts(candidate_BT.sum(1))[:, None]

    masked_BT = np.where(chosen_BT & (actions < MASK_FRACTION), self.mask_id, tokens_BT)
    swap_BT = chosen_BT & (actions >= MASK_FRACTION) & (actions < MASK_FRACTION + RANDOM_FRACTION)
    masked_BT = np.where(swap_BT, self._regular_ids[replacements], masked_BT)
    return {
      "tokens": masked_BT.astype(np.int32),
      "targets": tokens_BT,
      "weights": chosen_BT.astype(np.float32),
    }


@dataclasses.dataclass(frozen=True)
class MaskedTextDataset:
  """A token stream for masked language modelling, split by position into training and validation.

  Batches are {"tokens": int32 [B, block_size] (masked), "targets": int32 [B, block_size],
  "weights": float32 [B, block_size]} (see `BertMasking`); each row is [CLS], a window of
  block_size - 2 consecutive tokens, [SEP]. Training batch i takes B * shard_count windows at
  starts drawn as jaxdl.data.text's (numpy's generator seeded with (seed, i, 0)), shard s the
  rows [s * B, (s + 1) * B), and masks them with `masking_rng(seed, i)`: a pure function of the
  batch index, so the stream resumes exactly and does not depend on the number of shards.
  Evaluation reads the validation stream once in consecutive windows, masked with
  `EVAL_MASK_SEED`, the same at every evaluation.

  Attributes:
    train_tokens, val_tokens, tokenizer, source: as in jaxdl.data.text.TextDataset; the tokenizer
      must have [PAD], [CLS], [SEP] and [MASK].
    block_size: tokens per row, [CLS] and [SEP] included.
    mask_rate: the fraction of each window's tokens chosen for prediction.
  """

  train_tokens: np.ndarray
  val_tokens: np.ndarray
  block_size: int
  tokenizer: Any
  source: dict[str, Any]
  mask_rate: float = 0.15

  task: ClassVar[str] = "masked_lm"
  input_key: ClassVar[str] = "tokens"

  def __post_init__(self):
    missing = [n for n in ("pad_id", "cls_id", "sep_id", "mask_id") if self._id(n) is None]
    if missing:
      names = ", ".join(f"[{n.removesuffix('_id').upper()}]" for n in missing)
      raise DataError(
        f"Masked language modelling needs the special tokens [PAD], [CLS], [SEP] and [MASK]; the "
        f"tokenizer ({type(self.tokenizer).__name__}) lacks {names}. Build it with the specials "
        f"jaxdl.data.tokenizers.TEXT_SPECIALS (load_text does so for data.objective=masked_lm)."
      )
    if self.block_size < 3:
      raise DataError(
        f"data.block_size={self.block_size} leaves no text between [CLS] and [SEP]; masked "
        f"language modelling needs data.block_size >= 3."
      )
    window = self.block_size - 2
    if len(self.train_tokens) < window or len(self.val_tokens) < window:
      raise DataError(
        f"The text ({self.source.get('path')}) gives {len(self.train_tokens)} training and "
        f"{len(self.val_tokens)} validation tokens, but each split needs at least "
        f"block_size - 2 = {window} for one window. Use more text, a smaller data.block_size, "
        f"or a data.val_fraction that leaves enough for both splits."
      )
    masking = BertMasking(
      vocab_size=self.tokenizer.vocab_size,
      mask_id=self._id("mask_id"),
      special_ids=special_ids(self.tokenizer),
      rate=self.mask_rate,
    )
    object.__setattr__(self, "masking", masking)

  def _id(self, name: str) -> int | None:
    return getattr(self.tokenizer, name, None)

  @property
  def model_hints(self) -> dict[str, Any]:
    # BERT masks attention to keys whose token is pad_id; it must be the data's [PAD].
    return {"vocab_size": self.tokenizer.vocab_size, "pad_id": self._id("pad_id")}

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
    """An endless stream of masked batches of `batch_size` windows; one Grain element per batch,
    so `iter(...)`'s get_state()/set_state() resume exactly."""
    pipeline.check_train_args(
      batch_size=batch_size,
      seed=seed,
      shard_index=shard_index,
      shard_count=shard_count,
      num_threads=num_threads,
      prefetch=prefetch,
    )
    windows = _MaskedWindows(self, batch_size, seed, shard_index, shard_count)
    return (
      grain.MapDataset.range(sys.maxsize)
      .map(windows)
      .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    )

  def steps_per_epoch(self, batch_size: int) -> int:
    """Updates that read about as many windows' worth of tokens as the training stream holds."""
    pipeline.check_positive_int("batch_size", batch_size)
    return max(1, len(self.train_tokens) // (batch_size * (self.block_size - 2)))

  def wrap(self, windows_BL: np.ndarray) -> np.ndarray:
    """int32 [B, L + 2]: each window between [CLS] and [SEP]."""
    b = len(windows_BL)
    return np.concatenate(
      [
        np.full((b, 1), self._id("cls_id"), np.int32),
        windows_BL.astype(np.int32),
        np.full((b, 1), self._id("sep_id"), np.int32),
      ],
      axis=1,
    )

  def val_rows(self) -> dict[str, np.ndarray]:
    """The validation stream in consecutive windows (starts 0, L, 2L, ... for L = block_size - 2;
    the last partial window dropped), wrapped and masked with the fixed evaluation seed."""
    window = self.block_size - 2
    starts = np.arange(0, len(self.val_tokens) - window + 1, window)
    tokens = self.wrap(_gather(self.val_tokens, starts, window))
    return self.masking(tokens, masking_rng(EVAL_MASK_SEED, 0, _EVAL_STREAM))

  def eval_batches(self, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """`val_rows()` once, in order, with "mask" bool [B], padded to `batch_size` (padding rows
    are [PAD] with zero weights)."""
    pipeline.check_positive_int("batch_size", batch_size)
    return pipeline.eval_batches(pipeline.ArraySplit(self.val_rows()), batch_size=batch_size)

  def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """Zeros shaped and typed like a training batch of `batch_size`."""
    pipeline.check_positive_int("batch_size", batch_size)
    shape = (batch_size, self.block_size)
    return {
      "tokens": np.zeros(shape, np.int32),
      "targets": np.zeros(shape, np.int32),
      "weights": np.zeros(shape, np.float32),
    }


class _MaskedWindows:
  """Batch index -> this shard's rows of that global batch: windows wrapped and masked."""

  def __init__(self, data: MaskedTextDataset, batch_size, seed, shard_index, shard_count):
    self._data, self._batch_size, self._seed = data, batch_size, seed
    self._shard_index, self._shard_count = shard_index, shard_count
    self._window = data.block_size - 2
    self._num_starts = len(data.train_tokens) - self._window + 1

  def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
    total = self._batch_size * self._shard_count
    starts = np.random.default_rng([self._seed, int(batch_index), 0]).integers(
      0, self._num_starts, size=total
    )
    first = self._shard_index * self._batch_size
    windows = _gather(
      self._data.train_tokens, starts[first : first + self._batch_size], self._window
    )
    rng = masking_rng(self._seed, int(batch_index))
    return self._data.masking(self._data.wrap(windows), rng, first_row=first, total_rows=total)

  def __repr__(self) -> str:
    return (
      f"_MaskedWindows(num_tokens={len(self._data.train_tokens)}, window={self._window}, "
      f"batch_size={self._batch_size}, shard={self._shard_index} of {self._shard_count})"
    )


def _gather(stream: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
  """int32 [len(starts), length]: the windows of `stream` at `starts`."""
  return stream[starts[:, None] + np.arange(length)].astype(np.int32)
