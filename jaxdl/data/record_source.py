"""Record sources: the random-access reading the `hf`, `parquet` and `arrayrecord` datasets share.

A record source is anything with `__len__` and `__getitem__(i) -> dict[str, Any]`, one example's
fields by name: Grain's RandomAccessDataSource protocol, so `grain.sources.ArrayRecordDataSource`
wrapped with a decode function fits. Two optional methods make it faster: `__getitems__(indices)
-> list[dict]` reads many records in one call (Grain's batched protocol), and `column(field) ->
np.ndarray | list` reads one field of every record without the others (labels, texts).
`find_files` turns the data.train_files / data.eval_files patterns of file sources into paths.
"""

from __future__ import annotations

from collections.abc import Sequence
import glob
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jaxdl.data import pipeline
from jaxdl.errors import DataError

EVAL_SPLIT_SEED = 0  # The permutation that picks evaluation rows from a source without them.


class RecordSource(Protocol):
  """What the datasets here need of a source of records."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


def read_records(source: RecordSource, indices: Sequence[int]) -> list[dict[str, Any]]:
  """The records at `indices`, in one `__getitems__` call where the source has it."""
  indices = [int(i) for i in indices]
  getitems = getattr(source, "__getitems__", None)
  if getitems is not None:
    return list(getitems(indices))
  return [source[i] for i in indices]


def read_field(source: RecordSource, field: str, *, chunk: int = 1024) -> np.ndarray | list:
  """One field of every record, in order: `source.column(field)` where it exists, else read
  record by record (a chunk at a time)."""
  column = getattr(source, "column", None)
  if column is not None:
    return column(field)
  values = []
  for start in range(0, len(source), chunk):
    records = read_records(source, range(start, min(start + chunk, len(source))))
    values.extend(field_of(record, field) for record in records)
  return values


def field_of(record: dict[str, Any], field: str) -> Any:
  """record[field], or a DataError listing the fields the record has."""
  try:
    return record[field]
  except KeyError:
    raise DataError(
      f"The records have no field {field!r}; their fields are {sorted(record)}. Name one of "
      f"them in the config (data.image_column, data.text_column, data.tokens_column or "
      f"data.label_column)."
    ) from None


class Subset:
  """The records of `source` at `rows`, renumbered 0 .. len(rows) - 1."""

  def __init__(self, source: RecordSource, rows: np.ndarray):
    self._source, self._rows = source, np.asarray(rows, np.int64)

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._source[int(self._rows[index])]

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return read_records(self._source, self._rows[np.asarray(indices, np.int64)])

  def column(self, field: str) -> np.ndarray | list:
    values = read_field(self._source, field)
    if isinstance(values, np.ndarray):
      return values[self._rows]
    return [values[i] for i in self._rows]


def split_rows(num_rows: int, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, eval rows) of a source without an evaluation split: the first
  int(num_rows * eval_fraction) rows of a fixed permutation are evaluation, each kept in order."""
  eval_fraction = pipeline.check_fraction_option("eval_fraction", eval_fraction)
  num_eval = int(num_rows * eval_fraction)
  if not 0 < num_eval < num_rows:
    raise DataError(
      f"data.eval_fraction={eval_fraction} of {num_rows} records leaves "
      f"{'no' if num_eval == 0 else 'all'} evaluation rows; use more records, another "
      f"data.eval_fraction, or an evaluation split of its own."
    )
  permutation = np.random.default_rng(EVAL_SPLIT_SEED).permutation(num_rows)
  return np.sort(permutation[num_eval:]), np.sort(permutation[:num_eval])


def find_files(
  patterns: str | Sequence[str], root: Path | None, option: str, *, suffix: str, kind: str
) -> list[Path]:
  """The files `patterns` name, in order: each pattern's matches sorted, repeats dropped.

  Args:
    patterns: a path, a glob pattern or a folder (its *`suffix` files); several comma-separated,
      or a list of them.
    root: the folder relative paths start from (data.dir); None: the working directory.
    option: the config option the patterns come from ("train_files"), for the errors.
    suffix: the file name ending a folder's files have (".parquet").
    kind: the files' format ("Parquet"), for the errors.

  Raises:
    DataError: `patterns` is not a string or a list of them, or a pattern matches no file.
  """
  if isinstance(patterns, str):
    patterns = [p.strip() for p in patterns.split(",") if p.strip()]
  if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
    raise DataError(
      f"data.{option} must be a path, glob pattern or folder, several comma-separated, or a "
      f"list of them, got {patterns!r}."
    )
  found: dict[Path, None] = {}
  for pattern in patterns:
    path = Path(pattern).expanduser()
    if root is not None and not path.is_absolute():
      path = root / path
    if glob.has_magic(str(path)):
      matches = sorted(Path(p) for p in glob.glob(str(path)) if os.path.isfile(p))
    elif path.is_dir():
      matches = sorted(p for p in path.glob(f"*{suffix}") if p.is_file())
    else:
      matches = [path] if path.is_file() else []
    if not matches:
      raise DataError(
        f"data.{option}: {str(path)!r} matches no file. Give {kind} files, glob patterns such as "
        f"'train-*{suffix}' or folders of {suffix} files, comma-separated or as a list (relative "
        f"paths start at data.dir when it is set)."
      )
    found.update(dict.fromkeys(matches))
  return list(found)
