"""Finding Fashion-MNIST: a directory the user named, the system's copy, the cache, or a download.

Fashion-MNIST (Zalando's 28x28 grayscale photos of clothes, 10 classes, 60,000 training and 10,000
test images) ships in the same four IDX files as MNIST, under the same names, so it is read by the
MNIST machinery (jaxdl.data.mnist). The sources are tried in order (see `load_fashion_mnist`);
Debian's `dataset-fashion-mnist` package installs the files under /usr/share/datasets, which makes
the full set available without network access. There is no shipped subset: without any source the
loader says where to get the files.

Class names, by label: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag,
Ankle boot (`CLASS_NAMES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jaxdl.data import augment as augment_lib
from jaxdl.data import download, mnist
from jaxdl.data.pipeline import LoadedData
from jaxdl.errors import DataError

CLASS_NAMES = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)
FILES = mnist.FILES  # The same four names: train-images-idx3-ubyte(.gz), ...

# Where Debian's dataset-fashion-mnist package puts the .gz files; tests point it elsewhere.
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

# MD5 of each .gz file as Zalando serves it, from the Fashion-MNIST README (the only checksums
# published). Other copies are compressed differently (Debian's among them), so only the official
# URL below is used for downloads.
MD5 = {
  "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
  "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
  "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
  "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

# data.* options and their defaults: plain [0, 1] images, like MNIST. Cropping with padding 4 and
# flipping are the usual augmentations if wanted (clothes are left-right symmetric; digits are not).
OPTIONS = {"augment": "none", "normalize": False, "crop_padding": 4, "padding_mode": "zero"}


def cache_dir() -> Path:
  """Where downloaded Fashion-MNIST lives: $JAXDL_DATA_DIR/fashion_mnist, else under ~/.cache."""
  return download.cache_root() / "fashion_mnist"


def load_fashion_mnist(
  data_dir: str = "",
  *,
  allow_download: bool | None = None,
  augment: str = OPTIONS["augment"],
  normalize: bool = OPTIONS["normalize"],
  crop_padding: int = OPTIONS["crop_padding"],
  padding_mode: str = OPTIONS["padding_mode"],
  mirrors: Sequence[str] | None = None,
) -> LoadedData:
  """Loads Fashion-MNIST as uint8 images [N, 28, 28, 1] and int32 labels in [0, 10).

  1. `data_dir`, if given: the four files (raw or .gz) must be there, or this raises.
  2. `SYSTEM_DIR`, where `apt-get install dataset-fashion-mnist` puts them (source kind "system").
  3. The cache (`cache_dir()`), if it holds all four files.
  4. A download of the missing files into the cache from `mirrors` (default `MIRRORS`), if
     allowed; `allow_download=None` allows it unless the environment sets JAXDL_OFFLINE=1.

  Args:
    augment, normalize, crop_padding, padding_mode: see jaxdl.data.augment.from_options; the
      normalisation statistics are `augment.FASHION_MNIST_MEAN` / `FASHION_MNIST_STD`.

  Raises:
    DataError: no source has the files, a download failed, or a file found is damaged.
  """
  transform = augment_lib.from_options(
    augment=augment,
    normalize=normalize,
    crop_padding=crop_padding,
    padding_mode=padding_mode,
    mean=augment_lib.FASHION_MNIST_MEAN,
    std=augment_lib.FASHION_MNIST_STD,
  )

  def load(found, source):
    return mnist.load_files(found, source, dataset="Fashion-MNIST", augment=transform)

  if data_dir:
    directory = Path(data_dir).expanduser()
    found, missing = mnist.find_files(directory)
    if missing:
      if directory.is_dir():
        problem = f"lacks {', '.join(missing)} (each may be raw, or gzip-compressed with .gz)"
      else:
        problem = "is not a directory" if directory.exists() else "does not exist"
      raise DataError(
        f"Fashion-MNIST data directory {str(directory)!r} {problem}. Fix data.dir so it points "
        f"at a directory with the four files {', '.join(FILES.values())}, or leave it empty to "
        f"use {str(SYSTEM_DIR)!r} or the cache at {str(cache_dir())!r}."
      )
    return load(found, {"kind": "data_dir", "path": str(directory.resolve())})

  found, missing = mnist.find_files(SYSTEM_DIR)
  if not missing:
    return load(found, {"kind": "system", "path": str(SYSTEM_DIR)})

  cache = cache_dir()
  found, missing = mnist.find_files(cache)
  if not missing:
    return load(found, {"kind": "cache", "path": str(cache.resolve())})

  how_to_get = (
    f"Install Debian's dataset-fashion-mnist package (it puts the files in "
    f"{str(SYSTEM_DIR)!r}), put the four .gz files from {MIRRORS[0]} into {str(cache)!r}, or "
    f"set data.dir to a directory holding them."
  )
  refusal = download.download_refusal(allow_download)
  if refusal:
    raise DataError(
      f"Fashion-MNIST is not installed in {str(SYSTEM_DIR)!r} nor cached in "
      f"{str(cache)!r}, and {refusal}. {how_to_get} Or allow downloads "
      f"(data.download=true and JAXDL_OFFLINE unset)."
    )
  try:
    used = mnist.download_files(missing, cache, MIRRORS if mirrors is None else mirrors, md5=MD5)
  except DataError as e:
    raise DataError(f"Downloading Fashion-MNIST failed. {how_to_get}\n{e}") from e
  found, _ = mnist.find_files(cache)
  return load(found, {"kind": "download", "path": str(cache.resolve()), "url": ", ".join(used)})
