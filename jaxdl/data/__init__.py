"""jaxdl's data layer: loading datasets (into memory, or streaming image folders from disk) and
batching them with Grain.

Datasets are found by name in `DATASETS`: each entry is a loader and the options it takes. A loader
takes `(data_dir: str = "", *, allow_download: bool | None = None, **options)` and returns an object
implementing `jaxdl.data.base.Dataset`. In a config, the options are keys of the `data` section
(`data.block_size = 256`); `complete_config` adds the ones an experiment leaves out, with their
defaults, so `config.json` records every value a run used. Adding a dataset means adding one entry.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import difflib
from typing import Any

from jaxdl.data import (
  arrayrecord,
  cifar,
  fashion_mnist,
  hf,
  image_folder,
  parquet,
  reviews,
  synthetic,
  text,
)
from jaxdl.data.base import Dataset
from jaxdl.data.mnist import load_mnist
from jaxdl.data.pipeline import LoadedData, Split, eval_batches, steps_per_epoch, train_batches
from jaxdl.errors import ConfigError, DataError

__all__ = [
  "DATASETS",
  "Dataset",
  "DatasetSpec",
  "LoadedData",
  "Split",
  "complete_config",
  "dataset_options",
  "eval_batches",
  "load_dataset",
  "load_from_config",
  "steps_per_epoch",
  "train_batches",
]

# Keys of the `data` config section that every dataset has (see jaxdl.config.base_config).
COMMON_KEYS = frozenset({"name", "dir", "download", "eval_batch_size"})


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  loader: Callable[..., Dataset]
  options: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> default


DATASETS: dict[str, DatasetSpec] = {
  "mnist": DatasetSpec(load_mnist),
  "fashion_mnist": DatasetSpec(fashion_mnist.load_fashion_mnist, fashion_mnist.OPTIONS),
  "cifar10": DatasetSpec(cifar.load_cifar10, cifar.CIFAR10_OPTIONS),
  "cifar100": DatasetSpec(cifar.load_cifar100, cifar.CIFAR100_OPTIONS),
  "image_folder": DatasetSpec(image_folder.load_image_folder, image_folder.OPTIONS),
  "text": DatasetSpec(text.load_text, text.OPTIONS),  # Language modelling on any UTF-8 text.
  "reviews": DatasetSpec(reviews.load_reviews, reviews.OPTIONS),  # Fresh vs rotten snippets.
  "seq2seq": DatasetSpec(synthetic.load_seq2seq, synthetic.OPTIONS),  # Reverse or sort.
  "hf": DatasetSpec(hf.load_hf, hf.OPTIONS),  # A saved or cached Hugging Face dataset.
  "parquet": DatasetSpec(parquet.load_parquet, parquet.OPTIONS),  # Parquet files.
  "arrayrecord": DatasetSpec(arrayrecord.load_arrayrecord, arrayrecord.OPTIONS),  # Shards.
}


def _spec(name: str) -> DatasetSpec:
  spec = DATASETS.get(name)
  if spec is None:
    close = difflib.get_close_matches(name, DATASETS, n=2)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise DataError(
      f"Unknown dataset {name!r}.{hint} Known datasets: "
      f"{', '.join(sorted(DATASETS))}; use one of these names."
    )
  return spec


def dataset_options(name: str) -> dict[str, Any]:
  """{option: default} of the dataset registered as `name` (DataError naming the known ones)."""
  return dict(_spec(name).options)


def load_dataset(
  name: str, data_dir: str = "", *, allow_download: bool | None = None, **options: Any
) -> Dataset:
  """Loads the dataset registered as `name` (see each loader for where it looks for files).

  Raises:
    DataError: `name` is not registered, an option is unknown, or the loader cannot find or read
      the data.
  """
  spec = _spec(name)
  unknown = sorted(set(options) - set(spec.options))
  if unknown:
    raise DataError(
      f"Dataset {name!r} has no option(s) {unknown}; its options are "
      f"{sorted(spec.options) or 'none'}."
    )
  return spec.loader(data_dir, allow_download=allow_download, **{**spec.options, **options})


def complete_config(data_config) -> None:
  """Adds the named dataset's options missing from a `data` config section, with their defaults;
  rejects keys that neither every dataset nor this one has (a typo, or another dataset's option).
  """
  spec = _spec(data_config.name)
  known = COMMON_KEYS | set(spec.options)
  for key in data_config.keys():
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1)
      hint = f" Did you mean data.{close[0]}?" if close else ""
      raise ConfigError(
        f"data.{key} is not an option of dataset {data_config.name!r}.{hint} Its options are "
        f"{', '.join(f'data.{k}' for k in sorted(spec.options)) or 'none'}, besides "
        f"{', '.join(f'data.{k}' for k in sorted(COMMON_KEYS))}."
      )
  for key, default in spec.options.items():
    if key not in data_config:
      data_config[key] = default


def load_from_config(data_config, *, allow_download: bool | None = None) -> Dataset:
  """Loads the dataset a `data` config section describes."""
  complete_config(data_config)
  options = {k: data_config[k] for k in _spec(data_config.name).options}
  return load_dataset(data_config.name, data_config.dir, allow_download=allow_download, **options)
