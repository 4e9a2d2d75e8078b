"""Synthetic sequence-to-sequence tasks: reverse or sort a random sequence of symbols.

Small, exactly solvable problems for testing encoder-decoder models: a model that has learnt the
task gets every test sequence right, and the test sequences never occur in training, so that
accuracy is generalisation, not memory.

Token ids: 0 = [PAD], 1 = [BOS], 2 = [EOS], 3.. = the symbols. An example with symbols x_1..x_L
(L uniform in [min_length, max_length], symbols uniform) is
  src = x_1 .. x_L [EOS], padded to max_length + 1,
  tgt = [BOS] y_1 .. y_L [EOS], padded to max_length + 2,
where y is x reversed or sorted (ascending ids).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxdl.data import pipeline
from jaxdl.data.tokenizers import BOS, EOS, PAD, CharTokenizer
from jaxdl.errors import DataError

# The options of `load_seq2seq`, with their defaults (config keys data.<option>).
OPTIONS = {
  "kind": "reverse",
  "num_train": 20000,
  "num_test": 1000,
  "min_length": 4,
  "max_length": 12,
  "num_symbols": 10,
  "generator_seed": 0,
}
KINDS = ("reverse", "sort")

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_SYMBOL = 3
# Symbol k is shown as SYMBOL_CHARS[k] by the tokenizer (so with 10 symbols, as digits).
SYMBOL_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclasses.dataclass(frozen=True)
class Seq2SeqDataset(pipeline.ArrayDataset):
  """An `ArrayDataset` of {"src": int32 [N, S], "tgt": int32 [N, T + 1]} with the ids a decoder
  needs to start and stop."""

  pad_id: int = PAD_ID
  bos_id: int = BOS_ID
  eos_id: int = EOS_ID


def load_seq2seq(
  data_dir: str = "",
  *,
  allow_download: bool | None = None,
  kind: str = "reverse",
  num_train: int = 20000,
  num_test: int = 1000,
  min_length: int = 4,
  max_length: int = 12,
  num_symbols: int = 10,
  generator_seed: int = 0,
) -> Seq2SeqDataset:
  """Generates a reverse or sort task (see the module docstring for the format).

  The test examples are drawn first, all distinct; training examples are then drawn i.i.d.,
  rejecting any that is a test example. The same options always give the same data.

  Args:
    data_dir: must be empty (the data is generated).
    allow_download: unused.
    kind: "reverse" or "sort".
    num_train, num_test: examples per split.
    min_length, max_length: the range of sequence lengths (symbols, without [EOS]).
    num_symbols: distinct symbols; the vocabulary is num_symbols + 3.
    generator_seed: seed of the generator (distinct from the training seed, so changing the
      training seed does not change the data).

  Returns:
    A Seq2SeqDataset; its tokenizer shows symbols as digits and letters (None when there are
    more than 62 symbols).

  Raises:
    DataError: a bad option, or too few distinct sequences for the test split.
  """
  del allow_download  # Nothing to download.
  if data_dir:
    raise DataError(
      f"The seq2seq dataset is generated, not read; leave data.dir empty (it is {data_dir!r})."
    )
  pipeline.check_choice_option("kind", kind, KINDS)
  num_train = pipeline.check_int_option("num_train", num_train, minimum=1)
  num_test = pipeline.check_int_option("num_test", num_test, minimum=1)
  min_length = pipeline.check_int_option("min_length", min_length, minimum=1)
  max_length = pipeline.check_int_option("max_length", max_length, minimum=min_length)
  num_symbols = pipeline.check_int_option("num_symbols", num_symbols, minimum=2)
  generator_seed = pipeline.check_int_option("generator_seed", generator_seed, minimum=0)
  num_distinct = sum(num_symbols**length for length in range(min_length, max_length + 1))
  if 2 * num_test > num_distinct:
    raise DataError(
      f"Lengths {min_length}..{max_length} over {num_symbols} symbols give only "
      f"{num_distinct} distinct sequences, too few for {num_test} distinct test examples and "
      f"training examples besides (at most half may be test). Lower data.num_test or raise "
      f"data.max_length or data.num_symbols."
    )

  rng = np.random.default_rng(generator_seed)
  test_symbols = _draw(
    rng, num_test, min_length, max_length, num_symbols, exclude=set(), distinct=True
  )
  exclude = {row.tobytes() for row in test_symbols}
  train_symbols = _draw(
    rng, num_train, min_length, max_length, num_symbols, exclude=exclude, distinct=False
  )
  splits = {
    name: pipeline.ArraySplit(make_example(symbols, kind))
    for name, symbols in (("train", train_symbols), ("test", test_symbols))
  }
  tokenizer = None
  if num_symbols <= len(SYMBOL_CHARS):
    tokenizer = CharTokenizer(chars=SYMBOL_CHARS[:num_symbols], specials=(PAD, BOS, EOS))
  source = {
    "kind": "synthetic",
    "task": kind,
    "num_train": num_train,
    "num_test": num_test,
    "generator_seed": generator_seed,
  }
  return Seq2SeqDataset(
    train=splits["train"],
    test=splits["test"],
    task="seq2seq",
    input_key="src",
    model_hints={"vocab_size": num_symbols + FIRST_SYMBOL},
    source=source,
    tokenizer=tokenizer,
  )


def make_example(symbols: np.ndarray, kind: str) -> dict[str, np.ndarray]:
  """The src/tgt arrays of sequences `symbols` (int [N, max_length], 0-padded at the end).

  Returns {"src": int32 [N, max_length + 1], "tgt": int32 [N, max_length + 2]}.
  """
  num, max_length = symbols.shape
  lengths = (symbols != PAD_ID).sum(axis=1)
  positions = np.arange(max_length)
  real = positions < lengths[:, None]
  if kind == "reverse":
    source_at = np.clip(lengths[:, None] - 1 - positions, 0, None)
    answer = np.where(real, np.take_along_axis(symbols, source_at, axis=1), PAD_ID)
  else:
    # Padding sorts last when it is bigger than every symbol; it is put back to 0 after.
    big = np.iinfo(np.int32).max
    answer = np.where(real, np.sort(np.where(real, symbols, big), axis=1), PAD_ID)
  rows = np.arange(num)
  src = np.zeros((num, max_length + 1), np.int32)
  src[:, :max_length] = symbols
  src[rows, lengths] = EOS_ID
  tgt = np.zeros((num, max_length + 2), np.int32)
  tgt[:, 0] = BOS_ID
  tgt[:, 1 : max_length + 1] = answer
  tgt[rows, lengths + 1] = EOS_ID
  return {"src": src, "tgt": tgt}


def _draw(
  rng: np.random.Generator,
  count: int,
  min_length: int,
  max_length: int,
  num_symbols: int,
  *,
  exclude: set[bytes],
  distinct: bool,
) -> np.ndarray:
  """int32 [count, max_length]: random symbol sequences, 0-padded, none in `exclude`, and no two
  alike if `distinct`. Drawn in chunks, so the result depends only on the generator's state."""
  rows, seen = [], set(exclude)
  while len(rows) < count:
    chunk = max(count - len(rows), 64)
    lengths = rng.integers(min_length, max_length + 1, size=chunk)
    symbols = rng.integers(FIRST_SYMBOL, FIRST_SYMBOL + num_symbols, size=(chunk, max_length))
    symbols = np.where(np.arange(max_length) < lengths[:, None], symbols, PAD_ID).astype(np.int32)
    for row in symbols:
      key = row.tobytes()
      if key in seen:
        continue
      if distinct:
        seen.add(key)
      rows.append(row)
      if len(rows) == count:
        break
  return np.stack(rows)
