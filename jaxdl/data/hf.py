"""Hugging Face datasets (data.name=hf): a folder written by `save_to_disk`, or a Hub dataset
already in the local cache.

    data.dir = "path/to/saved"      # Dataset.save_to_disk or DatasetDict.save_to_disk
    data.dataset = "mnist"          # or: a Hub id, read from the local cache (never downloaded)
    data.config = ""                # the Hub dataset's configuration name, if it has several

Splits: a DatasetDict trains on data.train_split ("train") and evaluates on data.eval_split
("test"); data.eval_split="" (for datasets with only a train split), or a folder holding a single
Dataset, carves the evaluation rows out of the training split by data.eval_fraction (see
jaxdl.data.records). The columns and what they become follow jaxdl.data.records
(data.image_column, data.text_column, data.tokens_column, data.label_column, data.task, ...).

Rows are read from the dataset's Arrow table (memory-mapped by `datasets`) a batch at a time
(jaxdl.data.parquet.ArrowRecords); Image columns stay encoded until a batch needs them.

A Hub id is loaded with `datasets.load_dataset(id, config)` in offline mode (as with
HF_DATASETS_OFFLINE=1), so it must have been downloaded before: jaxdl downloads no data here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from jaxdl.data import records
from jaxdl.data.parquet import ArrowRecords
from jaxdl.errors import DataError
from jaxdl.pretrained.files import require

# The options of `load_hf`, with their defaults (config keys data.<option>).
OPTIONS = {
  "dataset": "",
  "config": "",
  "train_split": "train",
  "eval_split": "test",
  **records.OPTIONS,
}


def load_hf(
  data_dir: str = "",
  *,
  allow_download: bool | None = None,
  dataset: str = OPTIONS["dataset"],
  config: str = OPTIONS["config"],
  train_split: str = OPTIONS["train_split"],
  eval_split: str = OPTIONS["eval_split"],
  **options: Any,
):
  """The dataset of a saved Hugging Face dataset (`data_dir`) or a cached Hub one (`dataset`).

  Args:
    allow_download: unused; nothing is downloaded.
    dataset, config: a Hub id and its configuration, read from the local cache.
    train_split, eval_split: the splits of a DatasetDict; eval_split "" carves the evaluation
      rows out of train_split by data.eval_fraction.
    options: the jaxdl.data.records options (records.OPTIONS).

  Raises:
    ConfigError: the `datasets` package is not installed.
    DataError: no such folder or cached dataset, a missing split (listing the splits), or an
      option or column that does not fit the data (listing the columns).
  """
  del allow_download
  datasets = require("datasets", "datasets", "data.name=hf")
  if bool(data_dir) == bool(dataset):
    raise DataError(
      "data.name=hf needs exactly one of data.dir (a folder written by save_to_disk) and "
      f"data.dataset (a Hub id in the local cache); got data.dir={data_dir!r}, "
      f"data.dataset={dataset!r}."
    )
  if data_dir:
    loaded, source = _load_from_disk(datasets, data_dir)
  else:
    loaded, source = _load_cached(datasets, dataset, config)

  if isinstance(loaded, datasets.DatasetDict):
    train, test = _split(loaded, train_split, "train_split", source), None
    if eval_split:
      test = _split(loaded, eval_split, "eval_split", source)
    source = {**source, "train_split": train_split, "eval_split": eval_split}
  elif isinstance(loaded, datasets.Dataset):
    train, test = loaded, None
  else:
    raise DataError(
      f"{source} holds a {type(loaded).__name__}, not a Dataset or DatasetDict; save the data "
      f"with Dataset.save_to_disk or DatasetDict.save_to_disk."
    )
  train_records = _records(train)
  test_records = None if test is None else _records(test)
  if test_records is not None and test_records.column_names != train_records.column_names:
    raise DataError(
      f"The {eval_split!r} split has the columns {test_records.column_names} but the "
      f"{train_split!r} split {train_records.column_names}; both must have the same columns."
    )
  return records.build_dataset(
    train_records,
    test_records,
    columns=train_records.column_names,
    source=source,
    **{**records.OPTIONS, **options},
  )


def _load_from_disk(datasets, data_dir: str):
  path = Path(data_dir).expanduser()
  if not path.is_dir():
    raise DataError(
      f"The Hugging Face dataset folder {str(path)!r} does not exist. Set data.dir to a folder "
      f"written by Dataset.save_to_disk or DatasetDict.save_to_disk, or use data.dataset=ID "
      f"for a dataset in the local cache."
    )
  try:
    loaded = datasets.load_from_disk(str(path))
  except FileNotFoundError as e:
    raise DataError(
      f"{str(path)!r} is not a saved Hugging Face dataset ({e}); set data.dir to a folder "
      f"written by Dataset.save_to_disk or DatasetDict.save_to_disk."
    ) from e
  return loaded, {"kind": "hf_disk", "path": str(path.resolve())}


def _load_cached(datasets, dataset: str, config: str):
  try:
    with _offline(datasets):
      loaded = datasets.load_dataset(dataset, config or None)
  except (FileNotFoundError, ConnectionError, ValueError) as e:
    # Offline, a dataset missing from the cache is a FileNotFoundError or ConnectionError;
    # an unknown configuration a ValueError.
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(
      f"Cannot load the Hugging Face dataset {dataset!r}"
      f"{f' (config {config!r})' if config else ''} from the local cache "
      f"({datasets.config.HF_DATASETS_CACHE}): {message}. jaxdl reads Hub datasets offline, "
      f"as HF_DATASETS_OFFLINE=1 does, and never downloads them: fetch it once with "
      f"`python -c \"import datasets; datasets.load_dataset('{dataset}')\"` (online), or save "
      f"it with save_to_disk and set data.dir."
    ) from e
  return loaded, {"kind": "hf_cache", "dataset": dataset, "config": config}


@contextlib.contextmanager
def _offline(datasets):
  """`datasets` (and the Hub client it calls) in offline mode, as HF_DATASETS_OFFLINE=1 sets it."""
  import huggingface_hub.constants as hub_constants

  saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
  datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
  try:
    yield
  finally:
    datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _split(loaded, name: str, option: str, source: dict):
  if name not in loaded:
    raise DataError(
      f"data.{option}={name!r} is not a split of the Hugging Face dataset ({source}); its "
      f"splits are {sorted(loaded)}. Set data.{option} to one of them"
      f"{'' if option == 'train_split' else ', or to empty to carve it out of the train split'}."
    )
  return loaded[name]


def _records(split) -> ArrowRecords:
  """The split's rows as records, read from its Arrow table (an index mapping left by select or
  shuffle is applied once, here)."""
  return ArrowRecords(split.with_format("arrow")[:])
