"""CIFAR-10 and CIFAR-100 from their official binary archives.

Only the *binary* versions are read (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz), never the
Python ones: those are pickles, and unpickling a file can run arbitrary code. A binary file is a
sequence of records, each some label bytes followed by 3072 pixel bytes: the 1024 red values of a
32x32 image in row-major order, then the 1024 green, then the 1024 blue. CIFAR-10 records have one
label byte (10 classes) and come in data_batch_1.bin .. data_batch_5.bin (train) and
test_batch.bin; CIFAR-100 records have two, the coarse label (20 superclasses) then the fine one
(100 classes), in train.bin and test.bin. Each official file holds 10,000 records (train.bin
50,000); the reader accepts any whole number of records so that tests can write small files.

Sources, in order (see `load_cifar10`): `data_dir`; the cache; a download of the archive, checked
against its published MD5 and unpacked into the cache. A data_dir or cache may hold the .bin files
themselves, the extracted folder (cifar-10-batches-bin/), or the .tar.gz, which is then read in
memory without unpacking. There is no shipped subset: with no source, the error says where to put
the files.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import logging
import os
from pathlib import Path
import tarfile
import tempfile
import zlib

import numpy as np

from jaxdl.data import augment as augment_lib
from jaxdl.data import download
from jaxdl.data.pipeline import LoadedData, Split, check_choice_option
from jaxdl.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (32, 32, 3)
PIXEL_BYTES = 32 * 32 * 3

# MD5 of each archive's bytes, as published at https://www.cs.toronto.edu/~kriz/cifar.html. A
# module-level dict so tests can substitute digests for their own small archives.
MD5 = {
  "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
  "cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8",
}
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)

LABELS = ("fine", "coarse")  # data.label of CIFAR-100.

# data.* options and their defaults: the standard CIFAR recipe of zero-padding by 4 pixels,
# cropping back to 32x32 at a random offset and flipping half the images, then normalising
# with the training set's per-channel mean and std.
CIFAR10_OPTIONS = {
  "augment": "crop_flip",
  "normalize": True,
  "crop_padding": 4,
  "padding_mode": "zero",
}
CIFAR100_OPTIONS = {**CIFAR10_OPTIONS, "label": "fine"}


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where one CIFAR variant keeps its files and how its records look.

  Attributes:
    name: for messages, e.g. "CIFAR-10".
    cache_name: the cache's sub-folder.
    archive: the .tar.gz's file name; `folder` is the folder it unpacks to.
    python_names: the archive and folder of the pickled version, recognised only to say it is
      the wrong one.
    train_files, test_files: the .bin files of each split, in order.
    label_classes: for each label byte of a record, the number of classes it ranges over.
    label_names: a name for each label byte.
    records_per_file: the official number of records of each file, to warn about short copies.
  """

  name: str
  cache_name: str
  archive: str
  folder: str
  python_names: tuple[str, str]
  train_files: tuple[str, ...]
  test_files: tuple[str, ...]
  label_classes: tuple[int, ...]
  label_names: tuple[str, ...]
  records_per_file: dict[str, int]

  @property
  def files(self) -> tuple[str, ...]:
    return self.train_files + self.test_files

  @property
  def record_bytes(self) -> int:
    return len(self.label_classes) + PIXEL_BYTES


CIFAR10 = Layout(
  name="CIFAR-10",
  cache_name="cifar10",
  archive="cifar-10-binary.tar.gz",
  folder="cifar-10-batches-bin",
  python_names=("cifar-10-python.tar.gz", "cifar-10-batches-py"),
  train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
  test_files=("test_batch.bin",),
  label_classes=(10,),
  label_names=("label",),
  records_per_file={
    **{f"data_batch_{i}.bin": 10_000 for i in range(1, 6)},
    "test_batch.bin": 10_000,
  },
)
CIFAR100 = Layout(
  name="CIFAR-100",
  cache_name="cifar100",
  archive="cifar-100-binary.tar.gz",
  folder="cifar-100-binary",
  python_names=("cifar-100-python.tar.gz", "cifar-100-python"),
  train_files=("train.bin",),
  test_files=("test.bin",),
  label_classes=(20, 100),
  label_names=("coarse", "fine"),
  records_per_file={"train.bin": 50_000, "test.bin": 10_000},
)


def cache_dir(layout: Layout = CIFAR10) -> Path:
  """Where a downloaded CIFAR lives: $JAXDL_DATA_DIR/cifar10 (or cifar100), else under ~/.cache."""
  return download.cache_root() / layout.cache_name


def load_cifar10(
  data_dir: str = "",
  *,
  allow_download: bool | None = None,
  augment: str = CIFAR10_OPTIONS["augment"],
  normalize: bool = CIFAR10_OPTIONS["normalize"],
  crop_padding: int = CIFAR10_OPTIONS["crop_padding"],
  padding_mode: str = CIFAR10_OPTIONS["padding_mode"],
  mirrors: Sequence[str] | None = None,
) -> LoadedData:
  """Loads CIFAR-10: uint8 images [N, 32, 32, 3], int32 labels in [0, 10); 50,000 / 10,000.

  1. `data_dir`, if given: it must hold the data (the six .bin files, the cifar-10-batches-bin
     folder, or cifar-10-binary.tar.gz; or be the .tar.gz itself), or this raises.
  2. The cache (`cache_dir(CIFAR10)`), in any of those forms.
  3. A download of cifar-10-binary.tar.gz from `mirrors` (default `MIRRORS`), MD5-checked and
     unpacked into the cache, if allowed: `allow_download=None` allows it unless the environment
     sets JAXDL_OFFLINE=1.

  Args:
    augment, normalize, crop_padding, padding_mode: see jaxdl.data.augment.from_options; the
      statistics are augment.CIFAR10_MEAN / CIFAR10_STD.

  Raises:
    DataError: no source has the data, the download failed, or a file is damaged.
  """
  transform = augment_lib.from_options(
    augment=augment,
    normalize=normalize,
    crop_padding=crop_padding,
    padding_mode=padding_mode,
    mean=augment_lib.CIFAR10_MEAN,
    std=augment_lib.CIFAR10_STD,
  )
  return _load(CIFAR10, data_dir, allow_download, mirrors, label_index=0, augment=transform)


def load_cifar100(
  data_dir: str = "",
  *,
  allow_download: bool | None = None,
  label: str = CIFAR100_OPTIONS["label"],
  augment: str = CIFAR100_OPTIONS["augment"],
  normalize: bool = CIFAR100_OPTIONS["normalize"],
  crop_padding: int = CIFAR100_OPTIONS["crop_padding"],
  padding_mode: str = CIFAR100_OPTIONS["padding_mode"],
  mirrors: Sequence[str] | None = None,
) -> LoadedData:
  """Loads CIFAR-100: uint8 images [N, 32, 32, 3] and int32 labels; 50,000 / 10,000.

  Sources as in `load_cifar10`, with train.bin and test.bin (folder cifar-100-binary, archive
  cifar-100-binary.tar.gz).

  Args:
    label: "fine" (100 classes) or "coarse" (the 20 superclasses).
    augment, normalize, crop_padding, padding_mode: see jaxdl.data.augment.from_options; the
      statistics are augment.CIFAR100_MEAN / CIFAR100_STD.
  """
  check_choice_option("label", label, LABELS)
  transform = augment_lib.from_options(
    augment=augment,
    normalize=normalize,
    crop_padding=crop_padding,
    padding_mode=padding_mode,
    mean=augment_lib.CIFAR100_MEAN,
    std=augment_lib.CIFAR100_STD,
  )
  return _load(
    CIFAR100,
    data_dir,
    allow_download,
    mirrors,
    label_index=CIFAR100.label_names.index(label),
    augment=transform,
  )


def parse_records(
  content: bytes, *, name: str, label_classes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
  """Decodes the bytes of one CIFAR binary file; `name` is only used in error messages.

  Returns:
    image: uint8 [N, 32, 32, 3].
    labels: uint8 [N, len(label_classes)], column i checked to lie in [0, label_classes[i]).

  Raises:
    DataError: the size is not a positive whole number of records, or a label is out of range.
  """
  record_bytes = len(label_classes) + PIXEL_BYTES
  if not content or len(content) % record_bytes:
    whole, extra = divmod(len(content), record_bytes)
    problem = (
      "is empty"
      if not content
      else (f"is {len(content)} bytes long: {whole} whole records and {extra} bytes more")
    )
    raise DataError(
      f"CIFAR file {name!r} {problem}, but it should be a whole number of {record_bytes}-byte "
      f"records ({len(label_classes)} label byte(s) and {PIXEL_BYTES} pixel bytes each). The "
      f"file is truncated or damaged, or belongs to another CIFAR version; fetch it again."
    )
  records = np.frombuffer(content, np.uint8).reshape(-1, record_bytes)
  labels = records[:, : len(label_classes)]
  for column, num_classes in enumerate(label_classes):
    bad = np.flatnonzero(labels[:, column] >= num_classes)
    if len(bad):
      raise DataError(
        f"CIFAR file {name!r} has label {labels[bad[0], column]} in record {bad[0]} (label byte "
        f"{column}), outside [0, {num_classes}); {len(bad)} records are out of range. It is "
        f"damaged or belongs to another CIFAR version (CIFAR-10 has 1 label byte, CIFAR-100 "
        f"has 2); fetch it again."
      )
  # Planes R, G, B of 32x32 each -> [N, 32, 32, 3]; the copy makes the array contiguous.
  image = np.ascontiguousarray(
    records[:, len(label_classes) :].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  )
  return image, labels.copy()


def write_records(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> None:
  """Writes images uint8 [N, 32, 32, 3] and labels uint8 [N, L] as a CIFAR binary file.

  The inverse of `parse_records`; used by tests and to make small CIFAR-shaped data sets.
  """
  image, labels = np.asarray(image, np.uint8), np.asarray(labels, np.uint8)
  if image.shape[1:] != IMAGE_SHAPE or labels.ndim != 2 or len(labels) != len(image):
    raise DataError(
      f"write_records needs images [N, 32, 32, 3] and labels [N, L], got "
      f"{image.shape} and {labels.shape}."
    )
  planes = image.transpose(0, 3, 1, 2).reshape(len(image), PIXEL_BYTES)
  Path(path).write_bytes(np.concatenate([labels, planes], axis=1).tobytes())


# Finding and reading the files.


def _load(
  layout: Layout,
  data_dir: str,
  allow_download: bool | None,
  mirrors: Sequence[str] | None,
  *,
  label_index: int,
  augment,
) -> LoadedData:
  if data_dir:
    path = Path(data_dir).expanduser()
    found = _locate(path, layout)
    if isinstance(found, str):
      raise DataError(
        f"{layout.name} data directory {str(path)!r} {found}. Fix data.dir so it points at a "
        f"directory holding {layout.folder}/ (from {layout.archive}), its .bin files, or "
        f"{layout.archive} itself; or leave it empty to use the cache at "
        f"{str(cache_dir(layout))!r}."
      )
    return _read(
      layout, found, {"kind": "data_dir", "path": str(path.resolve())}, label_index, augment
    )

  cache = cache_dir(layout)
  found = _locate(cache, layout)
  if not isinstance(found, str):
    return _read(
      layout, found, {"kind": "cache", "path": str(cache.resolve())}, label_index, augment
    )

  base = MIRRORS if mirrors is None else mirrors
  how_to_get = (
    f"Download {layout.archive} (the binary version, not the Python one) from {MIRRORS[0]} and "
    f"put it, or the {layout.folder} folder it unpacks to, in {str(cache)!r}; or set data.dir "
    f"to where it is."
  )
  refusal = download.download_refusal(allow_download)
  if refusal:
    raise DataError(
      f"{layout.name} not found: the cache {str(cache)!r} {found}, and {refusal}. "
      f"{how_to_get} Or allow downloads (data.download=true and JAXDL_OFFLINE "
      f"unset)."
    )
  archive = cache / layout.archive
  try:
    url = download.download_verified(
      [m.rstrip("/") + "/" + layout.archive for m in base], archive, md5=MD5[layout.archive]
    )
  except DataError as e:
    raise DataError(f"Downloading {layout.name} failed. {how_to_get}\n{e}") from e
  _unpack(archive, layout, cache / layout.folder)
  archive.unlink()  # The .bin files hold everything; keep one copy in the cache, not two.
  return _read(
    layout,
    {name: cache / layout.folder / name for name in layout.files},
    {"kind": "download", "path": str(cache.resolve()), "url": url},
    label_index,
    augment,
  )


def _locate(path: Path, layout: Layout) -> dict[str, Path] | Path | str:
  """Where `path` keeps the data: {file name: .bin path}, the archive's path, or (a str) what is
  wrong with it, phrased to follow the path's name in a message."""
  if path.is_file():
    if path.name == layout.archive:
      return path
    return f"is a file, not {layout.archive} or a directory"
  if not path.is_dir():
    return "does not exist"
  partial = None
  for directory in (path / layout.folder, path):
    have = [name for name in layout.files if (directory / name).is_file()]
    if len(have) == len(layout.files):
      return {name: directory / name for name in layout.files}
    if have and partial is None:
      missing = [name for name in layout.files if name not in have]
      partial = f"has {directory.name}/ with only some .bin files: it lacks {', '.join(missing)}"
  if (path / layout.archive).is_file():
    return path / layout.archive
  if partial:
    return partial
  python = [name for name in layout.python_names if (path / name).exists()]
  if python:
    return (
      f"holds {python[0]}, the Python (pickle) version of {layout.name}, which jaxdl does "
      f"not read because unpickling a file can run code; it needs {layout.archive}, the "
      f"binary version"
    )
  return f"has neither {layout.folder}/, its .bin files, nor {layout.archive}"


def _read(
  layout: Layout, found: dict[str, Path] | Path, source: dict, label_index: int, augment
) -> LoadedData:
  """Parses every file of `layout` from .bin files or the archive into a LoadedData."""
  if isinstance(found, Path):  # The archive: read in memory, not unpacked.
    contents = _archive_members(found, layout)
    names = {name: f"{found}:{layout.folder}/{name}" for name in layout.files}
  else:
    contents, names = {}, {}
    for name, path in found.items():
      names[name] = str(path)
      try:
        contents[name] = path.read_bytes()
      except OSError as e:
        raise DataError(f"Cannot read CIFAR file {str(path)!r}: {e}.") from e

  splits = {}
  for split, files in (("train", layout.train_files), ("test", layout.test_files)):
    images, labels = [], []
    for name in files:
      image, label = parse_records(
        contents.pop(name), name=names[name], label_classes=layout.label_classes
      )
      if len(image) != layout.records_per_file[name]:
        logger.warning(
          "%s holds %d records; the official file has %d.",
          names[name],
          len(image),
          layout.records_per_file[name],
        )
      images.append(image)
      labels.append(label[:, label_index])
    splits[split] = Split(image=np.concatenate(images), label=np.concatenate(labels))
  source = {**source, "num_train": len(splits["train"]), "num_test": len(splits["test"])}
  return LoadedData(
    train=splits["train"],
    test=splits["test"],
    num_classes=layout.label_classes[label_index],
    source=source,
    augment=augment,
  )


def _archive_members(archive: Path, layout: Layout) -> dict[str, bytes]:
  """The bytes of each .bin file of `layout` inside the .tar.gz `archive`.

  Members are read in archive order: a gzip stream cannot seek backwards cheaply, so asking for
  them by name (tar.getmember) would decompress the archive once per file.
  """
  wanted = {f"{layout.folder}/{name}": name for name in layout.files}
  contents = {}
  try:
    with tarfile.open(archive, "r:gz") as tar:
      for member in tar:
        name = wanted.get(member.name)
        if name is None:
          continue
        if not member.isfile():  # A link could point anywhere; the official archive has none.
          raise DataError(
            f"{str(archive)!r} holds {member.name} as a link or special file, "
            f"not a regular file. It is not the official {layout.archive}; "
            f"download it again."
          )
        contents[name] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise DataError(
      f"Cannot read the archive {str(archive)!r} ({e}); it is damaged or not a "
      f".tar.gz. Delete it and download it again."
    ) from e
  missing = [name for name in layout.files if name not in contents]
  if missing:
    raise DataError(
      f"The archive {str(archive)!r} lacks {', '.join(missing)} (expected under "
      f"{layout.folder}/). It is not the official {layout.archive}; download it "
      f"again."
    )
  return contents


def _unpack(archive: Path, layout: Layout, folder: Path) -> None:
  """Writes the archive's .bin files into `folder`, each atomically.

  Only the known file names are written, under names chosen here rather than taken from the
  archive, so no member name (`../x`, an absolute path, a link) can place a file outside the
  cache; this is stricter than tarfile's "data" extraction filter.
  """
  contents = _archive_members(archive, layout)
  try:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
      fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
      try:
        with os.fdopen(fd, "wb") as tmp:
          tmp.write(content)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, folder / name)
      finally:
        if os.path.exists(tmp_name):
          os.remove(tmp_name)
  except OSError as e:
    raise DataError(
      f"Cannot unpack {str(archive)!r} into {str(folder)!r}: {e}. Point the cache "
      f"somewhere writable (the JAXDL_DATA_DIR environment variable)."
    ) from e
