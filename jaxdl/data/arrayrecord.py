"""ArrayRecord shards as a dataset (data.name=arrayrecord), read at random through Grain's own
`grain.sources.ArrayRecordDataSource`.

Two ways to name the data:

    data.dir = "shards/mnist"                        # a folder `jaxdl data convert` wrote

    data.train_files = "data/train-*.array_record"   # files written by any tool: a file, a glob
    data.eval_files = "data/test-*.array_record"     # pattern, or several, comma-separated
    data.decoder = "msgpack"                         # how a record's bytes become fields

With train_files, relative paths start at data.dir when it is set; each pattern's matches are
sorted, so the record order, and with it the run, does not depend on the file system. eval_files
empty carves the evaluation records out of the training ones by data.eval_fraction.

The record format (what `jaxdl data convert` writes, `DECODERS["msgpack"]`): each record is one
example, a map of named fields serialised with `flax.serialization.msgpack_serialize` (numpy arrays
keep their dtype and shape exactly). Images are uint8 arrays [H, W, C], or PNG/JPEG bytes; labels
ints; text str; token ids 1-D integer arrays. Other decoders: "text", each record one UTF-8 text
(field "text"); "tf_example", a serialised tf.train.Example as TFDS and tf.data pipelines write it
(jaxdl.data.tf_example): each feature is a field. The fields and what they become follow
jaxdl.data.records (data.image_column, data.text_column, data.tokens_column, data.label_column,
data.task, data.augment, ...), as for data.name=parquet and hf.

A converted folder holds `dataset.json` (`DESCRIPTION_FILE`), which names its shards and what they
hold ("layout"):
- "records": examples as above (images and labels; texts), built by jaxdl.data.records;
- "token_stream": the training and evaluation token streams of a language-modelling dataset, cut
  into records {"tokens": ids} in order, with the tokenizer that made them (saved in dataset.json,
  so data.tokenizer is not used); read back into exactly the streams that were written;
- "arrays": the rows of a dataset of named arrays (reviews, seq2seq), each record one row, with the
  task, model hints, special ids and tokenizer; read back into memory as the same arrays.
Training batches, per-process sharding and resume are those of the dataset the records make
(jaxdl.data.pipeline.train_batches over the records for images; the token streams' random
windows for text), so a converted dataset trains exactly as the one it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxdl.data import pipeline, records, synthetic
from jaxdl.data.record_source import field_of, find_files, read_field, read_records
from jaxdl.data.record_text import text_lm_dataset
from jaxdl.data.tokenizers import tokenizer_from_json
from jaxdl.errors import DataError

# The options of `load_arrayrecord`, with their defaults (config keys data.<option>).
OPTIONS = {"train_files": "", "eval_files": "", "decoder": "msgpack", **records.OPTIONS}
DECODERS = ("msgpack", "text", "tf_example")

DESCRIPTION_FILE = "dataset.json"
FORMAT = "jaxdl.arrayrecord"
FORMAT_VERSION = 1
LAYOUTS = ("records", "token_stream", "arrays")
SPLITS = ("train", "test")
SUFFIX = ".array_record"
# Grain reads one record at a time, so each is its own group (array_record's default packs 65536,
# which Grain would have to decompress whole for every record).
WRITER_OPTIONS = "group_size:1"


def shard_name(split: str, index: int, count: int) -> str:
  """The file name of shard `index` of `count` of a split: train-00000-of-00004.array_record."""
  return f"{split}-{index:05d}-of-{count:05d}{SUFFIX}"


def array_record_module(why: str = "data.name=arrayrecord"):
  """array_record's writer and reader (array_record.python.array_record_module), or a one-line
  ConfigError naming `pip install 'jaxdl[arrayrecord]'`."""
  from jaxdl.pretrained.files import require  # pylint: disable=g-import-not-at-top

  require("array_record", "arrayrecord", why)
  return require("array_record.python.array_record_module", "arrayrecord", why)


def encode_record(fields: dict[str, Any]) -> bytes:
  """One example's fields as a record (msgpack, as flax.serialization writes it)."""
  from flax import serialization  # pylint: disable=g-import-not-at-top

  return serialization.msgpack_serialize(fields)


def decode_record(data: bytes) -> dict[str, Any]:
  """The fields of a record `encode_record` wrote; DataError when it is not one."""
  from flax import serialization  # pylint: disable=g-import-not-at-top

  try:
    fields = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several kinds (ExtraData, ValueError, ...).
    raise DataError(
      f"A record is not a msgpack map of fields ({type(e).__name__}: {e}); the file was written "
      f"by another tool or is damaged. Set data.decoder to how its records are encoded "
      f"({', '.join(DECODERS)})."
    ) from e
  if not isinstance(fields, dict):
    raise DataError(
      f"A record holds a msgpack {type(fields).__name__}, not a map of named fields; set "
      f"data.decoder to how the records are encoded ({', '.join(DECODERS)})."
    )
  return fields


def _decode_text(data: bytes) -> dict[str, Any]:
  return {"text": bytes(data)}  # record_text.read_texts decodes UTF-8, naming the field.


def _decode_tf_example(data: bytes) -> dict[str, Any]:
  from jaxdl.data import tf_example  # pylint: disable=g-import-not-at-top

  return tf_example.parse_example(data)


_DECODE = {"msgpack": decode_record, "text": _decode_text, "tf_example": _decode_tf_example}


class ArrayRecordFiles:
  """The records of ArrayRecord files, in file order, decoded into fields (a RecordSource).

  Record i of the concatenated files is read at random through grain.sources.ArrayRecordDataSource;
  `__getitems__` reads a batch's records in one call.
  """

  def __init__(self, paths: list[Path], decoder: str = "msgpack"):
    pipeline.check_choice_option("decoder", decoder, DECODERS)
    array_record_module()  # The one-line error when array_record is missing.
    import grain  # pylint: disable=g-import-not-at-top

    self.paths, self._decode = [str(p) for p in paths], _DECODE[decoder]
    try:
      self._source = grain.sources.ArrayRecordDataSource(self.paths)
    except (RuntimeError, OSError, ValueError) as e:
      for path in self.paths:  # Name the file that failed (the error may not).
        _check_file(path)
      raise DataError(f"Cannot read the ArrayRecord files {self.paths} ({e}).") from None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._decode(self._source[int(index)])

  def __getitems__(self, indices) -> list[dict[str, Any]]:
    indices = [int(i) for i in indices]
    if not indices:  # The data source's thread pool refuses an empty batch.
      return []
    return [self._decode(data) for data in self._source.__getitems__(indices)]

  def __repr__(self) -> str:
    return f"ArrayRecordFiles({len(self.paths)} files, {len(self)} records)"


def _check_file(path: str) -> None:
  """DataError naming `path` when it is not an ArrayRecord file array_record can open."""
  module = array_record_module()
  try:
    module.ArrayRecordReader(path).close()  # Reading the index fails, at the latest, on close.
  except (RuntimeError, OSError, ValueError) as e:
    raise DataError(
      f"Cannot read the ArrayRecord file {path!r} ({e}); it is damaged, truncated or not an "
      f"ArrayRecord file. Convert or copy it again."
    ) from None


def load_arrayrecord(
  data_dir: str = "",
  *,
  allow_download: bool | None = None,
  train_files: str = OPTIONS["train_files"],
  eval_files: str = OPTIONS["eval_files"],
  decoder: str = OPTIONS["decoder"],
  **options: Any,
):
  """The dataset of a converted folder (`data_dir` with a dataset.json) or of ArrayRecord files
  (`train_files`, `eval_files`); see the module docstring.

  Args:
    data_dir: a folder `jaxdl data convert` wrote; or, with train_files, the folder relative
      patterns start from.
    allow_download: unused; the files are the user's own.
    train_files, eval_files: files or glob patterns, comma-separated; eval_files empty carves the
      evaluation records out of the training ones by data.eval_fraction.
    decoder: how a record's bytes become fields, one of `DECODERS` (not used with a dataset.json,
      which says).
    options: the jaxdl.data.records options (records.OPTIONS).

  Raises:
    ConfigError: array_record is not installed.
    DataError: no dataset.json and no files, a damaged dataset.json or file, or an option or field
      that does not fit the data.
  """
  del allow_download
  options = {**records.OPTIONS, **options}
  if train_files:
    root = Path(data_dir).expanduser() if data_dir else None
    files_kind = dict(suffix=SUFFIX, kind="ArrayRecord")
    train_paths = find_files(train_files, root, "train_files", **files_kind)
    eval_paths = find_files(eval_files, root, "eval_files", **files_kind) if eval_files else []
    train = ArrayRecordFiles(train_paths, decoder)
    test = ArrayRecordFiles(eval_paths, decoder) if eval_paths else None
    if not len(train):
      raise DataError(f"The files of data.train_files={train_files!r} hold no records.")
    source = {
      "kind": "arrayrecord",
      "train_files": [str(p) for p in train_paths],
      "eval_files": [str(p) for p in eval_paths],
      "decoder": decoder,
    }
    columns = list(train[0])
    return records.build_dataset(train, test, columns=columns, source=source, **options)
  if eval_files:
    raise DataError(
      "data.eval_files is set but data.train_files is not; name the training files too, or "
      "point data.dir at a folder `jaxdl data convert` wrote (and leave both empty)."
    )
  if not data_dir:
    raise DataError(
      "data.name=arrayrecord needs data.dir, a folder written by `jaxdl data convert`, or "
      "data.train_files (and data.eval_files): ArrayRecord files or glob patterns."
    )
  if decoder != OPTIONS["decoder"]:
    raise DataError(
      f"data.decoder={decoder!r} is for files named by data.train_files; the folder "
      f"{data_dir!r} says in its {DESCRIPTION_FILE} how its records are encoded. Leave "
      f"data.decoder out."
    )
  return load_converted(Path(data_dir).expanduser(), options)


def read_description(directory: Path) -> dict[str, Any]:
  """The checked dataset.json of a folder `jaxdl data convert` wrote.

  Raises:
    DataError: the folder or its dataset.json is missing, is not valid JSON, or is not one
      this version of jaxdl reads.
  """
  path = directory / DESCRIPTION_FILE
  if not path.is_file():
    problem = (
      "does not exist"
      if not directory.exists()
      else f"has no {DESCRIPTION_FILE}"
      if directory.is_dir()
      else "is not a folder"
    )
    raise DataError(
      f"The ArrayRecord folder {str(directory)!r} {problem}: it is not a folder written by "
      f"`jaxdl data convert`, or its conversion did not finish ({DESCRIPTION_FILE} is written "
      f"last). Convert the data again (--overwrite replaces an unfinished conversion), or name "
      f"ArrayRecord files with data.train_files and data.eval_files."
    )
  try:
    description = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
    raise DataError(
      f"{str(path)!r} is damaged ({type(e).__name__}: {e}); convert the data again with "
      f"`jaxdl data convert ... --overwrite`."
    ) from e
  if not isinstance(description, dict) or description.get("format") != FORMAT:
    raise DataError(
      f"{str(path)!r} is not a jaxdl ArrayRecord description (format {FORMAT!r}); convert the "
      f"data again with `jaxdl data convert ... --overwrite`."
    )
  version = description.get("version")
  if version != FORMAT_VERSION:
    raise DataError(
      f"{str(path)!r} has format version {version!r}; this jaxdl reads version "
      f"{FORMAT_VERSION}. Convert the data again with this jaxdl, or upgrade jaxdl."
    )
  splits, layout = description.get("splits"), description.get("layout")
  if (
    layout not in LAYOUTS
    or not isinstance(splits, dict)
    or set(splits) != set(SPLITS)
    or not all(isinstance(s, dict) and isinstance(s.get("files"), list) for s in splits.values())
  ):
    raise DataError(
      f"{str(path)!r} is damaged: it needs a layout ({', '.join(LAYOUTS)}) and splits "
      f"{list(SPLITS)} with their files. Convert the data again with `jaxdl data convert ... "
      f"--overwrite`."
    )
  return description


def split_files(directory: Path, description: dict[str, Any], split: str) -> ArrayRecordFiles:
  """The records of one split of a converted folder, checked against its description."""
  entry = description["splits"][split]
  paths = [directory / name for name in entry["files"]]
  missing = [p.name for p in paths if not p.is_file()]
  if missing:
    raise DataError(
      f"The ArrayRecord folder {str(directory)!r} lacks {missing} of its {split} split, which "
      f"its {DESCRIPTION_FILE} lists. Copy the whole folder, or convert the data again."
    )
  files = ArrayRecordFiles(paths)
  if len(files) != entry.get("num_records"):
    raise DataError(
      f"The {split} files of {str(directory)!r} hold {len(files)} records, but its "
      f"{DESCRIPTION_FILE} says {entry.get('num_records')}; a file was replaced or truncated. "
      f"Convert the data again."
    )
  return files


def load_converted(directory: Path, options: dict[str, Any]):
  """The dataset of a folder `jaxdl data convert` wrote."""
  description = read_description(directory)
  train, test = (split_files(directory, description, split) for split in SPLITS)
  source = {
    "kind": "arrayrecord",
    "path": str(directory.resolve()),
    "converted_from": description.get("source", {}).get("dataset"),
  }
  layout = description["layout"]
  if layout == "records":
    if not options["num_classes"] and description.get("num_classes"):
      options = {**options, "num_classes": description["num_classes"]}
    if description.get("classes"):
      source["classes"] = description["classes"]
    return records.build_dataset(
      train, test, columns=description.get("columns", []), source=source, **options
    )
  tokenizer = _saved_tokenizer(description, directory)
  if layout == "token_stream":
    if options["tokenizer"] != records.OPTIONS["tokenizer"]:
      raise DataError(
        f"data.tokenizer={options['tokenizer']!r}: the token ids in {str(directory)!r} were made "
        f"by the tokenizer saved in its {DESCRIPTION_FILE}, which is used; leave data.tokenizer "
        f"out (or convert the text again with the tokenizer you want)."
      )
    streams = [_token_stream(split) for split in (train, test)]
    return text_lm_dataset(
      *streams,
      tokenizer=tokenizer,
      block_size=options["block_size"],
      objective=options["objective"],
      mask_rate=options["mask_rate"],
      source={**source, "tokenizer": "saved"},
    )
  return _array_dataset(train, test, description, tokenizer, source)


def _saved_tokenizer(description: dict[str, Any], directory: Path):
  saved = description.get("tokenizer")
  if saved is None:
    return None
  try:
    return tokenizer_from_json(json.dumps(saved))
  except DataError as e:
    raise DataError(
      f"The tokenizer in {str(directory / DESCRIPTION_FILE)!r} is damaged: {e}"
    ) from e


def _token_stream(split: ArrayRecordFiles) -> np.ndarray:
  """A split's token records joined, in order, into the stream they were cut from."""
  chunks = [np.asarray(chunk) for chunk in read_field(split, "tokens")]
  if not chunks:
    return np.zeros(0, np.int32)
  return np.concatenate(chunks)


def _array_dataset(
  train: ArrayRecordFiles,
  test: ArrayRecordFiles,
  description: dict[str, Any],
  tokenizer,
  source: dict[str, Any],
) -> pipeline.ArrayDataset:
  """The rows of each split stacked back into the arrays they were written from."""
  names = description.get("columns", [])
  splits = {}
  for split_name, split in (("train", train), ("test", test)):
    rows = read_records(split, range(len(split)))
    splits[split_name] = pipeline.ArraySplit(
      {name: np.stack([field_of(row, name) for row in rows]) for name in names}
    )
  source = {**source, "num_train": len(train), "num_test": len(test)}
  kwargs = dict(
    train=splits["train"],
    test=splits["test"],
    task=description["task"],
    input_key=description["input_key"],
    model_hints=description.get("model_hints", {}),
    source=source,
    tokenizer=tokenizer,
  )
  ids = description.get("ids")
  if ids:  # A decoder's start and stop ids (jaxdl.data.synthetic.Seq2SeqDataset).
    return synthetic.Seq2SeqDataset(**kwargs, **ids)
  return pipeline.ArrayDataset(**kwargs)
