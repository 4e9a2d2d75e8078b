"""In-memory splits and the Grain pipelines that batch them for training and evaluation.

The datasets jaxdl trains on fit in host memory, so a split is a few equal-length numpy arrays
(`Split` for images and labels, `ArraySplit` for any named arrays, e.g. token ids) and the
pipeline shuffles and batches *indices*; each batch is then gathered from the arrays with one
fancy-indexing call. That keeps the per-batch Python work constant in the batch size, and the
pipeline's state is just a position in a deterministic index stream, which is what makes
`get_state()` / `set_state()` resume exactly.

`LoadedData` (images) and `ArrayDataset` (token arrays: text classification, seq2seq) are the
`jaxdl.data.base.Dataset`s built on these splits. An image dataset may carry an `Augment`
(jaxdl.data.augment.ImageAugment): it changes each training batch with random numbers drawn from
the batch's position in the stream, so augmented runs resume exactly too, and normalises evaluation
batches. The option checks at the end are shared by the dataset loaders, whose options arrive from
the config as `data.<option>`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import dataclasses
import sys
from typing import Any, ClassVar, Protocol

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
        f"raw 0..255 pixels; the pipelines do the scaling."
      )
    if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
      raise DataError(
        f"Split labels must be a 1-D integer array [N], got {label.dtype} with shape {label.shape}."
      )
    if len(image) != len(label):
      raise DataError(
        f"Split has {len(image)} images but {len(label)} labels; every image needs exactly "
        f"one label. Check that the image and label files belong to the same split."
      )
    # Frozen dataclass: set the normalised arrays through object.__setattr__.
    object.__setattr__(self, "image", image)
    object.__setattr__(self, "label", label.astype(np.int32, copy=False))

  def __len__(self) -> int:
    return len(self.label)

  def take(self, rows) -> dict[str, np.ndarray]:
    """The batch of `rows` (an index array or a slice): {"image": float32 in [0, 1], "label"}."""
    return {"image": scale_pixels(self.image[rows]), "label": self.label[rows]}


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One split of a dataset held as named, equal-length numpy arrays (row i is example i).

  Batches are these arrays' rows, unchanged: {name: array[rows]}.

  Attributes:
    arrays: name -> array [N, ...], all with the same N.
  """

  arrays: Mapping[str, np.ndarray]

  def __post_init__(self):
    arrays = {name: np.asarray(array) for name, array in self.arrays.items()}
    if not arrays:
      raise DataError("An ArraySplit needs at least one named array.")
    lengths = {name: len(array) if array.ndim else None for name, array in arrays.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
      shapes = {name: array.shape for name, array in arrays.items()}
      raise DataError(
        f"The arrays of a split must all have the same number of rows (axis 0), got shapes "
        f"{shapes}; row i of every array must describe example i."
      )
    object.__setattr__(self, "arrays", arrays)

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def take(self, rows) -> dict[str, np.ndarray]:
    """The batch of `rows` (an index array or a slice): {name: array[rows]}."""
    return {name: array[rows] for name, array in self.arrays.items()}


class Rows(Protocol):
  """What the pipelines need of a split: its size and a batch gathered from given rows."""

  def __len__(self) -> int: ...

  def take(self, rows) -> dict[str, np.ndarray]: ...


class Augment(Protocol):
  """What the pipelines need of an augmentation (jaxdl.data.augment.ImageAugment is one)."""

  def train(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """The training batch changed at random; must use only `rng` for randomness."""

  def eval(self, batch: dict[str, np.ndarray]) -> dict:
    """The evaluation batch, changed deterministically (e.g. normalised) or not at all."""


class InMemoryBatches:
  """The `Dataset` methods of a dataset whose splits are `Rows` in `self.train` / `self.test`.

  Training batches are per-epoch permutations (`train_batches`), evaluation covers `self.test`
  once with padding (`eval_batches`); both go through `self.augment` when it is set.
  """

  train: Rows
  test: Rows
  augment: Augment | None = None

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
    """An endless stream of shuffled batches of one shard of the training split."""
    return train_batches(
      self.train,
      batch_size=batch_size,
      seed=seed,
      shard_index=shard_index,
      shard_count=shard_count,
      num_threads=num_threads,
      prefetch=prefetch,
      augment=self.augment,
    )

  def steps_per_epoch(self, batch_size: int) -> int:
    """Updates per pass over the training split at global batch `batch_size`."""
    return steps_per_epoch(len(self.train), batch_size)

  def eval_batches(self, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The test split once, in order, padded to `batch_size`, with "mask" bool [B]."""
    return eval_batches(self.test, batch_size=batch_size, augment=self.augment)

  def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """Zeros shaped and typed like a training batch of `batch_size`."""
    check_positive_int("batch_size", batch_size)
    return {
      name: np.zeros((batch_size, *array.shape[1:]), array.dtype)
      for name, array in self.train.take(slice(0, 0)).items()
    }


@dataclasses.dataclass(frozen=True)
class ArrayDataset(InMemoryBatches):
  """A `Dataset` of two `ArraySplit`s, e.g. token ids and labels, or source/target pairs.

  Attributes:
    train, test: the splits; both hold the same array names with the same row shapes.
    task, input_key, model_hints, tokenizer, source: as in `jaxdl.data.base.Dataset`.
  """

  train: ArraySplit
  test: ArraySplit
  task: str
  input_key: str
  model_hints: dict[str, Any]
  source: dict[str, Any]
  tokenizer: Any = None

  def __post_init__(self):
    train_rows = {name: (a.shape[1:], a.dtype) for name, a in self.train.arrays.items()}
    test_rows = {name: (a.shape[1:], a.dtype) for name, a in self.test.arrays.items()}
    if train_rows != test_rows:
      raise DataError(
        f"Train and test splits hold different arrays (name: (row shape, dtype)): train "
        f"{train_rows}, test {test_rows} (source: {self.source}); both must be built the "
        f"same way."
      )
    if self.input_key not in train_rows:
      raise DataError(
        f"input_key {self.input_key!r} is not one of the split's arrays {sorted(train_rows)}."
      )


@dataclasses.dataclass(frozen=True)
class LoadedData(InMemoryBatches):
  """A dataset ready for training, plus a record of where it came from.

  Attributes:
    train: the training split.
    test: the evaluation split.
    num_classes: labels lie in [0, num_classes).
    source: JSON-serialisable provenance, e.g. {"kind": "cache", "path": ..., "num_train": ...,
      "num_test": ...}; "kind" is one of "data_dir", "system" (a copy installed by the OS package
      manager), "cache", "download", "shipped_subset", and "url" is present for downloads. Runs
      store it so a result can be traced to its data.
    augment: changes training batches at random and normalises all batches; None for plain
      [0, 1] images (see jaxdl.data.augment).

  It is a `jaxdl.data.base.Dataset` with task "classify", input "image" and model hint
  {"num_classes": num_classes}.
  """

  train: Split
  test: Split
  num_classes: int
  source: dict
  augment: Augment | None = None

  # The jaxdl.data.base.Dataset attributes that are the same for every image dataset.
  task: ClassVar[str] = "classify"
  input_key: ClassVar[str] = "image"
  tokenizer: ClassVar[Any] = None

  @property
  def model_hints(self) -> dict[str, Any]:
    return {"num_classes": self.num_classes}

  def __post_init__(self):
    if self.train.image.shape[1:] != self.test.image.shape[1:]:
      raise DataError(
        f"Train images have shape {self.train.image.shape[1:]} but test images "
        f"{self.test.image.shape[1:]} (source: {self.source}); both splits must come from "
        f"the same dataset."
      )
    for name, split in (("train", self.train), ("test", self.test)):
      if len(split) and not 0 <= split.label.min() <= split.label.max() < self.num_classes:
        raise DataError(
          f"The {name} labels range over [{split.label.min()}, {split.label.max()}], outside "
          f"[0, {self.num_classes}) (source: {self.source}); the label file is damaged or "
          f"belongs to another dataset."
        )


def steps_per_epoch(num_examples: int, batch_size: int, shard_count: int = 1) -> int:
  """Number of batches one shard yields per epoch of `train_batches` (the same for every shard):
  global batches of batch_size * shard_count."""
  check_positive_int("batch_size", batch_size)
  check_positive_int("shard_count", shard_count)
  return num_examples // (batch_size * shard_count)


def train_batches(
  split: Rows,
  *,
  batch_size: int,
  seed: int,
  num_epochs: int | None = None,
  shard_index: int = 0,
  shard_count: int = 1,
  num_threads: int = 2,
  prefetch: int = 4,
  augment: Augment | None = None,
) -> grain.IterDataset:
  """Shuffled training batches of one shard of `split`, reshuffled every epoch.

  Yields `split.take(rows)` for batches of rows: for a `Split`, dicts
  {"image": float32 [B, H, W, C] in [0, 1], "label": int32 [B]}. Each epoch is a fresh
  permutation of all the examples, cut into full *global* batches of `batch_size * shard_count`;
  the last `len(split) % (batch_size * shard_count)` examples of each permutation are dropped
  (different ones every epoch) so every batch has the same shape. Shard i (process i of a
  multi-host run) yields rows [i * batch_size, (i + 1) * batch_size) of each global batch, so
  the shards together see exactly the batches one process would: the data a run trains on does
  not depend on how many processes share it. The order depends only on `seed`, so a run is
  reproducible, and `iter(...)` gives a grain DatasetIterator whose get_state()/set_state() resume
  exactly.

  With `augment`, each batch becomes `augment.train(batch, rng)` where rng is numpy's generator
  seeded with (seed, epoch, batch index within the epoch, shard_index): a pure function of the
  batch's position, so augmentation is reproducible and resumes exactly as well, whichever thread
  computes it. (Each process draws for its own rows, so the random crops and flips, unlike the
  order, do differ between runs on different numbers of processes.)

  Args:
    num_epochs: passes over the data; None repeats forever.
    num_threads, prefetch: grain.ReadOptions for gathering batches in background threads.
    augment: random changes to training batches (jaxdl.data.augment.ImageAugment), or None.
  """
  check_train_args(
    batch_size=batch_size,
    seed=seed,
    shard_index=shard_index,
    shard_count=shard_count,
    num_threads=num_threads,
    prefetch=prefetch,
  )
  if num_epochs is not None:
    check_positive_int("num_epochs", num_epochs)

  global_batch = batch_size * shard_count
  if global_batch > len(split):
    of_shards = f" ({batch_size} on each of {shard_count} shards)" if shard_count > 1 else ""
    raise DataError(
      f"batch_size {global_batch}{of_shards} is larger than the {len(split)} training "
      f"examples, so not one full batch fits. Use a batch size of at most "
      f"{len(split) // shard_count * shard_count if shard_count > 1 else len(split)}."
    )

  batches_per_epoch = len(split) // global_batch
  # One Grain element per *batch*: a per-example shuffle costs a Python call per example, which on
  # a 2-core machine takes CPU from the train step (~2 ms a batch of 64). Grain still provides the
  # iteration, the background threads and the resumable state (the batch index).
  num_batches = sys.maxsize if num_epochs is None else num_epochs * batches_per_epoch
  return (
    grain.MapDataset.range(num_batches)
    .map(
      _EpochBatch(
        split,
        np.arange(len(split)),
        batch_size,
        batches_per_epoch,
        seed,
        shard_index,
        shard_count,
        augment,
      )
    )
    .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
  )


def eval_batches(split: Rows, *, batch_size: int, augment: Augment | None = None) -> Iterator[dict]:
  """Every example of `split` exactly once, in order, in batches of `batch_size`.

  The last batch is padded with zeros to full size so evaluation compiles for one shape only;
  its "mask" (bool [B]) is True for the real rows, and metrics must be weighted by it. Yields
  `split.take(rows)` plus "mask"; for a `Split`, {"image": float32 [B, H, W, C] in [0, 1],
  "label": int32 [B], "mask": bool [B]}. Creating the generator is free, so call this again for
  every evaluation. With `augment`, the real rows go through `augment.eval` (normalisation)
  before padding, so padded rows stay zero.
  """
  check_positive_int("batch_size", batch_size)  # Checked now, not at the first next().
  return _padded_batches(split, batch_size, augment)


def _padded_batches(split: Rows, batch_size: int, augment: Augment | None) -> Iterator[dict]:
  for start in range(0, len(split), batch_size):
    batch = split.take(slice(start, start + batch_size))
    if augment is not None:
      batch = augment.eval(batch)
    num_real = min(batch_size, len(split) - start)
    mask = np.ones(batch_size, dtype=bool)
    if num_real < batch_size:
      padding = batch_size - num_real
      batch = {
        name: np.concatenate([array, np.zeros((padding, *array.shape[1:]), array.dtype)])
        for name, array in batch.items()
      }
      mask[num_real:] = False
    yield {**batch, "mask": mask}


class _EpochBatch:
  """Batch number -> this shard's part of that global batch. Epoch e is a permutation of `rows`
  drawn from numpy's generator seeded with (seed, e), cut into `batches_per_epoch` global batches
  of batch_size * shard_count rows, of which the shard takes its contiguous slice; batch p of
  epoch e is augmented with the generator seeded with (seed, e, p, shard_index)."""

  def __init__(
    self,
    split: Rows,
    rows: np.ndarray,
    batch_size: int,
    batches_per_epoch: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    augment: Augment | None = None,
  ):
    self._split, self._rows, self._batch_size = split, rows, batch_size
    self._batches_per_epoch, self._seed = batches_per_epoch, seed
    self._shard_index, self._shard_count, self._augment = shard_index, shard_count, augment
    self._cached = (-1, rows)  # (epoch, its permutation), replaced whole so threads can share it.

  def _permutation(self, epoch: int) -> np.ndarray:
    cached = self._cached
    if cached[0] != epoch:
      cached = (epoch, np.random.default_rng([self._seed, epoch]).permutation(self._rows))
      self._cached = cached
    return cached[1]

  def __call__(self, batch_index: int) -> dict:
    epoch, position = divmod(int(batch_index), self._batches_per_epoch)
    start = (position * self._shard_count + self._shard_index) * self._batch_size
    indices = self._permutation(epoch)[start : start + self._batch_size]
    batch = self._split.take(indices)
    if self._augment is not None:
      rng = np.random.default_rng([self._seed, epoch, position, self._shard_index])
      batch = self._augment.train(batch, rng)
    return batch

  def __repr__(self) -> str:
    return f"_EpochBatch(num_examples={len(self._rows)}, batch_size={self._batch_size})"


def scale_pixels(image: np.ndarray) -> np.ndarray:
  """uint8 pixels 0..255 as float32 in [0, 1], as every image batch holds them."""
  # Dividing by a float32 255 maps 255 to exactly 1.0 and stays in float32.
  return image.astype(np.float32) / np.float32(255)


def check_train_args(*, batch_size, seed, shard_index, shard_count, num_threads, prefetch) -> None:
  """Checks the arguments every `Dataset.train_batches` takes; raises DataError if one is bad."""
  check_positive_int("batch_size", batch_size)
  check_positive_int("shard_count", shard_count)
  if not _is_int(shard_index) or not 0 <= shard_index < shard_count:
    raise DataError(f"shard_index must be in [0, {shard_count}), got {shard_index!r}.")
  if not _is_int(seed) or not 0 <= seed <= _MAX_SEED:
    raise DataError(f"The data seed must be an integer in [0, 2**32 - 1], got {seed!r}.")
  for name, value in (("num_threads", num_threads), ("prefetch", prefetch)):
    if not _is_int(value) or value < 0:
      raise DataError(f"{name} must be a non-negative integer, got {value!r}.")


# Option checks for the dataset loaders. Options come from the config as `data.<name>`, so the
# messages name them that way.


def check_int_option(name: str, value, *, minimum: int, maximum: int | None = None) -> int:
  """Returns `value` as an int if it is an integer in [minimum, maximum]; else DataError."""
  if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
    bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    raise DataError(f"data.{name} must be an integer {bounds}, got {value!r}.")
  return int(value)


def check_fraction_option(name: str, value) -> float:
  """Returns `value` as a float if it lies strictly between 0 and 1; else DataError."""
  if (
    isinstance(value, bool)
    or not isinstance(value, (int, float, np.integer, np.floating))
    or not 0 < value < 1
  ):
    raise DataError(f"data.{name} must be a number strictly between 0 and 1, got {value!r}.")
  return float(value)


def check_choice_option(name: str, value, choices: Sequence[str]) -> str:
  """Returns `value` if it is one of `choices`; else DataError listing them."""
  if value not in choices:
    raise DataError(f"data.{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
  return value


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_positive_int(name: str, value) -> None:
  """Raises DataError unless `value` is an integer >= 1 (not a bool)."""
  if not _is_int(value) or value < 1:
    raise DataError(f"{name} must be a positive integer, got {value!r}.")
