"""Datasets from Parquet files (data.name=parquet), and record access to any Arrow table.

    data.train_files = "data/train-*.parquet"   # a file, a glob pattern or a folder; several
    data.eval_files = "data/test.parquet"       # comma-separated, or a list; empty: carve
                                                # data.eval_fraction out of train

Relative paths are taken from data.dir when it is set. Each pattern's matches are sorted (a folder
gives its *.parquet files: jaxdl.data.record_source.find_files), so the row order, and with it the
run, does not depend on the file system. The files of a split are read with pyarrow
(memory-mapped) into one Arrow table; image columns stay encoded (PNG or JPEG bytes, or Hugging
Face {"bytes", "path"} structs) until a batch needs them. The columns and what they become follow
jaxdl.data.records (data.image_column, data.text_column, data.tokens_column, data.label_column,
data.task, ...).

`ArrowRecords` is the record source over a table; jaxdl.data.hf reads Hugging Face datasets,
which are Arrow tables, through it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxdl.data import records
from jaxdl.data.record_source import find_files
from jaxdl.errors import DataError
from jaxdl.pretrained.files import require

# The options of `load_parquet`, with their defaults (config keys data.<option>).
OPTIONS = {"train_files": "", "eval_files": "", **records.OPTIONS}
SUFFIX = ".parquet"  # The files a folder named in train_files / eval_files gives.


class ArrowRecords:
  """The rows of an Arrow table as records ({column: value}), read in batches by row number.

  List columns of one shape (images as nested uint8 lists, token ids) come back as numpy rows,
  converted a whole batch at once; binary, string and struct columns as Python values.
  """

  def __init__(self, table):
    self._table = table

  @property
  def column_names(self) -> list[str]:
    return list(self._table.column_names)

  def __len__(self) -> int:
    return self._table.num_rows

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.__getitems__([index])[0]

  def __getitems__(self, indices) -> list[dict[str, Any]]:
    rows = self._table.take(np.asarray(indices, np.int64))
    columns = {name: _values(rows.column(name)) for name in rows.column_names}
    return [{name: values[k] for name, values in columns.items()} for k in range(len(indices))]

  def column(self, field: str) -> np.ndarray | list:
    """Every row's `field`, without reading the other columns."""
    if field not in self._table.column_names:
      raise DataError(
        f"The data has no column {field!r}; its columns are {self.column_names}. Name one of "
        f"them in the config (data.image_column, data.text_column, data.tokens_column or "
        f"data.label_column)."
      )
    return _values(self._table.column(field))

  def select(self, columns) -> ArrowRecords:
    """The records with only `columns` (so a batch reads no other column)."""
    return ArrowRecords(self._table.select(list(columns)))


def _values(chunked) -> np.ndarray | list:
  """An Arrow column as numpy (numbers; lists of one shape, stacked) or a list of Python values."""
  import pyarrow as pa  # Already imported by whoever made the table.

  array = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
  if isinstance(array.type, pa.ExtensionType):  # Hugging Face Array2D / Array3D columns.
    array = array.storage
  kind = array.type
  if (pa.types.is_integer(kind) or pa.types.is_floating(kind)) and not array.null_count:
    return array.to_numpy(zero_copy_only=False)
  if _is_list(kind):
    stacked = _stacked(array)
    if stacked is not None:
      return stacked
  return array.to_pylist()


def _is_list(kind) -> bool:
  import pyarrow as pa

  return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _stacked(array) -> np.ndarray | None:
  """[N, L1, L2, ...] numbers of a nested list column whose lists at each level share a length;
  None when they do not (or hold nulls or non-numbers)."""
  import pyarrow as pa
  import pyarrow.compute as pc

  shape = [len(array)]
  while _is_list(array.type):
    if array.null_count:
      return None
    lengths = np.unique(pc.list_value_length(array).to_numpy(zero_copy_only=False))
    if len(lengths) > 1 or not len(array):
      return None
    shape.append(int(lengths[0]) if len(lengths) else 0)
    array = array.flatten()
  if array.null_count or not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
    return None
  return array.to_numpy(zero_copy_only=False).reshape(shape)


def load_parquet(
  data_dir: str = "",
  *,
  allow_download: bool | None = None,
  train_files: str | list[str] = OPTIONS["train_files"],
  eval_files: str | list[str] = OPTIONS["eval_files"],
  **options: Any,
):
  """The dataset of the Parquet files `train_files` and `eval_files` (see the module docstring).

  Args:
    data_dir: the folder relative patterns start from; empty: the working directory.
    allow_download: unused; the files are the user's own.
    train_files, eval_files: a file, a glob pattern or a folder of *.parquet files; several
      comma-separated, or a list of them; eval_files empty: the evaluation split is carved out of
      the training files.
    options: the jaxdl.data.records options (records.OPTIONS).

  Raises:
    ConfigError: pyarrow is not installed.
    DataError: no files match, a file cannot be read, the splits' columns differ, or an option or
      column does not fit the data.
  """
  del allow_download
  pa = require("pyarrow", "parquet", "data.name=parquet")
  require("pyarrow.parquet", "parquet", "data.name=parquet")
  if not train_files:
    raise DataError(
      "data.name=parquet needs data.train_files: a Parquet file, a glob pattern such as "
      "'train-*.parquet', a folder of .parquet files, or several, comma-separated."
    )
  root = Path(data_dir).expanduser() if data_dir else None
  train_paths = find_files(train_files, root, "train_files", suffix=SUFFIX, kind="Parquet")
  eval_paths = (
    find_files(eval_files, root, "eval_files", suffix=SUFFIX, kind="Parquet") if eval_files else []
  )
  train = ArrowRecords(read_table(pa, train_paths))
  test = ArrowRecords(read_table(pa, eval_paths)) if eval_paths else None
  if test is not None and test.column_names != train.column_names:
    raise DataError(
      f"The eval files have the columns {test.column_names} but the train files "
      f"{train.column_names}; both splits must have the same columns."
    )
  source = {
    "kind": "parquet",
    "train_files": [str(p) for p in train_paths],
    "eval_files": [str(p) for p in eval_paths],
  }
  return records.build_dataset(
    train, test, columns=train.column_names, source=source, **{**records.OPTIONS, **options}
  )


def read_table(pa, paths: list[Path]):
  """One Arrow table of the files' rows, in order; DataError naming a file that does not read."""
  import pyarrow.parquet as pq

  tables = []
  for path in paths:
    try:
      tables.append(pq.read_table(path, memory_map=True))
    except (OSError, pa.ArrowException) as e:
      raise DataError(
        f"Cannot read the Parquet file {str(path)!r} ({type(e).__name__}: {e}); it is damaged "
        f"or not Parquet."
      ) from e
  try:
    return pa.concat_tables(tables)
  except pa.ArrowInvalid as e:
    raise DataError(
      f"The Parquet files {[str(p) for p in paths]} do not share one schema ({e}); every file "
      f"of a split must have the same columns and types."
    ) from e
