"""Finding MNIST: a directory the user named, the local cache, a download, or the shipped subset.

The sources are tried in that order (see `load_mnist`). A directory the user named is never
second-guessed: if files are missing there, that is an error, not a reason to quietly train on
other data. The shipped subset is the last resort so that examples and tests work offline; it is
announced with a warning because accuracy on it is lower than on the full set.

Fashion-MNIST ships in the same four IDX files; jaxdl.data.fashion_mnist reuses `find_files`,
`load_files` and `download_files` from here.
"""

from __future__ import annotations

from collections.abc import Sequence
import importlib.resources
import logging
from pathlib import Path

import numpy as np

from jaxdl.data import download
from jaxdl.data.idx import parse_idx, read_idx
from jaxdl.data.pipeline import LoadedData, Split
from jaxdl.errors import DataError

logger = logging.getLogger(__name__)

NUM_CLASSES = 10
NUM_TRAIN_FULL = 60_000
NUM_TEST_FULL = 10_000

# Canonical (uncompressed) file names, keyed by role.
FILES = {
  "train_image": "train-images-idx3-ubyte",
  "train_label": "train-labels-idx1-ubyte",
  "test_image": "t10k-images-idx3-ubyte",
  "test_label": "t10k-labels-idx1-ubyte",
}

# SHA-256 of each file's uncompressed content, from the known-good full set. Checked on download
# only; mirrors compress differently, so the .gz bytes have no fixed digest. A module-level dict so
# tests can substitute digests for their own small files.
SHA256 = {
  "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
  "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
  "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
  "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# Tried in order; each serves "<name>.gz". The checksum makes the plain-HTTP one safe to use.
MIRRORS = (
  "https://storage.googleapis.com/cvdf-datasets/mnist/",
  "https://ossci-datasets.s3.amazonaws.com/mnist/",
  "http://yann.lecun.com/exdb/mnist/",
)

SUBSET_PACKAGE_DIR = "mnist_subset"


def cache_dir() -> Path:
  """Where downloaded MNIST lives: $JAXDL_DATA_DIR/mnist, else ~/.cache/jaxdl/mnist."""
  return download.cache_root() / "mnist"


def load_mnist(
  data_dir: str = "",
  *,
  allow_download: bool | None = None,
  mirrors: Sequence[str] | None = None,
) -> LoadedData:
  """Loads MNIST as uint8 images [N, 28, 28, 1] and int32 labels, from the first source that works.

  1. `data_dir`, if given: the four files (raw or .gz) must be there, or this raises.
  2. The cache (`cache_dir()`), if it holds all four files.
  3. A download of the missing files into the cache from `mirrors` (default `MIRRORS`), if
     allowed; `allow_download=None` allows it unless the environment sets JAXDL_OFFLINE=1.
  4. The 10,000/2,000-example subset shipped with jaxdl, with a warning, when downloads are not
     allowed or every mirror failed.

  The returned `source` records which one was used.

  Raises:
    DataError: `data_dir` lacks a file, or a file that was found is damaged or inconsistent.
  """
  if data_dir:
    directory = Path(data_dir).expanduser()
    found, missing = find_files(directory)
    if missing:
      if directory.is_dir():
        problem = f"lacks {', '.join(missing)} (each may be raw, or gzip-compressed with .gz)"
      else:
        problem = "is not a directory" if directory.exists() else "does not exist"
      raise DataError(
        f"MNIST data directory {str(directory)!r} {problem}. Fix data.dir so it points at a "
        f"directory with the four MNIST files {', '.join(FILES.values())}, or leave it empty "
        f"to use the cache at {str(cache_dir())!r} (downloading into it when needed)."
      )
    return load_files(found, {"kind": "data_dir", "path": str(directory.resolve())})

  cache = cache_dir()
  found, missing = find_files(cache)
  if not missing:
    return load_files(found, {"kind": "cache", "path": str(cache.resolve())})

  refusal = download.download_refusal(allow_download)
  if refusal:
    has = "has no MNIST files" if len(missing) == len(FILES) else f"lacks {', '.join(missing)}"
    return _load_shipped_subset(reason=f"the cache {str(cache)!r} {has} and {refusal}")
  try:
    used_mirrors = download_files(
      missing, cache, MIRRORS if mirrors is None else mirrors, sha256=SHA256
    )
  except DataError as e:
    return _load_shipped_subset(reason=f"downloading MNIST failed: {e}")
  found, _ = find_files(cache)
  return load_files(
    found, {"kind": "download", "path": str(cache.resolve()), "url": ", ".join(used_mirrors)}
  )


def find_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
  """Maps each role to its file in `directory` (raw preferred over .gz); lists missing names."""
  found, missing = {}, []
  for role, name in FILES.items():
    for candidate in (directory / name, directory / f"{name}.gz"):
      if candidate.is_file():
        found[role] = candidate
        break
    else:
      missing.append(name)
  return found, missing


def download_files(
  names: Sequence[str],
  cache: Path,
  mirrors: Sequence[str],
  *,
  sha256: dict[str, str] | None = None,
  md5: dict[str, str] | None = None,
) -> list[str]:
  """Downloads "<name>.gz" for each name into `cache`, checked against `sha256[name]` (of the
  content) and/or `md5[name]` (of the .gz); returns the distinct mirror bases used, in order.
  """
  used = []
  for name in names:
    urls = [mirror.rstrip("/") + f"/{name}.gz" for mirror in mirrors]
    url = download.download_verified(
      urls,
      cache / f"{name}.gz",
      None if sha256 is None else sha256[name],
      md5=None if md5 is None else md5[name],
    )
    base = url[: -len(f"{name}.gz")]
    if base not in used:
      used.append(base)
  return used


def load_files(
  paths: dict[str, Path], source: dict, *, dataset: str = "MNIST", augment=None
) -> LoadedData:
  """Reads the four IDX files `paths` (role -> path, as from `find_files`) into a LoadedData.

  Args:
    source: provenance without the counts, which are added.
    dataset: the dataset's name for error messages ("MNIST", "Fashion-MNIST").
    augment: passed on to LoadedData.
  """
  arrays = {role: read_idx(path) for role, path in paths.items()}
  return _assemble(
    arrays,
    {role: str(path) for role, path in paths.items()},
    source,
    dataset=dataset,
    augment=augment,
  )


def _load_shipped_subset(reason: str) -> LoadedData:
  subset = importlib.resources.files(__package__).joinpath(SUBSET_PACKAGE_DIR)
  arrays, names = {}, {}
  for role, name in FILES.items():
    resource = subset.joinpath(f"{name}.gz")
    names[role] = str(resource)
    try:
      content = resource.read_bytes()
    except OSError as e:
      raise DataError(
        f"The MNIST subset shipped with jaxdl is missing {str(resource)!r} ({e}), and no other "
        f"source was available: {reason}. Reinstall jaxdl, or provide the full set through "
        f"data.dir or the cache at {str(cache_dir())!r}."
      ) from e
    arrays[role] = parse_idx(content, name=str(resource))
  data = _assemble(arrays, names, {"kind": "shipped_subset", "path": str(subset)})
  logger.warning(
    "USING A SUBSET OF MNIST: %d of %d training and %d of %d test examples, shipped with jaxdl, "
    "because %s. Accuracy will be lower than on full MNIST. To use the full set, set data.dir "
    "to a directory holding the four MNIST files, put them in %s, or allow downloads "
    "(data.download=true and JAXDL_OFFLINE unset).",
    len(data.train),
    NUM_TRAIN_FULL,
    len(data.test),
    NUM_TEST_FULL,
    reason,
    cache_dir(),
  )
  return data


def _assemble(
  arrays: dict[str, np.ndarray],
  names: dict[str, str],
  source: dict,
  *,
  dataset: str = "MNIST",
  augment=None,
) -> LoadedData:
  """Checks the four arrays against each other and builds the splits (adding a channel axis)."""
  splits = {}
  for split in ("train", "test"):
    image, label = arrays[f"{split}_image"], arrays[f"{split}_label"]
    image_file, label_file = names[f"{split}_image"], names[f"{split}_label"]
    if image.ndim != 3 or image.dtype != np.uint8:
      raise DataError(
        f"{image_file!r} should hold uint8 images [N, 28, 28], but holds {image.dtype} with "
        f"shape {image.shape}. It is not an image file of {dataset}; check which file is "
        f"where."
      )
    if label.ndim != 1 or label.dtype != np.uint8:
      raise DataError(
        f"{label_file!r} should hold uint8 labels [N], but holds {label.dtype} with shape "
        f"{label.shape}. It is not a label file of {dataset}; check which file is where."
      )
    if len(image) != len(label):
      raise DataError(
        f"{image_file!r} holds {len(image)} images but {label_file!r} holds {len(label)} "
        f"labels. The two files come from different versions or splits; replace them with a "
        f"matching pair."
      )
    splits[split] = Split(image=image[..., None], label=label.astype(np.int32))
  source = {**source, "num_train": len(splits["train"]), "num_test": len(splits["test"])}
  return LoadedData(
    train=splits["train"],
    test=splits["test"],
    num_classes=NUM_CLASSES,
    source=source,
    augment=augment,
  )
