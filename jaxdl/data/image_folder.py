"""An image-classification dataset from a folder of image files, one sub-folder per class.

    data_dir/train/<class>/*.png|jpg|jpeg
    data_dir/val/<class>/...      (or data_dir/test/<class>/...; val is used when both exist)

The classes are the sorted names of train's sub-folders, so label i is the i-th name (recorded in
`source["classes"]`); the evaluation split may lack classes but must not add any.

Two ways to serve the images, chosen by data.streaming:
- In memory (false): every image is decoded with Pillow, converted to RGB, its shorter side
  resized to `image_size` and its centre cropped to a square, and the whole set is held as uint8
  [N, S, S, 3]: N * S * S * 3 bytes, 150 KB an image at S = 224, so 10,000 images take 1.5 GB.
  Augmentation works on these small decoded images (data.augment=flip|crop|crop_flip|none) and
  normalisation uses their own per-channel statistics. Sets above `MAX_BYTES` are refused rather
  than running the machine out of memory.
- Streaming (true): only the file list is held; each image is decoded when a batch needs it, in
  Grain's worker threads (jaxdl.data.image_stream). That scales to ImageNet, allows the
  random-resized crops of the original photo that ImageNet training uses
  (data.augment=inception|flip|none), and normalises with ImageNet's statistics.
"auto", the default, streams only the folders too large for memory. data.augment defaults to
"flip" either way; ImageNet recipes set "inception" together with data.streaming=true.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import numpy as np

from jaxdl.data import augment as augment_lib
from jaxdl.data import image_stream
from jaxdl.data.pipeline import LoadedData, Split, check_int_option
from jaxdl.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")  # Matched case-insensitively; other files are skipped.
EVAL_SPLITS = ("val", "test")
MAX_BYTES = 8 * 2**30  # Largest decoded set held in memory (train and eval together).

# data.* options and their defaults. In memory, normalisation uses the training images' own
# per-channel mean and std; flipping suits photos (not text or digits, where augment="none").
# streaming: "auto" (stream when the decoded set exceeds MAX_BYTES), true or false.
OPTIONS = {
  "image_size": 224,
  "augment": "flip",
  "normalize": True,
  "crop_padding": 4,
  "padding_mode": "zero",
  "streaming": "auto",
}


def load_image_folder(
  data_dir: str = "",
  *,
  allow_download: bool | None = None,
  image_size: int = OPTIONS["image_size"],
  augment: str = OPTIONS["augment"],
  normalize: bool = OPTIONS["normalize"],
  crop_padding: int = OPTIONS["crop_padding"],
  padding_mode: str = OPTIONS["padding_mode"],
  streaming: bool | str = OPTIONS["streaming"],
  num_workers: int | None = None,
) -> LoadedData | image_stream.StreamingImageFolder:
  """Loads `data_dir/train` and `data_dir/val` (or `/test`) as images [N, S, S, 3] with S =
  `image_size`, and int32 labels indexing the sorted class folder names.

  Args:
    allow_download: unused; the images are the user's own.
    image_size: side S of the square images the model sees.
    augment, normalize, crop_padding, padding_mode: in memory, see
      jaxdl.data.augment.from_options; the statistics are the per-channel mean and std of the
      decoded training images. Streaming, see jaxdl.data.image_stream (crop_padding and
      padding_mode are unused).
    streaming: true: a `jaxdl.data.image_stream.StreamingImageFolder`, which decodes while
      training; false: a `LoadedData` decoded into memory now; "auto": streaming only when the
      decoded set would exceed `MAX_BYTES`.
    num_workers: threads decoding images, all at once in memory or evaluation images when
      streaming (Pillow releases the GIL); None: one per CPU.

  Raises:
    DataError: the folder layout is wrong, an image cannot be decoded, the options do not fit
      together, or the set is too large for memory and streaming is false.
  """
  del allow_download
  image_size = check_int_option("image_size", image_size, minimum=1)
  if not data_dir:
    raise DataError(
      "The image_folder dataset needs data.dir: a directory with train/<class>/ "
      "and val/<class>/ (or test/<class>/) sub-folders of .png/.jpg images."
    )
  root = Path(data_dir).expanduser()
  if not (root / "train").is_dir():
    problem = "does not exist" if not root.exists() else "has no train/ sub-folder"
    raise DataError(
      f"Image folder {str(root)!r} {problem}. data.dir must hold train/<class>/ "
      f"and val/<class>/ (or test/<class>/) sub-folders of images."
    )
  eval_name = next((name for name in EVAL_SPLITS if (root / name).is_dir()), None)
  if eval_name is None:
    raise DataError(
      f"Image folder {str(root)!r} has train/ but neither val/ nor test/; add an "
      f"evaluation split with the same class sub-folders."
    )

  classes = _class_names(root / "train")
  train_files = _list_images(root / "train", classes, require_every_class=True)
  eval_classes = _class_names(root / eval_name, allow_empty=True)
  unknown = sorted(set(eval_classes) - set(classes))
  if unknown:
    raise DataError(
      f"{str(root / eval_name)!r} has class folders {unknown} that train/ lacks; "
      f"the model can only predict the train classes {classes}. Remove them or "
      f"add training images for them."
    )
  eval_files = _list_images(root / eval_name, classes, require_every_class=False)
  if not eval_files:
    raise DataError(f"{str(root / eval_name)!r} holds no images ({', '.join(EXTENSIONS)}).")

  source = {
    "kind": "data_dir",
    "path": str(root.resolve()),
    "num_train": len(train_files),
    "num_test": len(eval_files),
    "eval_split": eval_name,
    "classes": classes,
    "image_size": image_size,
  }
  num_bytes = (len(train_files) + len(eval_files)) * image_size * image_size * 3
  if _streams(streaming, num_bytes):
    return image_stream.StreamingImageFolder(
      train=image_stream.FileSplit.from_pairs(train_files),
      test=image_stream.FileSplit.from_pairs(eval_files),
      num_classes=len(classes),
      image_size=image_size,
      source={**source, "streaming": True},
      augment=augment,
      normalize=normalize,
      num_workers=num_workers,
    )

  if augment == "inception":
    raise DataError(
      "data.augment='inception' crops a random part of each original image, which only the "
      "streaming pipeline keeps: set data.streaming=true, or use data.augment='flip', "
      "'crop_flip', 'crop' or 'none' on the images decoded into memory."
    )
  if num_bytes > MAX_BYTES:
    raise DataError(
      f"{len(train_files) + len(eval_files)} images at {image_size}x{image_size} need "
      f"{num_bytes / 2**30:.1f} GiB in memory, more than the {MAX_BYTES / 2**30:.0f} GiB the "
      f"image_folder dataset holds with data.streaming=false. Set data.streaming=true (or "
      f"'auto') to decode the images while training in a streaming pipeline, or use a smaller "
      f"data.image_size or fewer images."
    )

  workers = num_workers or os.cpu_count() or 1
  train = _decode_split(train_files, image_size, workers)
  test = _decode_split(eval_files, image_size, workers)
  mean, std = channel_stats(train.image)
  transform = augment_lib.from_options(
    augment=augment,
    normalize=normalize,
    crop_padding=crop_padding,
    padding_mode=padding_mode,
    mean=mean,
    std=std,
  )
  return LoadedData(
    train=train, test=test, num_classes=len(classes), source=source, augment=transform
  )


def _streams(streaming: bool | str, num_bytes: int) -> bool:
  """Whether data.streaming (true, false or "auto") picks the streaming pipeline."""
  if isinstance(streaming, (bool, np.bool_)):
    return bool(streaming)
  choice = streaming.lower() if isinstance(streaming, str) else None
  if choice == "auto":
    return num_bytes > MAX_BYTES
  if choice in ("true", "false"):  # A command-line override of "auto" arrives as a string.
    return choice == "true"
  raise DataError(f"data.streaming must be 'auto', true or false, got {streaming!r}.")


def channel_stats(image_NHWC: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of uint8 images scaled to [0, 1], float64 [C] each.

  Summed a chunk of images at a time, so the float64 copy is of one chunk, not the whole set. A
  channel that is constant gets std 1e-3 rather than 0, which normalisation would divide by.
  """
  total = np.zeros(image_NHWC.shape[-1])
  total_sq = np.zeros(image_NHWC.shape[-1])
  for start in range(0, len(image_NHWC), chunk):
    pixels = image_NHWC[start : start + chunk].reshape(-1, image_NHWC.shape[-1]).astype(np.float64)
    total += pixels.sum(axis=0)
    total_sq += np.square(pixels).sum(axis=0)
  count = max(1, image_NHWC.size // image_NHWC.shape[-1])
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0))
  return mean / 255, np.maximum(std / 255, 1e-3)


def _class_names(directory: Path, allow_empty: bool = False) -> list[str]:
  names = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not names and not allow_empty:
    raise DataError(
      f"{str(directory)!r} has no class sub-folders; put each class's images in "
      f"{str(directory)}/<class name>/."
    )
  return names


def _list_images(
  directory: Path, classes: list[str], require_every_class: bool
) -> list[tuple[str, int]]:
  """(file, label) of every image under directory/<class>/, sorted by class then file name."""
  files = []
  for label, name in enumerate(classes):
    class_dir = directory / name
    found = []
    if class_dir.is_dir():
      # os.scandir knows which entries are files without a stat each: ImageNet has 1.28M.
      with os.scandir(class_dir) as entries:
        found = sorted(
          entry.path
          for entry in entries
          if entry.name.lower().endswith(EXTENSIONS) and entry.is_file()
        )
    if not found and require_every_class:
      raise DataError(
        f"Class folder {str(class_dir)!r} holds no images "
        f"({', '.join(EXTENSIONS)}); every training class needs some. Add images "
        f"or remove the folder."
      )
    files.extend((path, label) for path in found)
  return files


def _decode_split(files: list[tuple[str, int]], image_size: int, workers: int) -> Split:
  image = np.empty((len(files), image_size, image_size, 3), np.uint8)

  def decode_into(i: int) -> None:
    image[i] = decode_image(files[i][0], image_size)

  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    for _ in pool.map(decode_into, range(len(files))):  # Consuming re-raises a worker's error.
      pass
  return Split(image=image, label=np.array([label for _, label in files], np.int32))


def decode_image(path: Path, image_size: int) -> np.ndarray:
  """One image file as uint8 [S, S, 3]: RGB, shorter side resized to S, centre square crop.

  Raises:
    DataError: Pillow cannot open or decode the file (naming it).
  """
  from PIL import Image  # Imported here: only this dataset needs Pillow.

  try:
    with Image.open(path) as img:
      # JPEGs can decode at 1/2, 1/4 or 1/8 scale directly, much faster for large photos.
      img.draft("RGB", (image_size, image_size))
      img = img.convert("RGB")
      width, height = img.size
      scale = image_size / min(width, height)
      size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
      img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
      left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
      img = img.crop((left, top, left + image_size, top + image_size))
      return np.asarray(img, dtype=np.uint8)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    # UnidentifiedImageError and truncated files are OSErrors.
    raise DataError(
      f"Cannot decode image {str(path)!r} ({type(e).__name__}: {e}). Replace or remove the file."
    ) from e
