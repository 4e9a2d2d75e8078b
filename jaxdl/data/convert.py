"""`jaxdl data convert SRC --to arrayrecord --out DIR [key=value ...]`: any dataset jaxdl reads,
written as ArrayRecord shards that `data.name=arrayrecord data.dir=DIR` trains from.

SRC is a dataset name (mnist, fashion_mnist, cifar10, cifar100, image_folder, text, reviews,
seq2seq, hf, parquet, arrayrecord) and the key=value pairs are its data options as a config writes
them without `data.` (dir=~/photos image_size=64), loaded through jaxdl.data as training would.
Both splits are written, the training split and the evaluation split (test, or validation for
text), in the record format of jaxdl.data.arrayrecord, by what the dataset holds:
- images and labels in memory (MNIST, CIFAR, an image folder, hf/parquet images): each image as
  stored, uint8 [H, W, C], lossless (or PNG/JPEG bytes with --image-encoding), and its label. A
  streamed image folder is decoded at its data.image_size, the shorter side resized and the centre
  square cropped, exactly as data.streaming=false decodes it into memory; training augmentation
  (data.augment) then works on these stored pixels, as on any in-memory image set.
- language-modelling text: the training and validation token streams, cut in order into records
  of `TOKENS_PER_RECORD` ids, and the tokenizer, so a run on the shards reads the same streams.
- named arrays (reviews, seq2seq, text classification from hf/parquet): each row a record.
Augmentation and normalisation options are not stored: a run on the shards sets its own.

Each split is cut into --shards files (default: about one per `SHARD_BYTES` of records, at least
one; never more than it has records), records in order. DIR must be empty or new unless
--overwrite, which first removes dataset.json and the shards an earlier conversion wrote there
(other files are left alone). Shards are written under a temporary name and renamed when complete,
and dataset.json, which a reader needs, is written last: an interrupted conversion is never taken
for a complete one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import concurrent.futures
import dataclasses
import io
import json
import math
import os
from pathlib import Path
import sys
from typing import Any

import numpy as np

from jaxdl import paths
from jaxdl.data import (
  arrayrecord,
  image_folder,
  image_stream,
  masking,
  pipeline,
  record_images,
  synthetic,
  text,
)
from jaxdl.errors import DataError, UserError

FORMATS = ("arrayrecord",)
IMAGE_ENCODINGS = ("raw", "png", "jpeg")
JPEG_QUALITY = 95
SHARD_BYTES = 100 * 2**20  # Default shard size, measured before compression.
TOKENS_PER_RECORD = 4096
_PARTIAL = ".partial"


@dataclasses.dataclass(frozen=True)
class _Split:
  """What to write of one split: its record count and its records, in order."""

  num_records: int
  records: Callable[[], Iterator[dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class _Plan:
  """A dataset as records: the description's entries and each split's records."""

  description: dict[str, Any]
  splits: dict[str, _Split]


def convert(
  name: str,
  options: Sequence[str] = (),
  out: str | Path = "",
  *,
  to: str = "arrayrecord",
  shards: int | None = None,
  overwrite: bool = False,
  image_encoding: str = "raw",
  show_progress: bool = True,
) -> dict[str, Any]:
  """Loads dataset `name` with `options` ("key=value", its data.* options) and writes it to `out`
  in format `to`; returns the description written to out/dataset.json.

  Raises:
    UserError: a bad argument, or `out` is not empty and `overwrite` is False.
    DataError, ConfigError: the dataset does not load, or holds what cannot be converted.
  """
  # argparse checks the command line's choices; these checks are for callers of this function.
  if to not in FORMATS:
    raise UserError(f"--to {to!r} is not a format jaxdl writes; use one of {', '.join(FORMATS)}.")
  if image_encoding not in IMAGE_ENCODINGS:
    raise UserError(
      f"--image-encoding {image_encoding!r} is not one of {', '.join(IMAGE_ENCODINGS)}."
    )
  if shards is not None:
    pipeline.check_positive_int("--shards", shards)
  out = Path(out).expanduser()
  # Before loading: a refusal should not wait for a big dataset.
  arrayrecord.array_record_module("jaxdl data convert --to arrayrecord")
  _check_out(out, overwrite)
  data, data_options = load_source(name, options)
  plan = plan_records(data, image_encoding)
  description = {
    "format": arrayrecord.FORMAT,
    "version": arrayrecord.FORMAT_VERSION,
    **plan.description,
    "source": {"dataset": name, "options": data_options, "provenance": data.source},
  }
  return write_arrayrecord(
    plan, description, out, shards=shards, overwrite=overwrite, show_progress=show_progress
  )


def load_source(name: str, options: Sequence[str]) -> tuple[Any, dict[str, Any]]:
  """The dataset `name` with `options` ("key=value", or "data.key=value"), loaded as training
  loads it; and its data options, defaults included."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from jaxdl import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxdl import data as data_lib  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict({"data": config_lib.base_config().data})
  config.data.name = name
  data_lib.complete_config(config.data)  # The dataset's own options, so they can be set.
  config_lib.apply_overrides(config, [o if o.startswith("data.") else f"data.{o}" for o in options])
  if config.data.name != name:
    raise UserError(
      f"name={config.data.name} among the options: name the dataset as SRC instead "
      f"(jaxdl data convert {config.data.name} ...)."
    )
  data = data_lib.load_from_config(
    config.data, allow_download=None if config.data.download else False
  )
  saved = {k: v for k, v in config.data.to_dict().items() if k not in ("name", "eval_batch_size")}
  return data, saved


def plan_records(data: Any, image_encoding: str = "raw") -> _Plan:
  """What `data` becomes as records (see the module docstring).

  Raises:
    DataError: a dataset of a kind that cannot be converted.
  """
  if isinstance(data, (pipeline.LoadedData, record_images.RecordImageDataset)):
    return _images(data, _split_images, image_encoding)
  if isinstance(data, image_stream.StreamingImageFolder):
    return _images(data, _file_images(data.image_size), image_encoding)
  if isinstance(data, (text.TextDataset, masking.MaskedTextDataset)):
    return _token_stream(data)
  if isinstance(data, pipeline.ArrayDataset):
    return _arrays(data)
  raise DataError(
    f"Cannot convert a {type(data).__name__} dataset to ArrayRecord: jaxdl converts images and "
    f"labels, language-modelling text and datasets of named arrays."
  )


def _images(data, read_images: Callable, image_encoding: str) -> _Plan:
  """Images and labels: records {"image", "label"}."""
  encode = _image_encoder(image_encoding)

  def split(rows) -> _Split:
    def generate() -> Iterator[dict[str, Any]]:
      for image_BHWC, label_B in read_images(rows):
        for image, label in zip(image_BHWC, label_B):
          yield {"image": encode(image), "label": int(label)}

    return _Split(len(rows), generate)

  description = {
    "layout": "records",
    "task": "classify",
    "columns": ["image", "label"],
    "image_encoding": image_encoding,
    "num_classes": int(data.num_classes),
  }
  if data.source.get("classes"):
    description["classes"] = list(data.source["classes"])
  return _Plan(description, {"train": split(data.train), "test": split(data.test)})


_IMAGE_CHUNK = 256  # Images decoded (and held) at a time.


def _split_images(rows) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(uint8 images [B, H, W, C], labels [B]) of an in-memory split, a chunk at a time."""
  for start in range(0, len(rows), _IMAGE_CHUNK):
    chunk = slice(start, start + _IMAGE_CHUNK)
    if isinstance(rows, pipeline.Split):
      yield rows.image[chunk], rows.label[chunk]
    else:  # record_images.RecordImages: decoded (and resized) as training reads them.
      yield rows.images(chunk), rows.label[chunk]


def _file_images(image_size: int) -> Callable:
  """The chunk reader of a streamed folder's files: decoded as image_folder decodes into memory,
  in a thread pool (Pillow releases the GIL)."""

  def read(rows: image_stream.FileSplit) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      for start in range(0, len(rows), _IMAGE_CHUNK):
        files = rows.files[start : start + _IMAGE_CHUNK]
        images = list(pool.map(lambda f: image_folder.decode_image(f, image_size), files))
        yield np.stack(images), rows.label[start : start + _IMAGE_CHUNK]

  return read


def _image_encoder(image_encoding: str) -> Callable[[np.ndarray], Any]:
  if image_encoding == "raw":
    return lambda image: image

  def encode(image_HWC: np.ndarray) -> bytes:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    channels = image_HWC.shape[-1]
    if channels not in (1, 3) and not (channels == 4 and image_encoding == "png"):
      raise DataError(
        f"Cannot encode {channels}-channel images as {image_encoding.upper()}; use "
        f"--image-encoding raw."
      )
    buffer = io.BytesIO()
    img = Image.fromarray(image_HWC[..., 0] if channels == 1 else image_HWC)
    if image_encoding == "png":
      img.save(buffer, format="PNG")
    else:
      img.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()

  return encode


def _token_stream(data) -> _Plan:
  """A language-modelling dataset: each token stream in records {"tokens": ids [<= N]}."""

  def split(stream: np.ndarray) -> _Split:
    starts = range(0, len(stream), TOKENS_PER_RECORD)
    return _Split(
      len(starts),
      lambda: ({"tokens": stream[s : s + TOKENS_PER_RECORD]} for s in starts),
    )

  masked = isinstance(data, masking.MaskedTextDataset)
  description = {
    "layout": "token_stream",
    "task": data.task,
    "columns": ["tokens"],
    "tokens_per_record": TOKENS_PER_RECORD,
    "num_tokens": {"train": len(data.train_tokens), "test": len(data.val_tokens)},
    "tokenizer": json.loads(data.tokenizer.to_json()),
    # What the source was loaded with; a run on the shards sets its own data.block_size etc.
    "block_size": data.block_size,
    "objective": "masked_lm" if masked else "lm",
    "mask_rate": data.mask_rate if masked else None,
  }
  return _Plan(description, {"train": split(data.train_tokens), "test": split(data.val_tokens)})


def _arrays(data: pipeline.ArrayDataset) -> _Plan:
  """A dataset of named arrays: each row a record {name: row}."""

  def split(arrays: pipeline.ArraySplit) -> _Split:
    names = list(arrays.arrays)
    return _Split(
      len(arrays),
      lambda: ({n: arrays.arrays[n][i] for n in names} for i in range(len(arrays))),
    )

  description = {
    "layout": "arrays",
    "task": data.task,
    "input_key": data.input_key,
    "columns": list(data.train.arrays),
    "model_hints": dict(data.model_hints),
    "tokenizer": None if data.tokenizer is None else json.loads(data.tokenizer.to_json()),
  }
  if isinstance(data, synthetic.Seq2SeqDataset):
    description["ids"] = {"pad_id": data.pad_id, "bos_id": data.bos_id, "eos_id": data.eos_id}
  return _Plan(description, {"train": split(data.train), "test": split(data.test)})


def write_arrayrecord(
  plan: _Plan,
  description: dict[str, Any],
  out: Path,
  *,
  shards: int | None = None,
  overwrite: bool = False,
  show_progress: bool = True,
) -> dict[str, Any]:
  """Writes the plan's splits as shards in `out`, then `description` (with the splits' files and
  record counts) as out/dataset.json; returns what was written there."""
  module = arrayrecord.array_record_module("jaxdl data convert --to arrayrecord")
  _check_out(out, overwrite)
  if overwrite:
    _remove_converted(out)
  out.mkdir(parents=True, exist_ok=True)
  splits = {}
  for name, split in plan.splits.items():
    count = _shard_count(split, shards)
    files = [arrayrecord.shard_name(name, k, count) for k in range(count)]
    _write_split(module, out, name, split, files, show_progress)
    splits[name] = {"num_records": split.num_records, "files": files}
  description = {**description, "splits": splits}
  text = json.dumps(description, indent=2, default=_json_default) + "\n"
  paths.write_atomic(out / arrayrecord.DESCRIPTION_FILE, text)
  return json.loads(text)


def _json_default(value: Any) -> Any:
  """numpy scalars and arrays in the provenance, as JSON numbers and lists."""
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  if isinstance(value, Path):
    return str(value)
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _shard_count(split: _Split, shards: int | None) -> int:
  """--shards, or one shard per SHARD_BYTES of records (sized from the first); at least one,
  at most one per record."""
  if shards is None:
    first = next(iter(split.records()), None)
    size = 0 if first is None else len(arrayrecord.encode_record(first))
    shards = math.ceil(size * split.num_records / SHARD_BYTES)
  return max(1, min(shards, split.num_records))


def _write_split(module, out: Path, name: str, split: _Split, files: list[str], show_progress):
  """The split's records, in order, into `files`: file k holds records
  [k * N // K, (k + 1) * N // K)."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  count = len(files)
  ends = [(k + 1) * split.num_records // count for k in range(count)]
  records_iter = split.records()
  with tqdm(
    total=split.num_records,
    desc=f"{name}: {count} shard{'s' if count > 1 else ''}",
    unit="rec",
    file=sys.stderr,
    disable=not show_progress,
    mininterval=1.0,
  ) as bar:
    written = 0
    for file, end in zip(files, ends):
      partial = out / (file + _PARTIAL)
      writer = module.ArrayRecordWriter(str(partial), arrayrecord.WRITER_OPTIONS)
      try:
        for record in records_iter:
          writer.write(arrayrecord.encode_record(record))
          written += 1
          bar.update(1)
          if written == end:
            break
      finally:
        writer.close()
      os.replace(partial, out / file)
  if written != split.num_records:  # A bug in a plan, never the user's data.
    raise RuntimeError(f"{name}: wrote {written} records, expected {split.num_records}")


def _check_out(out: Path, overwrite: bool) -> None:
  if out.exists() and not out.is_dir():
    raise UserError(f"--out {str(out)!r} is a file; give a folder (new or empty) to write into.")
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    held = sorted(p.name for p in out.iterdir())
    more = f" and {len(held) - 5} more" if len(held) > 5 else ""
    raise UserError(
      f"--out {str(out)!r} is not empty (it holds {', '.join(held[:5])}{more}); give a new or "
      f"empty folder, or pass --overwrite to replace a dataset converted there before (only "
      f"its {arrayrecord.DESCRIPTION_FILE} and shards are removed)."
    )


def _remove_converted(out: Path) -> None:
  """Removes what a conversion wrote in `out`: dataset.json first (so the folder stops counting
  as a dataset), then its shards and leftovers of an interrupted run."""
  if not out.is_dir():
    return
  (out / arrayrecord.DESCRIPTION_FILE).unlink(missing_ok=True)
  for split in arrayrecord.SPLITS:
    for pattern in (f"{split}-*-of-*{arrayrecord.SUFFIX}", f"{split}-*-of-*{_PARTIAL}"):
      for path in out.glob(pattern):
        path.unlink()
  (out / (arrayrecord.DESCRIPTION_FILE + ".tmp")).unlink(missing_ok=True)  # paths.write_atomic's.
