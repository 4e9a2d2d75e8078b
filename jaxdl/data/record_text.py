"""Text from records: texts or token ids read into language-modelling token streams
(`lm_streams`, `text_lm_dataset`) or into padded rows for classification
(`text_classify_dataset`, laid out as data.name=reviews lays them out).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxdl.data import pipeline, reviews
from jaxdl.data import text as text_lib
from jaxdl.data.record_images import check_labels, read_labels
from jaxdl.data.record_source import RecordSource, read_field
from jaxdl.data.tokenizers import TEXT_SPECIALS, ByteTokenizer, check_ids
from jaxdl.errors import DataError


def read_texts(source: RecordSource, field: str) -> list[str]:
  """The `field` of every record as a str (UTF-8 bytes are decoded)."""
  texts = []
  for value in read_field(source, field):
    if isinstance(value, (bytes, bytearray)):
      value = text_lib.decode_utf8(bytes(value), f"field {field}")
    if not isinstance(value, str):
      raise DataError(
        f"The text field {field!r} holds {type(value).__name__} values, not text; name the text "
        f"column with data.text_column (or token ids with data.tokens_column)."
      )
    texts.append(value)
  return texts


def read_token_ids(source: RecordSource, field: str, vocab_size: int) -> list[np.ndarray]:
  """The `field` of every record as int64 ids [L], checked to lie in [0, vocab_size)."""
  ids = []
  for value in read_field(source, field):
    row = np.asarray(value)
    if row.ndim != 1 or not (np.issubdtype(row.dtype, np.integer) or row.size == 0):
      raise DataError(
        f"The tokens field {field!r} holds {row.dtype} values of shape {row.shape}, not 1-D "
        f"token ids; name the token-id column with data.tokens_column."
      )
    try:
      ids.append(check_ids(row, vocab_size))
    except DataError as e:
      raise DataError(
        f"The tokens field {field!r}: {e} Set data.tokenizer to the tokenizer that made them."
      ) from e
  return ids


def ids_tokenizer(tokenizer: str, objective: str = "lm"):
  """The tokenizer of token-id records: a pretrained tokenizer's folder, or "byte" (ids are the
  UTF-8 bytes, 0..255, for objective "lm" only)."""
  if tokenizer == "byte" and objective == "lm":
    return ByteTokenizer()
  if tokenizer in text_lib.TOKENIZERS or tokenizer in reviews.TOKENIZERS:
    raise DataError(
      f"data.tokenizer={tokenizer!r} makes its ids from text, but the records hold token ids "
      f"(data.tokens_column); set data.tokenizer to the folder of the tokenizer that made them "
      f"(or to 'byte' for UTF-8 bytes with data.objective=lm)."
    )
  return text_lib.check_tokenizer_option(tokenizer, objective)


def lm_streams(
  train: RecordSource,
  test: RecordSource | None,
  *,
  text_field: str = "",
  tokens_field: str = "",
  tokenizer: str = "char",
  objective: str = "lm",
  eval_fraction: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, Any]:
  """(train stream, validation stream, tokenizer) of text or token-id records.

  Texts are joined per split (jaxdl.data.text.join_works) and tokenized as data.name=text does:
  "char" fitted on both splits' text, "byte", or a pretrained tokenizer's folder. Token ids are
  concatenated per split. With `test` None, the last `eval_fraction` of the training stream is
  the validation stream.
  """
  if bool(text_field) == bool(tokens_field):
    raise DataError("Language modelling reads either a text field or a tokens field, not both.")
  splits = [train] if test is None else [train, test]
  if text_field:
    pretrained = text_lib.check_tokenizer_option(tokenizer, objective)
    texts = [text_lib.join_works(read_texts(split, text_field)) for split in splits]
    tok = text_lib.fit_tokenizer(tokenizer, text_lib.join_works(texts), objective, pretrained)
    streams = [text_lib.encode_stream(tok, text) for text in texts]
  else:
    tok = ids_tokenizer(tokenizer, objective)
    dtype = text_lib.stream_dtype(tok.vocab_size)
    streams = [
      np.concatenate(
        [*read_token_ids(split, tokens_field, tok.vocab_size), np.zeros(0, int)]
      ).astype(dtype)
      for split in splits
    ]
  if test is None:
    stream = streams[0]
    eval_fraction = pipeline.check_fraction_option("eval_fraction", eval_fraction)
    num_train = len(stream) - int(len(stream) * eval_fraction)
    streams = [stream[:num_train], stream[num_train:]]
  return streams[0], streams[1], tok


def text_lm_dataset(
  train_stream: np.ndarray,
  val_stream: np.ndarray,
  *,
  tokenizer,
  block_size: int,
  objective: str = "lm",
  mask_rate: float = 0.15,
  source: dict[str, Any],
):
  """A jaxdl.data.text.TextDataset (objective "lm") or masking.MaskedTextDataset ("masked_lm")
  of two token streams made by `tokenizer`."""
  block_size, mask_rate = text_lib.check_lm_options(block_size, objective, mask_rate)
  source = {**source, "num_train": len(train_stream), "num_val": len(val_stream)}
  return text_lib.lm_dataset(
    np.asarray(train_stream),
    np.asarray(val_stream),
    tokenizer=tokenizer,
    block_size=block_size,
    objective=objective,
    mask_rate=mask_rate,
    source=source,
  )


def text_classify_dataset(
  train: RecordSource,
  test: RecordSource,
  *,
  text_field: str = "",
  tokens_field: str = "",
  label_field: str,
  tokenizer: str = "word",
  vocab_size: int = 8000,
  max_length: int = 64,
  num_classes: int = 0,
  source: dict[str, Any],
) -> pipeline.ArrayDataset:
  """Text classification as data.name=reviews: batches {"tokens": int32 [B, max_length],
  "label": int32 [B]}, each row [CLS], the first max_length - 1 tokens, then [PAD]s.

  Args:
    text_field, tokens_field: the field holding the text, or (the other) its token ids.
    tokenizer: for text, "word", "char" or "byte" fitted on the training split, or a pretrained
      tokenizer's folder (with [CLS] and [PAD]); for token ids, the folder of their tokenizer.
    vocab_size: the word tokenizer's vocabulary size, special tokens included.
  """
  if bool(text_field) == bool(tokens_field):
    raise DataError("Text classification reads either a text field or a tokens field, not both.")
  max_length = pipeline.check_int_option("max_length", max_length, minimum=2)
  num_classes = pipeline.check_int_option("num_classes", num_classes, minimum=0)
  splits = {"train": train, "test": test}
  labels = {name: read_labels(split, label_field, name) for name, split in splits.items()}
  num_classes = check_labels(labels, num_classes, source)
  if text_field:
    pretrained = reviews.check_tokenizer_option(tokenizer)
    vocab_size = pipeline.check_int_option("vocab_size", vocab_size, minimum=len(TEXT_SPECIALS) + 1)
    texts = {name: read_texts(split, text_field) for name, split in splits.items()}
    tok = reviews.fit_tokenizer(tokenizer, texts["train"], vocab_size, pretrained)
    tokens = {name: reviews.encode_reviews(tok, texts[name], max_length) for name in splits}
  else:
    tok = ids_tokenizer(tokenizer, "classify")
    if tok.pad_id is None or tok.cls_id is None:
      raise DataError(
        f"The tokenizer {tokenizer!r} has no [CLS] or [PAD] token, which text classification "
        f"places itself; use a tokenizer with both (e.g. BERT's)."
      )
    tokens = {
      name: reviews.pad_rows(
        read_token_ids(split, tokens_field, tok.vocab_size), max_length, tok.pad_id, tok.cls_id
      )
      for name, split in splits.items()
    }
  arrays = {
    name: pipeline.ArraySplit({"tokens": tokens[name], "label": labels[name]}) for name in splits
  }
  source = {
    **source,
    "num_train": len(train),
    "num_test": len(test),
    "tokenizer": tokenizer,
    "fields": {
      "text" if text_field else "tokens": text_field or tokens_field,
      "label": label_field,
    },
  }
  return pipeline.ArrayDataset(
    train=arrays["train"],
    test=arrays["test"],
    task="classify",
    input_key="tokens",
    model_hints={"num_classes": num_classes, "vocab_size": tok.vocab_size},
    source=source,
    tokenizer=tok,
  )
