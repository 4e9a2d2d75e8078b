"""Image classification from records: image fields decoded, and labels.

`image_dataset` makes a `RecordImageDataset` whose batches equal to the bit those of a
`jaxdl.data.pipeline.Split` holding the same images, with the same seed and augmentation. The
images are decoded once into memory when they fit (data.cache), or else stay in the records
(encoded or not) until `RecordImages.take` reads a batch's: a dataset larger than memory streams.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
import sys
from typing import Any, ClassVar

import numpy as np

from jaxdl.data import augment as augment_lib
from jaxdl.data import image_folder, pipeline
from jaxdl.data.record_source import RecordSource, field_of, read_field, read_records
from jaxdl.errors import DataError


def decode_image(value: Any, field: str = "image") -> np.ndarray:
  """One image field as uint8 [H, W, C] (the forms it may take: jaxdl.data.records).

  Raises:
    DataError: naming `field`, when the value is none of the accepted forms or does not decode.
  """
  if isinstance(value, dict):  # A Hugging Face Image struct.
    if value.get("bytes") is not None:
      value = value["bytes"]
    elif value.get("path"):
      try:
        value = Path(value["path"]).expanduser().read_bytes()
      except OSError as e:
        raise DataError(
          f"Cannot read the image file {value['path']!r} that field {field!r} names: {e}. Store "
          f"the image bytes in the records, or make the file readable."
        ) from e
    else:
      raise DataError(
        f"Field {field!r} holds an image struct with neither bytes nor a path: {sorted(value)}."
      )
  if isinstance(value, (bytes, bytearray, memoryview)):
    return _decode_bytes(bytes(value), field)
  pil = sys.modules.get("PIL.Image")
  if pil is not None and isinstance(value, pil.Image):
    return _from_pil(value, field)
  try:
    array = np.asarray(value)
  except ValueError as e:  # Ragged nested lists.
    raise DataError(f"Field {field!r} is not a rectangular image array ({e}).") from e
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or not (np.issubdtype(array.dtype, np.integer) and array.size):
    raise DataError(
      f"Field {field!r} holds {type(value).__name__} of dtype {array.dtype} and shape "
      f"{array.shape}, not an image: give uint8 pixels [H, W] or [H, W, C] (0..255), encoded "
      f"image bytes (PNG, JPEG), a {{'bytes', 'path'}} image struct, or a PIL image; or name the "
      f"image column with data.image_column."
    )
  if array.dtype != np.uint8:
    if array.min() < 0 or array.max() > 255:
      raise DataError(
        f"Field {field!r} has pixel values in [{array.min()}, {array.max()}], outside 0..255; "
        f"store 8-bit pixels (scale 16-bit or float images to uint8 first)."
      )
    array = array.astype(np.uint8)
  return array


def _decode_bytes(data: bytes, field: str) -> np.ndarray:
  import io

  from PIL import Image

  try:
    with Image.open(io.BytesIO(data)) as img:
      return _from_pil(img, field)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise DataError(
      f"Cannot decode the image bytes of field {field!r} ({type(e).__name__}: {e}); they are "
      f"not a PNG, JPEG or other image Pillow reads, or are damaged."
    ) from e


def _from_pil(img, field: str) -> np.ndarray:
  if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
    raise DataError(
      f"Field {field!r} holds {img.mode}-mode (16-bit or float) images; convert them to 8-bit "
      f"(mode L or RGB) first."
    )
  if img.mode not in ("L", "RGB"):
    img = img.convert("L" if img.mode in ("1", "LA") else "RGB")
  array = np.asarray(img, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def resize_centre_crop(image_HWC: np.ndarray, image_size: int) -> np.ndarray:
  """uint8 [S, S, C]: the shorter side resized to S (bilinear), then the centre S x S crop, as
  jaxdl.data.image_stream.decode_centre_crop does for files."""
  from PIL import Image

  height, width, channels = image_HWC.shape
  if (height, width) == (image_size, image_size):
    return image_HWC
  if channels not in (1, 3, 4):
    raise DataError(
      f"Cannot resize {channels}-channel images (data.image_size={image_size}); only 1, 3 or 4 "
      f"channels. Store images of one shape and set data.image_size=0."
    )
  img = Image.fromarray(image_HWC[..., 0] if channels == 1 else image_HWC)
  if width <= height:
    size = (image_size, int(image_size * height / width))
  else:
    size = (int(image_size * width / height), image_size)
  img = img.resize(size, Image.Resampling.BILINEAR)
  left = int(round((size[0] - image_size) / 2))
  top = int(round((size[1] - image_size) / 2))
  array = np.asarray(img.crop((left, top, left + image_size, top + image_size)), np.uint8)
  return array[..., None] if array.ndim == 2 else array


CACHE_CHOICES = ("auto", "memory", "none")
# data.cache=auto holds decoded images in memory up to this much, or a quarter of the machine's.
MAX_MEMORY_BUDGET = 4 * 2**30


def memory_budget() -> int:
  """The bytes of decoded images data.cache=auto holds in memory: MAX_MEMORY_BUDGET, or a quarter
  of the physical memory where that is less."""
  try:
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (AttributeError, ValueError, OSError):  # Not a POSIX system: the fixed budget.
    return MAX_MEMORY_BUDGET
  return min(MAX_MEMORY_BUDGET, physical // 4)


class RecordImages:
  """One split of images and labels whose images stay in the records until a batch needs them.

  A `jaxdl.data.pipeline.Rows`: take(rows) reads and decodes the records at `rows` and returns
  what `pipeline.Split.take` returns for the same images, {"image": float32 [B, H, W, C] in
  [0, 1], "label": int32 [B]}. The labels are read once, at construction.
  """

  def __init__(
    self,
    source: RecordSource,
    *,
    image_field: str,
    label: np.ndarray,
    image_shape: tuple[int, int, int],
    image_size: int = 0,
    name: str = "train",
  ):
    self.source, self.image_field, self.label = source, image_field, label
    self.image_shape, self.image_size, self.name = tuple(image_shape), image_size, name
    self._index = np.arange(len(source))
    self._decoded: np.ndarray | None = None  # Every image, once `hold_in_memory` decoded them.

  def __len__(self) -> int:
    return len(self._index)

  @property
  def nbytes(self) -> int:
    """The bytes every image of the split takes decoded (uint8)."""
    return len(self) * int(np.prod(self.image_shape))

  def hold_in_memory(self, chunk: int = 1024) -> None:
    """Decodes every image once and keeps them, so that batches are gathered from memory (as
    `pipeline.Split`'s are) instead of read and decoded from the records each time."""
    decoded = np.empty((len(self), *self.image_shape), np.uint8)
    for start in range(0, len(self), chunk):
      decoded[start : start + chunk] = self.images(slice(start, start + chunk))
    self._decoded = decoded

  def images(self, rows) -> np.ndarray:
    """uint8 [B, H, W, C]: the decoded images at `rows` (a slice or an index array)."""
    if self._decoded is not None:
      return self._decoded[rows]
    indices = self._index[rows]
    image = np.empty((len(indices), *self.image_shape), np.uint8)
    for k, (index, record) in enumerate(zip(indices, read_records(self.source, indices))):
      image[k] = self.fit(decode_image(field_of(record, self.image_field), self.image_field), index)
    return image

  def take(self, rows) -> dict[str, np.ndarray]:
    """The batch of `rows` (a slice or an index array), as `pipeline.Split.take` gives it."""
    split = pipeline.Split(image=self.images(rows), label=self.label[self._index[rows]])
    return split.take(slice(None))

  def fit(self, image_HWC: np.ndarray, index: int) -> np.ndarray:
    """The decoded image of record `index` in the dataset's shape, or a DataError."""
    if self.image_size:
      image_HWC = resize_centre_crop(image_HWC, self.image_size)
    channels = self.image_shape[-1]
    if image_HWC.shape[-1] == 1 and channels == 3:  # A grayscale image in a colour dataset.
      image_HWC = np.repeat(image_HWC, 3, axis=-1)
    if image_HWC.shape != self.image_shape:
      fix = (
        "set data.image_size=S to resize every image's shorter side to S and crop its centre"
        if not self.image_size
        else "store images with the same number of channels"
      )
      raise DataError(
        f"Image {index} of the {self.name} split has shape {image_HWC.shape}, but the dataset's "
        f"images are {self.image_shape} (the first training image's); images must share a "
        f"shape: {fix}."
      )
    return image_HWC

  def __repr__(self) -> str:
    return f"RecordImages({self.name}, {len(self)} images of {self.image_shape})"


class _DecodedView:
  """The training images as `image_folder.channel_stats` reads them, a chunk of rows at a time,
  decoded when sliced, so the statistics need not hold every image at once."""

  def __init__(self, rows: RecordImages):
    self._rows = rows
    self.shape = (len(rows), *rows.image_shape)
    self.size = int(np.prod(self.shape))

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, rows) -> np.ndarray:
    return self._rows.images(rows)


@dataclasses.dataclass(frozen=True)
class RecordImageDataset(pipeline.InMemoryBatches):
  """A `jaxdl.data.base.Dataset` of images and labels read from records (task "classify").

  Batches are those of a `pipeline.LoadedData` holding the same images: the same pipelines
  (pipeline.train_batches / eval_batches) over `RecordImages` splits.

  Attributes:
    train, test: the splits.
    num_classes: labels lie in [0, num_classes).
    source: JSON provenance with "kind", "num_train", "num_test".
    augment: as LoadedData's (jaxdl.data.augment.ImageAugment), or None.
  """

  train: RecordImages
  test: RecordImages
  num_classes: int
  source: dict
  augment: pipeline.Augment | None = None

  task: ClassVar[str] = "classify"
  input_key: ClassVar[str] = "image"
  tokenizer: ClassVar[Any] = None

  @property
  def model_hints(self) -> dict[str, Any]:
    return {"num_classes": self.num_classes}


def image_dataset(
  train: RecordSource,
  test: RecordSource,
  *,
  image_field: str,
  label_field: str,
  num_classes: int = 0,
  image_size: int = 0,
  augment: str = "none",
  normalize: bool = False,
  crop_padding: int = 4,
  padding_mode: str = "zero",
  cache: str = "auto",
  source: dict[str, Any],
) -> RecordImageDataset:
  """Images and labels from the `image_field` and `label_field` of two record sources.

  Args:
    num_classes: labels lie in [0, num_classes); 0: the largest label of either split + 1.
    image_size: 0 keeps the images as stored (they must share a shape); S > 0 resizes each
      image's shorter side to S and takes the centre S x S.
    augment, normalize, crop_padding, padding_mode: see jaxdl.data.augment.from_options; the
      statistics are the per-channel mean and std of the training images.
    cache: "memory" decodes every image once, at load, and gathers batches from memory; "none"
      reads and decodes each batch's images from the records; "auto" holds them in memory when
      both splits take at most `memory_budget()` bytes decoded. The batches are the same.
    source: provenance; "num_train", "num_test", "image_shape", "fields" and "in_memory" are
      added.

  Raises:
    DataError: a bad option, a missing field, labels that are not class ids in range, or a first
      test image whose shape differs from the first training image's.
  """
  image_size = pipeline.check_int_option("image_size", image_size, minimum=0)
  num_classes = pipeline.check_int_option("num_classes", num_classes, minimum=0)
  pipeline.check_choice_option("cache", cache, CACHE_CHOICES)
  if not len(train) or not len(test):
    raise DataError(
      f"The {'training' if not len(train) else 'evaluation'} split has no records "
      f"(source: {source}); both splits need some."
    )
  labels = {
    name: read_labels(split, label_field, name)
    for name, split in (("train", train), ("test", test))
  }
  num_classes = check_labels(labels, num_classes, source)

  first = decode_image(field_of(read_records(train, [0])[0], image_field), image_field)
  if image_size:
    first = resize_centre_crop(first, image_size)
  splits = {
    name: RecordImages(
      split,
      image_field=image_field,
      label=labels[name],
      image_shape=first.shape,
      image_size=image_size,
      name=name,
    )
    for name, split in (("train", train), ("test", test))
  }
  splits["test"].images([0])  # A test set of another shape fails now, not at the first eval.
  in_memory = cache == "memory" or (
    cache == "auto" and sum(split.nbytes for split in splits.values()) <= memory_budget()
  )
  if in_memory:
    for split in splits.values():
      split.hold_in_memory()

  if isinstance(normalize, (bool, np.bool_)) and normalize:  # from_options checks the type.
    mean, std = image_folder.channel_stats(_DecodedView(splits["train"]))
  else:
    mean, std = (0.0,) * first.shape[-1], (1.0,) * first.shape[-1]
  transform = augment_lib.from_options(
    augment=augment,
    normalize=normalize,
    crop_padding=crop_padding,
    padding_mode=padding_mode,
    mean=mean,
    std=std,
  )
  source = {
    **source,
    "num_train": len(train),
    "num_test": len(test),
    "image_shape": list(first.shape),
    "fields": {"image": image_field, "label": label_field},
    "in_memory": in_memory,
  }
  return RecordImageDataset(
    train=splits["train"],
    test=splits["test"],
    num_classes=num_classes,
    source=source,
    augment=transform,
  )


def read_labels(source: RecordSource, field: str, split: str = "train") -> np.ndarray:
  """int32 [N]: the `field` of every record, checked to be integers."""
  values = read_field(source, field)
  try:
    labels = np.asarray(values)
  except ValueError:
    labels = np.asarray(values, object)
  if labels.ndim != 1 or labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(
      f"The {split} split's label field {field!r} holds {labels.dtype} values of shape "
      f"{labels.shape[1:]} (e.g. {labels[:3].tolist()!r}), not integer class ids; store labels "
      f"as integers 0 .. num_classes - 1, or name the label column with data.label_column."
    )
  return labels.astype(np.int32)


def check_labels(labels: dict[str, np.ndarray], num_classes: int, source: dict) -> int:
  """num_classes (0: the largest label + 1), after checking every label lies in range."""
  largest = max(int(label.max()) for label in labels.values() if len(label))
  if not num_classes:
    num_classes = largest + 1
  for name, label in labels.items():
    if len(label) and not 0 <= label.min() <= label.max() < num_classes:
      unlabelled = (
        " (-1 marks unlabelled rows, as in some Hugging Face test splits: evaluate on a labelled "
        "split)"
        if label.min() == -1
        else ""
      )
      raise DataError(
        f"The {name} labels range over [{label.min()}, {label.max()}], outside [0, "
        f"{num_classes}) (source: {source}); set data.num_classes to the number of classes, "
        f"or store labels as 0 .. num_classes - 1{unlabelled}."
      )
  return num_classes
