"""A streaming image-classification dataset: the file list in memory, each image decoded on demand.

It serves image folders too large to decode into memory: ImageNet's 1.28M training images would
take about 190 GB as 224x224 uint8. `jaxdl.data.image_folder.load_image_folder` scans the folder
and returns this dataset when data.streaming is true, or "auto" and the decoded set would not fit.

Training is a Grain pipeline over example numbers. Epoch e is one permutation of all the training
files, drawn from numpy's generator seeded with (seed, e), cut into global batches of
batch_size * shard_count files; shard i (process i of a multi-host run) takes the contiguous rows
[i * batch_size, (i + 1) * batch_size) of each. The example at global position p of epoch e gets
its random crop and flip from the generator seeded with (seed, e, p, 0) (the 0 keeps
single-process streams as they were when the shard index stood there). Nothing depends on the
number of shards, so the shards together see exactly the batches, augmentation included, that one
process would. Example n of a shard's stream is a pure function of n, so the stream does not
depend on which worker thread decodes which file, and the iterator's state (the next n) resumes it
exactly. Grain's worker threads decode examples in parallel (Pillow releases the GIL while
decoding and resizing) and one more thread stacks them into batches ahead of the train step.
Decoding is CPU-bound, so throughput grows with runtime.data_threads up to the number of cores.

Training augmentation (data.augment):
- "inception": torchvision's RandomResizedCrop (a crop of 8-100% of the area, aspect ratio 3/4 to
  4/3, resized to S x S) and a flip with probability 1/2: the standard ImageNet recipe;
- "flip": the shorter side resized to S, the centre S x S crop, a flip with probability 1/2;
- "none": the same centre crop without the flip.
Evaluation resizes the shorter side to round(S / 0.875) (256 for S = 224) and takes the centre
S x S crop, the standard ImageNet evaluation transform. Images are scaled to [0, 1] and, by
default, normalised with ImageNet's per-channel mean and std: a streaming dataset cannot afford a
pass over every image to compute its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import concurrent.futures
import dataclasses
import math
import os
from pathlib import Path
import sys
import threading
from typing import Any, ClassVar

import grain
import numpy as np

from jaxdl.data import augment as augment_lib
from jaxdl.data import pipeline
from jaxdl.errors import DataError

# data.augment values the streaming pipeline supports.
AUGMENTS = ("inception", "flip", "none")
# RandomResizedCrop's bounds (Szegedy et al. 2015, as torchvision implements them): the fraction of
# the image's area the crop covers, its aspect ratio (width / height), and how many draws to try
# before falling back to a centre crop.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
EVAL_CROP_FRACTION = 0.875  # Evaluation crops S from a shorter side of S / 0.875.


@dataclasses.dataclass(frozen=True)
class FileSplit:
  """One split as image files and their labels; nothing is decoded.

  Attributes:
    files: the path of each image.
    label: int32 [N], the class of each file.
  """

  files: tuple[str, ...]
  label: np.ndarray

  def __post_init__(self):
    label = np.asarray(self.label)
    if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
      raise DataError(
        f"FileSplit labels must be a 1-D integer array [N], got {label.dtype} "
        f"with shape {label.shape}."
      )
    if len(label) != len(self.files):
      raise DataError(
        f"FileSplit has {len(self.files)} files but {len(label)} labels; every "
        f"file needs exactly one label."
      )
    object.__setattr__(self, "files", tuple(self.files))
    object.__setattr__(self, "label", label.astype(np.int32, copy=False))

  @classmethod
  def from_pairs(cls, pairs: Sequence[tuple[str | Path, int]]) -> FileSplit:
    """The split of (file, label) pairs, in their order."""
    return cls(
      files=tuple(str(path) for path, _ in pairs),
      label=np.array([label for _, label in pairs], np.int32),
    )

  def __len__(self) -> int:
    return len(self.files)


@dataclasses.dataclass(frozen=True)
class StreamingImageFolder:
  """A `jaxdl.data.base.Dataset` of image files decoded while training (task "classify").

  Batches are {"image": float32 [B, S, S, 3], "label": int32 [B]} (+ "mask" bool [B] for
  evaluation), S = `image_size`.

  Attributes:
    train, test: the files of the training and evaluation splits.
    num_classes: labels lie in [0, num_classes).
    image_size: side S of the square images the model sees.
    source: JSON provenance (see jaxdl.data.image_folder), with "streaming": True.
    augment: one of `AUGMENTS` (see the module docstring).
    normalize: subtract `mean` and divide by `std` per channel; False leaves images in [0, 1].
    mean, std: per-channel statistics of images scaled to [0, 1]; ImageNet's by default.
    num_workers: threads decoding evaluation images; None: one per CPU.
  """

  train: FileSplit
  test: FileSplit
  num_classes: int
  image_size: int
  source: dict
  augment: str = "inception"
  normalize: bool = True
  mean: tuple[float, ...] = augment_lib.IMAGENET_MEAN
  std: tuple[float, ...] = augment_lib.IMAGENET_STD
  num_workers: int | None = None

  # The jaxdl.data.base.Dataset attributes that are the same for every image dataset.
  task: ClassVar[str] = "classify"
  input_key: ClassVar[str] = "image"
  tokenizer: ClassVar[Any] = None

  def __post_init__(self):
    pipeline.check_int_option("image_size", self.image_size, minimum=1)
    if self.augment in ("crop", "crop_flip"):
      raise DataError(
        f"data.augment={self.augment!r} pads and crops images already decoded into memory; "
        f"the streaming pipeline crops the original image instead. Use data.augment="
        f"'inception' (random-resized crop and flip), 'flip' or 'none', or set "
        f"data.streaming=false to load the set into memory."
      )
    pipeline.check_choice_option("augment", self.augment, AUGMENTS)
    if not isinstance(self.normalize, (bool, np.bool_)):
      raise DataError(f"data.normalize must be true or false, got {self.normalize!r}.")
    augment_lib.ImageAugment(mean=self.mean, std=self.std)  # Checks the statistics.
    if len(self.mean) != 3:
      raise DataError(
        f"Streamed images are RGB, so normalisation needs 3 means and stds, got "
        f"mean {self.mean} and std {self.std}."
      )
    for name, split in (("train", self.train), ("test", self.test)):
      if len(split) and not 0 <= split.label.min() <= split.label.max() < self.num_classes:
        raise DataError(
          f"The {name} labels range over [{split.label.min()}, "
          f"{split.label.max()}], outside [0, {self.num_classes}) (source: "
          f"{self.source})."
        )

  @property
  def model_hints(self) -> dict[str, Any]:
    return {"num_classes": self.num_classes}

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
    """An endless stream of augmented batches of one shard of the training files.

    Each epoch is a fresh permutation of all the training files cut into full global batches of
    `batch_size * shard_count`; the last `len(train) % (batch_size * shard_count)` files of each
    permutation are left out (different ones every epoch). Shard i yields rows
    [i * batch_size, (i + 1) * batch_size) of each global batch, augmented as one process would
    augment them, so the concatenated batches of shards 0 .. shard_count - 1 are exactly the
    single-process batches of `batch_size * shard_count`, and every process runs
    `steps_per_epoch(batch_size * shard_count)` steps an epoch. `iter(...)` gives a grain
    DatasetIterator whose get_state()/set_state() resume exactly.

    Args:
      batch_size: examples per batch (per process).
      seed: an integer in [0, 2**32 - 1]; the global stream depends on nothing else.
      shard_index, shard_count: this process's slice of each global batch.
      num_threads: Grain threads decoding examples; 0 decodes in the consuming thread.
      prefetch: batches stacked ahead in a background thread, the decoding threads working up
        to max(batch_size, num_threads) examples ahead of it; 0 turns both off.
    """
    pipeline.check_train_args(
      batch_size=batch_size,
      seed=seed,
      shard_index=shard_index,
      shard_count=shard_count,
      num_threads=num_threads,
      prefetch=prefetch,
    )
    num_files, global_batch = len(self.train), batch_size * shard_count
    if global_batch > num_files:
      of_shards = f" ({batch_size} on each of {shard_count} shards)" if shard_count > 1 else ""
      at_most = f"{num_files // shard_count} per shard" if shard_count > 1 else f"{num_files}"
      raise DataError(
        f"batch_size {global_batch}{of_shards} is larger than the {num_files} training "
        f"images, so not one full batch fits. Use a batch size of at most {at_most}."
      )
    decode = _TrainExample(
      self, batch_size, num_files // global_batch, seed, shard_index, shard_count
    )
    # One Grain element per example, so the decoding spreads over all threads; batching the
    # examples in order keeps the batches aligned with epochs.
    read = grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=max(batch_size, num_threads) if prefetch else 0
    )
    batches = (
      grain.MapDataset.range(sys.maxsize)
      .map(decode)
      .to_iter_dataset(read)
      .batch(batch_size, drop_remainder=True, batch_fn=_stack)
    )
    return _PrefetchBatches(batches, prefetch)

  def steps_per_epoch(self, batch_size: int) -> int:
    """Updates per pass over the training files at global batch `batch_size`."""
    return pipeline.steps_per_epoch(len(self.train), batch_size)

  def eval_batches(self, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The test files once, in order, padded to `batch_size` with zeros, with "mask" bool [B].

    A thread pool decodes the next batch while the caller uses the current one.
    """
    pipeline.check_positive_int("batch_size", batch_size)  # Checked now, not at the first next().
    return self._eval_batches(batch_size)

  def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """Zeros shaped and typed like a training batch of `batch_size`."""
    pipeline.check_positive_int("batch_size", batch_size)
    return {
      "image": np.zeros((batch_size, self.image_size, self.image_size, 3), np.float32),
      "label": np.zeros(batch_size, np.int32),
    }

  def model_input(self, image_HWC: np.ndarray) -> np.ndarray:
    """A decoded uint8 image [S, S, 3] as the model sees it: float32, in [0, 1] or normalised."""
    image = pipeline.scale_pixels(image_HWC)
    if self.normalize:
      image = augment_lib.normalize(image, self.mean, self.std)
    return image

  def _eval_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    files, size = self.test.files, self.image_size
    resize = round(size / EVAL_CROP_FRACTION)

    def decode(i: int) -> np.ndarray:
      return self.model_input(decode_centre_crop(files[i], size, resize))

    pool = concurrent.futures.ThreadPoolExecutor(self.num_workers or os.cpu_count() or 1)

    def submit(start: int) -> list[concurrent.futures.Future]:
      return [pool.submit(decode, i) for i in range(start, min(start + batch_size, len(files)))]

    try:
      pending = submit(0)
      for start in range(0, len(files), batch_size):
        futures, pending = pending, submit(start + batch_size)  # Decode ahead while we wait.
        num_real = len(futures)
        image = np.zeros((batch_size, size, size, 3), np.float32)
        for row, future in enumerate(futures):
          image[row] = future.result()  # Re-raises a worker's DataError, which names the file.
        label = np.zeros(batch_size, np.int32)
        label[:num_real] = self.test.label[start : start + num_real]
        yield {"image": image, "label": label, "mask": np.arange(batch_size) < num_real}
    finally:
      pool.shutdown(wait=True, cancel_futures=True)

  def __repr__(self) -> str:  # The default would print every file name.
    return (
      f"StreamingImageFolder(num_train={len(self.train)}, num_test={len(self.test)}, "
      f"num_classes={self.num_classes}, image_size={self.image_size}, "
      f"augment={self.augment!r}, normalize={self.normalize})"
    )


class _TrainExample:
  """Example number -> {"image": float32 [S, S, 3], "label": int32}, a pure function of it.

  Number n of shard i's stream is row j = n % B of its batch g = n // B % G of epoch
  e = n // (B * G) (B the per-shard batch size, G global batches an epoch), that is, global
  position p = g * B * shard_count + i * B + j of epoch e. The file there comes from the
  permutation of all the files drawn from numpy's generator seeded with (seed, e); the
  augmentation uses the generator seeded with (seed, e, p, 0). Called from several threads at
  once.
  """

  def __init__(
    self,
    data: StreamingImageFolder,
    batch_size: int,
    batches_per_epoch: int,
    seed: int,
    shard_index: int,
    shard_count: int,
  ):
    self._data, self._batch_size, self._batches_per_epoch = data, batch_size, batches_per_epoch
    self._seed, self._shard_index, self._shard_count = seed, shard_index, shard_count
    # The two latest epochs' permutations: around an epoch boundary threads decode from both.
    # Replaced whole under the lock, read without it.
    self._permutations: tuple[tuple[int, np.ndarray], ...] = ()
    self._lock = threading.Lock()

  def _permutation(self, epoch: int) -> np.ndarray:
    for cached_epoch, permutation in self._permutations:
      if cached_epoch == epoch:
        return permutation
    with self._lock:
      for cached_epoch, permutation in self._permutations:
        if cached_epoch == epoch:
          return permutation
      permutation = np.random.default_rng([self._seed, epoch]).permutation(len(self._data.train))
      self._permutations = ((epoch, permutation), *self._permutations[:1])
      return permutation

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    batch, row_in_batch = divmod(int(index), self._batch_size)
    epoch, batch_in_epoch = divmod(batch, self._batches_per_epoch)
    position = (
      batch_in_epoch * self._shard_count + self._shard_index
    ) * self._batch_size + row_in_batch
    row = self._permutation(epoch)[position]
    # The literal 0 stands where the shard index once was: single-process streams are unchanged.
    rng = np.random.default_rng([self._seed, epoch, position, 0])
    data = self._data
    image = decode_train(data.train.files[row], data.image_size, data.augment, rng)
    return {"image": data.model_input(image), "label": data.train.label[row]}

  def __repr__(self) -> str:
    return (
      f"_TrainExample(num_files={len(self._data.train)}, batch_size={self._batch_size}, "
      f"batches_per_epoch={self._batches_per_epoch}, shard={self._shard_index} of "
      f"{self._shard_count})"
    )


class _PrefetchBatches(grain.IterDataset):
  """`batches` assembled in a background thread, up to `buffer_size` ahead of the consumer.

  grain.experimental.ThreadPrefetchIterDataset, but with iterators that exit quietly (below).
  """

  def __init__(self, batches: grain.IterDataset, buffer_size: int):
    super().__init__(batches)
    self._batches, self._buffer_size = batches, buffer_size

  def __iter__(self) -> grain.DatasetIterator:
    return _PrefetchIterator(iter(self._batches), self._buffer_size)


class _PrefetchIterator(grain.experimental.ThreadPrefetchDatasetIterator):
  def close(self) -> None:
    # Grain's close() reads module globals that are gone while the interpreter shuts down, so an
    # iterator still alive then printed an ignored AttributeError. Its thread is a daemon and
    # ends with the process.
    if not sys.is_finalizing():
      super().close()


def _stack(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {
    "image": np.stack([example["image"] for example in examples]),
    "label": np.array([example["label"] for example in examples], np.int32),
  }


def random_resized_crop_params(
  width: int,
  height: int,
  rng: np.random.Generator,
  scale: tuple[float, float] = CROP_SCALE,
  ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
  """(top, left, crop height, crop width) of a random crop, as torchvision's RandomResizedCrop.

  Up to `CROP_ATTEMPTS` times: draw the crop's area as a fraction of the image's, uniform in
  `scale`, and its aspect ratio (width / height) log-uniform in `ratio`; the first crop that fits
  inside the image gets a uniformly random position (top drawn first). If none fits, the centre
  crop of the whole image, narrowed (or shortened) to the nearest ratio bound when the image's own
  ratio lies outside `ratio`.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(CROP_ATTEMPTS):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    crop_w = int(round(math.sqrt(target_area * aspect)))
    crop_h = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      return top, left, crop_h, crop_w
  image_ratio = width / height
  if image_ratio < min(ratio):
    crop_w, crop_h = width, int(round(width / min(ratio)))
  elif image_ratio > max(ratio):
    crop_w, crop_h = int(round(height * max(ratio))), height
  else:
    crop_w, crop_h = width, height
  return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def decode_train(
  path: str | Path, image_size: int, augment: str, rng: np.random.Generator
) -> np.ndarray:
  """One training image as uint8 [S, S, 3], augmented as `augment` says (see `AUGMENTS`).

  "inception" draws the crop (`random_resized_crop_params`) and then the flip (rng.random() < 0.5)
  from `rng`; "flip" draws only the flip; "none" draws nothing.

  Raises:
    DataError: Pillow cannot open or decode the file (naming it).
  """
  if augment == "inception":
    image_HWC = _decode(path, lambda img: _random_resized_crop(img, image_size, rng))
  else:
    image_HWC = decode_centre_crop(path, image_size, image_size)
  if augment != "none" and rng.random() < 0.5:
    image_HWC = image_HWC[:, ::-1]
  return image_HWC


def decode_centre_crop(path: str | Path, image_size: int, resize: int) -> np.ndarray:
  """One image as uint8 [S, S, 3]: its shorter side resized to `resize` >= S (bilinear), then the
  centre S x S crop, as torchvision's Resize(resize) and CenterCrop(S).

  Raises:
    DataError: Pillow cannot open or decode the file (naming it).
  """

  def transform(img):
    from PIL import Image

    img.draft("RGB", (resize, resize))  # JPEGs decode at 1/2, 1/4 or 1/8 scale when that is enough.
    img = img.convert("RGB")
    width, height = img.size
    if width <= height:
      size = (resize, int(resize * height / width))
    else:
      size = (int(resize * width / height), resize)
    img = img.resize(size, Image.Resampling.BILINEAR)
    left = int(round((size[0] - image_size) / 2))
    top = int(round((size[1] - image_size) / 2))
    return img.crop((left, top, left + image_size, top + image_size))

  return _decode(path, transform)


def _random_resized_crop(img, image_size: int, rng: np.random.Generator):
  from PIL import Image

  width, height = img.size
  top, left, crop_h, crop_w = random_resized_crop_params(width, height, rng)
  # A JPEG decodes at the smallest 1/2^k scale that leaves the crop at least S pixels each way:
  # much faster for small crops of large photos, with the same pixels after the downscale.
  img.draft(
    "RGB", (math.ceil(width * image_size / crop_w), math.ceil(height * image_size / crop_h))
  )
  scale_x, scale_y = img.size[0] / width, img.size[1] / height
  img = img.convert("RGB")
  box = (left * scale_x, top * scale_y, (left + crop_w) * scale_x, (top + crop_h) * scale_y)
  return img.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)


def _decode(path: str | Path, transform) -> np.ndarray:
  """`transform` applied to the opened image, as a uint8 array; DataError naming a bad file."""
  from PIL import Image  # Imported here: only the image-folder datasets need Pillow.

  try:
    with Image.open(path) as img:
      return np.asarray(transform(img), dtype=np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    # UnidentifiedImageError and truncated files are OSErrors; broken PNG chunks SyntaxErrors.
    raise DataError(
      f"Cannot decode image {str(path)!r} ({type(e).__name__}: {e}). Replace or remove the file."
    ) from e
