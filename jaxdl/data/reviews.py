"""Review sentiment: Rotten Tomatoes snippets labelled fresh (1) or rotten (0).

The data is `rotten_tomatoes_corpus_full.csv.bz2` (rows `category,text,movie_name,
has_plot_and_reviews`; category fresh, rotten, or plot for plot summaries, which are dropped). It
is not shipped with jaxdl and not downloaded: on jaxdl dev machines it is in
../shared/data/rotten_tomatoes.

The train/test split is by a hash of each review's text: a review is in the test split when the
first 8 bytes of the SHA-256 of its UTF-8 text, read as a fraction of 2**64, are below
`test_fraction`. So the split does not depend on row order, identical reviews (the corpus has a
few dozen) land in the same split, and adding rows never moves the old ones. The tokenizer is
fitted on the training split only.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
from pathlib import Path

import numpy as np

from jaxdl.data import pipeline, pretrained_tokenizer
from jaxdl.data.text import decode_utf8
from jaxdl.data.tokenizers import TEXT_SPECIALS, ByteTokenizer, CharTokenizer, WordTokenizer
from jaxdl.errors import DataError

# The options of `load_reviews`, with their defaults (config keys data.<option>).
OPTIONS = {"tokenizer": "word", "vocab_size": 8000, "max_length": 64, "test_fraction": 0.1}
TOKENIZERS = ("word", "char", "byte")

FILE_NAME = "rotten_tomatoes_corpus_full.csv.bz2"
LABELS = {"rotten": 0, "fresh": 1}
DROPPED = ("plot",)  # Plot summaries, not reviews.
_COLUMNS = ("category", "text")  # The columns the loader reads (the CSV may have more).


def load_reviews(
  data_dir: str = "",
  *,
  allow_download: bool | None = None,
  tokenizer: str = "word",
  vocab_size: int = 8000,
  max_length: int = 64,
  test_fraction: float = 0.1,
) -> pipeline.ArrayDataset:
  """Loads the Rotten Tomatoes reviews as token ids and fresh/rotten labels.

  Batches are {"tokens": int32 [B, max_length], "label": int32 [B]}: each row is [CLS], then the
  review's first `max_length - 1` tokens, then [PAD] (id 0) to the end.

  Args:
    data_dir: the CSV file (`.csv`, or `.csv.bz2`), or a directory holding
      rotten_tomatoes_corpus_full.csv.bz2 (or the uncompressed .csv).
    allow_download: unused (the data is never downloaded); accepted like every loader's.
    tokenizer: "word" (lowercased words, the `vocab_size` most frequent of the training split),
      "char" (the training split's characters; unseen ones become [UNK]) or "byte" (UTF-8 bytes).
      All three have the special tokens [PAD]=0, [UNK], [CLS], [SEP], [MASK]. Or the folder of
      a published tokenizer with [CLS] and [PAD], such as BERT's, used as it is
      (jaxdl.data.pretrained_tokenizer); its [PAD] may have another id than 0.
    vocab_size: the word tokenizer's vocabulary size, special tokens included.
    max_length: tokens per review, [CLS] included.
    test_fraction: the expected fraction of reviews in the test split (see the module docstring).

  Raises:
    DataError: a bad option, no data, or a malformed CSV (naming the file and line).
  """
  del allow_download  # Nothing to download.
  pretrained = check_tokenizer_option(tokenizer)
  vocab_size = pipeline.check_int_option("vocab_size", vocab_size, minimum=len(TEXT_SPECIALS) + 1)
  max_length = pipeline.check_int_option("max_length", max_length, minimum=2)
  test_fraction = pipeline.check_fraction_option("test_fraction", test_fraction)

  path = find_file(data_dir)
  texts, labels = read_reviews(path)
  in_test = np.array([_hash_fraction(t) < test_fraction for t in texts], bool)
  if in_test.all() or not in_test.any():
    raise DataError(
      f"{str(path)!r} has {len(texts)} reviews and data.test_fraction={test_fraction} puts "
      f"{'all' if in_test.all() else 'none'} of them in the test split; use more reviews or "
      f"another test_fraction."
    )
  train_texts = [t for t, test in zip(texts, in_test) if not test]

  tok = fit_tokenizer(tokenizer, train_texts, vocab_size, pretrained)
  tokens = encode_reviews(tok, texts, max_length)
  labels = np.asarray(labels, np.int32)

  splits = {
    name: pipeline.ArraySplit({"tokens": tokens[rows], "label": labels[rows]})
    for name, rows in (("train", ~in_test), ("test", in_test))
  }
  source = {
    "kind": "data_dir",
    "path": str(path.resolve()),
    "num_train": len(splits["train"]),
    "num_test": len(splits["test"]),
    "tokenizer": tokenizer,
  }
  return pipeline.ArrayDataset(
    train=splits["train"],
    test=splits["test"],
    task="classify",
    input_key="tokens",
    model_hints={"num_classes": len(LABELS), "vocab_size": tok.vocab_size},
    source=source,
    tokenizer=tok,
  )


def find_file(data_dir: str) -> Path:
  """The CSV file `data_dir` names, or the one in the directory it names."""
  if not data_dir:
    raise DataError(
      f"The reviews dataset is not shipped with jaxdl and is not downloaded. Set data.dir to "
      f"the directory holding {FILE_NAME} (on jaxdl dev machines: "
      f"data.dir=../shared/data/rotten_tomatoes) or to the file itself."
    )
  path = Path(data_dir).expanduser()
  if path.is_dir():
    for name in (FILE_NAME, FILE_NAME.removesuffix(".bz2")):
      if (path / name).is_file():
        return path / name
    raise DataError(
      f"The reviews directory {str(path)!r} holds neither {FILE_NAME} nor "
      f"{FILE_NAME.removesuffix('.bz2')}. Point data.dir at the directory or file "
      f"with the Rotten Tomatoes corpus."
    )
  if not path.is_file():
    raise DataError(
      f"The reviews path {str(path)!r} does not exist. Set data.dir to the directory "
      f"holding {FILE_NAME}, or to the file itself."
    )
  return path


def read_reviews(path: Path) -> tuple[list[str], list[int]]:
  """The texts and labels (fresh 1, rotten 0) of the reviews in the CSV file, in file order.

  Raises:
    DataError: the file cannot be read, is not UTF-8, lacks a column, or has a malformed row or
      an unknown category (the message names the line).
  """
  try:
    raw = path.read_bytes()
    if path.suffix == ".bz2":
      raw = bz2.decompress(raw)
  except (OSError, EOFError, ValueError) as e:
    raise DataError(
      f"Cannot read {str(path)!r} ({e}); the file is missing or damaged. Replace "
      f"it with a good copy."
    ) from e
  reader = csv.reader(io.StringIO(decode_utf8(raw, str(path)), newline=""), strict=True)
  texts, labels = [], []
  try:
    header = next(reader, None)
    missing = [c for c in _COLUMNS if header is None or c not in header]
    if missing:
      raise DataError(
        f"{str(path)!r} line 1: the header {header} lacks the column(s) {missing}; "
        f"expected `category,text,movie_name,has_plot_and_reviews`."
      )
    category_at, text_at = header.index("category"), header.index("text")
    line = reader.line_num + 1  # Where the next record starts (a record may span lines).
    for row in reader:
      if len(row) != len(header):
        raise DataError(
          f"{str(path)!r} line {line}: {len(row)} fields where the header has "
          f"{len(header)}; the row is malformed (check its quoting)."
        )
      category = row[category_at]
      if category in LABELS:
        texts.append(row[text_at])
        labels.append(LABELS[category])
      elif category not in DROPPED:
        raise DataError(
          f"{str(path)!r} line {line}: unknown category {category!r}; expected one "
          f"of {', '.join(LABELS)} or {', '.join(DROPPED)}."
        )
      line = reader.line_num + 1
  except csv.Error as e:
    raise DataError(f"{str(path)!r} line {reader.line_num}: malformed CSV ({e}).") from e
  if not texts:
    raise DataError(
      f"{str(path)!r} holds no fresh or rotten reviews, so there is nothing to train on."
    )
  return texts, labels


def check_tokenizer_option(tokenizer):
  """The pretrained tokenizer data.tokenizer names by its folder (it must have [CLS] and [PAD]),
  or None for one of `TOKENIZERS`."""
  if tokenizer in TOKENIZERS:
    return None
  return pretrained_tokenizer.load_tokenizer_option(tokenizer, TOKENIZERS, ("pad", "cls"))


def fit_tokenizer(tokenizer: str, train_texts: list[str], vocab_size: int, pretrained=None):
  """The tokenizer data.tokenizer names, fitted on the training texts, with TEXT_SPECIALS; or
  `pretrained` (from `check_tokenizer_option`) as it is. Shared by jaxdl.data.record_text."""
  if tokenizer == "word":
    return WordTokenizer.fit(train_texts, vocab_size)
  if tokenizer == "char":
    return CharTokenizer.fit(train_texts, specials=TEXT_SPECIALS)
  if tokenizer == "byte":
    return ByteTokenizer(specials=TEXT_SPECIALS)
  return pretrained if pretrained is not None else check_tokenizer_option(tokenizer)


def encode_reviews(tokenizer, texts: list[str], max_length: int) -> np.ndarray:
  """int32 [len(texts), max_length]: [CLS], each text's first max_length - 1 tokens, [PAD]s."""
  ids = [tokenizer.encode(text) for text in texts]
  return pad_rows(ids, max_length, tokenizer.pad_id, tokenizer.cls_id)


def pad_rows(rows_ids, length: int, pad_id: int, first_id: int | None = None) -> np.ndarray:
  """int32 [len(rows_ids), length]: `first_id` (unless None), then each row's ids cut to fit,
  then `pad_id`s: the rows a text classifier reads."""
  tokens = np.full((len(rows_ids), length), pad_id, np.int32)
  start = 0 if first_id is None else 1
  if first_id is not None:
    tokens[:, 0] = first_id
  for row, ids in zip(tokens, rows_ids):
    ids = ids[: length - start]
    row[start : start + len(ids)] = ids
  return tokens


def _hash_fraction(text: str) -> float:
  """A number in [0, 1) fixed by `text`: the first 8 bytes of its SHA-256 over 2**64."""
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64
