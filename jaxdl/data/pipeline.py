"""In-memory splits and the Grain pipelines that batch them for training and evaluation.

The datasets jaxdl trains on fit in host memory, so a split is a pair of numpy arrays and the
pipeline shuffles and batches *indices*; each batch is then gathered from the arrays with one
fancy-indexing call. That keeps the per-batch Python work constant in the batch size, and the
pipeline's state is just a position in a deterministic index stream, which is what makes
`get_state()` / `set_state()` resume exactly.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator

import grain
import numpy as np

from jaxdl.errors import DataError

# The seed is one 32-bit word (what Grain's own shuffle accepts too).
_MAX_SEED = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of an image-classification dataset, held in memory.

  Attributes:
    image: uint8 [N, H, W, C]; pixel values 0..255 (the pipelines scale them to [0, 1]).
    label: int32 [N]; integer labels of other widths are converted on construction.
  """

  image: np.ndarray
  label: np.ndarray

  def __post_init__(self):
    image, label = np.asarray(self.image), np.asarray(self.label)
    if image.ndim != 4 or image.dtype != np.uint8:
      raise DataError(
          f"Split images must be a uint8 array [N, H, W, C], got {image.dtype} with shape "
          f"{image.shape}. Add a channel axis (image[..., None]) for grayscale data and keep "
          f"raw 0..255 pixels; the pipelines do the scaling.")
    if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
      raise DataError(
          f"Split labels must be a 1-D integer array [N], got {label.dtype} with shape "
          f"{label.shape}.")
    if len(image) != len(label):
      raise DataError(
          f"Split has {len(image)} images but {len(label)} labels; every image needs exactly "
          f"one label. Check that the image and label files belong to the same split.")
    # Frozen dataclass: set the normalised arrays through object.__setattr__.
    object.__setattr__(self, "image", image)
    object.__setattr__(self, "label", label.astype(np.int32, copy=False))

  def __len__(self) -> int:
    return len(self.label)


@dataclasses.dataclass(frozen=True)
class LoadedData:
  """A dataset ready for training, plus a record of where it came from.

  Attributes:
    train: the training split.
    test: the evaluation split.
    num_classes: labels lie in [0, num_classes).
    source: JSON-serialisable provenance, e.g. {"kind": "cache", "path": ..., "num_train": ...,
      "num_test": ...}; "kind" is one of "data_dir", "cache", "download", "shipped_subset", and
      "url" is present for downloads. Runs store it so a result can be traced to its data.
  """

  train: Split
  test: Split
  num_classes: int
  source: dict

  def __post_init__(self):
    if self.train.image.shape[1:] != self.test.image.shape[1:]:
      raise DataError(
          f"Train images have shape {self.train.image.shape[1:]} but test images "
          f"{self.test.image.shape[1:]} (source: {self.source}); both splits must come from "
          f"the same dataset.")
    for name, split in (("train", self.train), ("test", self.test)):
      if len(split) and not 0 <= split.label.min() <= split.label.max() < self.num_classes:
        raise DataError(
            f"The {name} labels range over [{split.label.min()}, {split.label.max()}], outside "
            f"[0, {self.num_classes}) (source: {self.source}); the label file is damaged or "
            f"belongs to another dataset.")


def steps_per_epoch(num_examples: int, batch_size: int, shard_count: int = 1) -> int:
  """Number of batches one shard yields per epoch of `train_batches` (the same for every shard)."""
  _check_positive_int("batch_size", batch_size)
  _check_positive_int("shard_count", shard_count)
  return (num_examples // shard_count) // batch_size


def train_batches(
    split: Split,
    *,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 4,
) -> grain.IterDataset:
  """Shuffled training batches of one shard of `split`, reshuffled every epoch.

  Yields dicts {"image": float32 [B, H, W, C] in [0, 1], "label": int32 [B]}. Each epoch is a
  fresh permutation of the shard's examples, cut into full batches; the last
  `shard size % batch_size` examples of each permutation are dropped (different ones every epoch)
  so every batch has the same shape. The order depends only on `seed`, so a run is reproducible,
  and `iter(...)` gives a grain DatasetIterator whose get_state()/set_state() resume exactly.

  Shards are disjoint and all hold `len(split) // shard_count` examples (the last
  `len(split) % shard_count` examples belong to no shard), so every process runs the same number
  of steps per epoch, `steps_per_epoch(len(split), batch_size, shard_count)`, and none is left
  waiting for the others in a collective.

  Args:
    num_epochs: passes over the data; None repeats forever.
    num_threads, prefetch: grain.ReadOptions for gathering batches in background threads.
  """
  _check_positive_int("batch_size", batch_size)
  _check_positive_int("shard_count", shard_count)
  if not _is_int(shard_index) or not 0 <= shard_index < shard_count:
    raise DataError(f"shard_index must be in [0, {shard_count}), got {shard_index!r}.")
  if not _is_int(seed) or not 0 <= seed <= _MAX_SEED:
    raise DataError(f"The data seed must be an integer in [0, 2**32 - 1], got {seed!r}.")
  if num_epochs is not None:
    _check_positive_int("num_epochs", num_epochs)
  for name, value in (("num_threads", num_threads), ("prefetch", prefetch)):
    if not _is_int(value) or value < 0:
      raise DataError(f"{name} must be a non-negative integer, got {value!r}.")

  shard_size = len(split) // shard_count
  if batch_size > shard_size:
    of_shard = ""
    if shard_count > 1:
      of_shard = f" per shard ({len(split)} split over {shard_count} shards)"
    raise DataError(
        f"batch_size {batch_size} is larger than the {shard_size} training examples{of_shard}, "
        f"so not one full batch fits. Use a batch size of at most {shard_size}.")

  batches_per_epoch = shard_size // batch_size
  # One Grain element per *batch*: a per-example shuffle costs a Python call per example, which on
  # a 2-core machine takes CPU from the train step (~2 ms a batch of 64). Grain still provides the
  # iteration, the background threads and the resumable state (the batch index).
  num_batches = sys.maxsize if num_epochs is None else num_epochs * batches_per_epoch
  shard_rows = np.arange(shard_size * shard_count)[shard_index::shard_count]
  return (
      grain.MapDataset.range(num_batches)
      .map(_EpochBatch(split, shard_rows, batch_size, batches_per_epoch, seed))
      .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)))


def eval_batches(split: Split, *, batch_size: int) -> Iterator[dict]:
  """Every example of `split` exactly once, in order, in batches of `batch_size`.

  The last batch is padded with zeros to full size so evaluation compiles for one shape only;
  its "mask" (bool [B]) is True for the real rows, and metrics must be weighted by it. Yields
  {"image": float32 [B, H, W, C] in [0, 1], "label": int32 [B], "mask": bool [B]}. Creating the
  generator is free, so call this again for every evaluation.
  """
  _check_positive_int("batch_size", batch_size)  # Checked now, not at the first next().
  return _padded_batches(split, batch_size)


def _padded_batches(split: Split, batch_size: int) -> Iterator[dict]:
  for start in range(0, len(split), batch_size):
    image = _scale(split.image[start:start + batch_size])
    label = split.label[start:start + batch_size]
    num_real = len(label)
    mask = np.ones(batch_size, dtype=bool)
    if num_real < batch_size:
      padding = batch_size - num_real
      image = np.concatenate([image, np.zeros((padding, *image.shape[1:]), np.float32)])
      label = np.concatenate([label, np.zeros(padding, np.int32)])
      mask[num_real:] = False
    yield {"image": image, "label": label, "mask": mask}


class _EpochBatch:
  """Batch number -> that batch of examples. Epoch e is a permutation of the shard's rows drawn
  from numpy's generator seeded with (seed, e), cut into `batches_per_epoch` full batches."""

  def __init__(self, split: Split, rows: np.ndarray, batch_size: int, batches_per_epoch: int,
               seed: int):
    self._split, self._rows, self._batch_size = split, rows, batch_size
    self._batches_per_epoch, self._seed = batches_per_epoch, seed
    self._cached = (-1, rows)  # (epoch, its permutation), replaced whole so threads can share it.

  def _permutation(self, epoch: int) -> np.ndarray:
    cached = self._cached
    if cached[0] != epoch:
      cached = (epoch, np.random.default_rng([self._seed, epoch]).permutation(self._rows))
      self._cached = cached
    return cached[1]

  def __call__(self, batch_index: int) -> dict:
    epoch, position = divmod(int(batch_index), self._batches_per_epoch)
    start = position * self._batch_size
    indices = self._permutation(epoch)[start:start + self._batch_size]
    return {"image": _scale(self._split.image[indices]), "label": self._split.label[indices]}

  def __repr__(self) -> str:
    return f"_EpochBatch(num_examples={len(self._rows)}, batch_size={self._batch_size})"


def _scale(image: np.ndarray) -> np.ndarray:
  # Dividing by a float32 255 maps 255 to exactly 1.0 and stays in float32.
  return image.astype(np.float32) / np.float32(255)


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_positive_int(name: str, value) -> None:
  if not _is_int(value) or value < 1:
    raise DataError(f"{name} must be a positive integer, got {value!r}.")
