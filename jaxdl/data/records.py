"""Datasets made of records: the layer the `hf`, `parquet` and `arrayrecord` sources share.

The records come from a record source (jaxdl.data.record_source); images become a dataset in
jaxdl.data.record_images, texts and token ids in jaxdl.data.record_text. This module turns the
config's data.* options into one of them.

Field conventions (the config names the fields: data.image_column, data.text_column,
data.tokens_column, data.label_column; left empty, the columns named image or img, text, input_ids
or tokens, and label are used):
- image: uint8 pixels [H, W] or [H, W, C] (a numpy array or nested lists of integers 0..255),
  encoded image bytes (PNG, JPEG, ...: Pillow decodes them), a Hugging Face Image struct
  {"bytes": ..., "path": ...}, or a PIL image. Grayscale gives C = 1; palette and other modes
  become RGB, and an RGB dataset widens its grayscale images to 3 channels. All images must share
  their shape, unless data.image_size = S > 0: then each image's shorter side is resized to S and
  the centre S x S taken. Shapes are checked as images are read, the first image's is the rule.
- label: an integer class id in [0, num_classes); num_classes 0 means the largest label + 1.
- text: a str (or UTF-8 bytes). For language modelling the texts of a split are joined with a
  blank line between them (jaxdl.data.text.join_works) into one token stream.
- tokens: a 1-D sequence of integer token ids, made by the tokenizer data.tokenizer names (a
  pretrained tokenizer's folder, or "byte" for UTF-8 bytes); a split's sequences are concatenated.

What the records become, by data.task ("auto": an image field -> "classify" images; a text or
tokens field with a label field -> "classify" text; without labels -> "lm"):
- images (jaxdl.data.record_images.image_dataset): images and labels, decoded once into memory
  when they fit (data.cache=auto; memory: always; none: never), else read at random from the
  records as batches need them. Either way its batches equal to the bit those of a
  `jaxdl.data.pipeline.Split` holding the same images, with the same seed and augmentation
  (data.augment, data.normalize, ... as CIFAR's, but off by default: normalising reads every
  training image once at load to compute the statistics).
- text classification (jaxdl.data.record_text.text_classify_dataset): token ids [CLS] + text +
  [PAD]s and labels, as the reviews dataset.
- language modelling (jaxdl.data.record_text.text_lm_dataset): a token stream (data.objective
  "lm" or "masked_lm").
A source without an evaluation split gives the last data.eval_fraction of its token stream (LM),
or (classification) the rows a fixed permutation (numpy's generator seeded with 0) puts first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxdl.data import pipeline
from jaxdl.data import text as text_lib
from jaxdl.data.record_images import image_dataset
from jaxdl.data.record_source import RecordSource, Subset, split_rows
from jaxdl.data.record_text import lm_streams, text_classify_dataset, text_lm_dataset
from jaxdl.errors import DataError

# The data.* options every record source takes, with their defaults.
OPTIONS = {
  "task": "auto",
  "image_column": "",
  "text_column": "",
  "tokens_column": "",
  "label_column": "",
  "num_classes": 0,
  "eval_fraction": 0.1,
  "image_size": 0,
  "augment": "none",
  "normalize": False,
  "crop_padding": 4,
  "padding_mode": "zero",
  "cache": "auto",
  "tokenizer": "char",
  "vocab_size": 8000,
  "max_length": 64,
  "block_size": 256,
  "objective": "lm",
  "mask_rate": 0.15,
}
TASKS = ("auto", "classify", "lm")
# Column names used when the config names none, in order of preference.
USUAL_COLUMNS = {
  "image": ("image", "img"),
  "text": ("text",),
  "tokens": ("input_ids", "tokens"),
  "label": ("label",),
}


def resolve_fields(
  columns: Sequence[str],
  *,
  task: str = "auto",
  image_column: str = "",
  text_column: str = "",
  tokens_column: str = "",
  label_column: str = "",
) -> tuple[str, dict[str, str]]:
  """(task, {"image" | "text" | "tokens": field, "label"?: field}) for records with `columns`.

  A column left empty in the config is the first of `USUAL_COLUMNS` the records have; exactly one
  of image, text and tokens is used. Task "auto" classifies images, and texts or token ids that
  have a label; it models the language of those that have none.

  Raises:
    DataError: a named column the records lack (listing theirs), no input column, or a task the
      columns cannot serve.
  """
  pipeline.check_choice_option("task", task, TASKS)
  columns = list(columns)
  named = {"image": image_column, "text": text_column, "tokens": tokens_column}
  for kind, column in (*named.items(), ("label", label_column)):
    if column and column not in columns:
      raise DataError(
        f"data.{kind}_column={column!r} is not a column of this data; its columns are "
        f"{columns}. Set data.{kind}_column to one of them."
      )
  inputs = {kind: column for kind, column in named.items() if column}
  if len(inputs) > 1:
    raise DataError(
      f"Set only one of data.image_column, data.text_column and data.tokens_column; got "
      f"{', '.join(f'data.{k}_column={v!r}' for k, v in inputs.items())}."
    )
  if not inputs:
    found = [(kind, name) for kind in named for name in USUAL_COLUMNS[kind] if name in columns]
    if not found:
      raise DataError(
        f"No image, text or token-id column found among the data's columns {columns}; set "
        f"data.image_column, data.text_column or data.tokens_column to one of them."
      )
    inputs = dict(found[:1])
  label = label_column or next((c for c in USUAL_COLUMNS["label"] if c in columns), "")
  ((kind, field),) = inputs.items()
  if task == "auto":
    task = "classify" if kind == "image" or label else "lm"
  if task == "classify" and not label:
    raise DataError(
      f"Classification needs a label column, and the data's columns {columns} have none named "
      f"'label'; set data.label_column to the one holding integer class ids."
    )
  if task == "lm" and kind == "image":
    raise DataError(
      f"data.task=lm models text, but the input column {field!r} holds images; set "
      f"data.text_column or data.tokens_column, or data.task=classify."
    )
  fields = {kind: field}
  if task == "classify":
    fields["label"] = label
  return task, fields


def build_dataset(
  train: RecordSource,
  test: RecordSource | None,
  *,
  columns: Sequence[str],
  source: dict[str, Any],
  task: str = OPTIONS["task"],
  image_column: str = "",
  text_column: str = "",
  tokens_column: str = "",
  label_column: str = "",
  num_classes: int = OPTIONS["num_classes"],
  eval_fraction: float = OPTIONS["eval_fraction"],
  image_size: int = OPTIONS["image_size"],
  augment: str = OPTIONS["augment"],
  normalize: bool = OPTIONS["normalize"],
  crop_padding: int = OPTIONS["crop_padding"],
  padding_mode: str = OPTIONS["padding_mode"],
  cache: str = OPTIONS["cache"],
  tokenizer: str = OPTIONS["tokenizer"],
  vocab_size: int = OPTIONS["vocab_size"],
  max_length: int = OPTIONS["max_length"],
  block_size: int = OPTIONS["block_size"],
  objective: str = OPTIONS["objective"],
  mask_rate: float = OPTIONS["mask_rate"],
):
  """The dataset the `OPTIONS` ask for, from records whose fields are `columns`.

  `test` None: the evaluation split is carved out of `train` by `eval_fraction` (see the module
  docstring). Returns a `record_images.RecordImageDataset`, a `pipeline.ArrayDataset` (text
  classification) or a `TextDataset` / `MaskedTextDataset` (language modelling).
  """
  task, fields = resolve_fields(
    columns,
    task=task,
    image_column=image_column,
    text_column=text_column,
    tokens_column=tokens_column,
    label_column=label_column,
  )
  source = {**source, "task": task}
  if hasattr(train, "select"):  # Sources that can (ArrowRecords) read only the fields used.
    train, test = (split and split.select(fields.values()) for split in (train, test))
  if task == "lm":
    text_lib.check_lm_options(block_size, objective, mask_rate)
    train_stream, val_stream, tok = lm_streams(
      train,
      test,
      text_field=fields.get("text", ""),
      tokens_field=fields.get("tokens", ""),
      tokenizer=tokenizer,
      objective=objective,
      eval_fraction=eval_fraction,
    )
    return text_lm_dataset(
      train_stream,
      val_stream,
      tokenizer=tok,
      block_size=block_size,
      objective=objective,
      mask_rate=mask_rate,
      source={**source, "tokenizer": tokenizer},
    )
  if test is None:
    train_rows, eval_rows = split_rows(len(train), eval_fraction)
    train, test = Subset(train, train_rows), Subset(train, eval_rows)
    source = {**source, "eval_fraction": eval_fraction}
  if "image" in fields:
    return image_dataset(
      train,
      test,
      image_field=fields["image"],
      label_field=fields["label"],
      num_classes=num_classes,
      image_size=image_size,
      augment=augment,
      normalize=normalize,
      crop_padding=crop_padding,
      padding_mode=padding_mode,
      cache=cache,
      source=source,
    )
  return text_classify_dataset(
    train,
    test,
    text_field=fields.get("text", ""),
    tokens_field=fields.get("tokens", ""),
    label_field=fields["label"],
    tokenizer=tokenizer,
    vocab_size=vocab_size,
    max_length=max_length,
    num_classes=num_classes,
    source=source,
  )
