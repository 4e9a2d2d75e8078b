"""Language modelling on any UTF-8 text: a token stream cut into random windows.

`load_text` reads a text file, or a directory of `*.txt` files joined in name order, or (with no
`data_dir`) the Shakespeare corpus shipped with jaxdl; tokenizes it with a character or byte
tokenizer; and splits the token stream by position: the last `val_fraction` is validation, as in
nanoGPT. Training batches are windows of `block_size + 1` tokens at random positions (the model
reads the first `block_size` and predicts the last `block_size`); evaluation reads the validation
stream once in consecutive windows. With `objective="masked_lm"` the windows are read as BERT reads
them instead, masked (jaxdl.data.masking).
"""

from __future__ import annotations

import bz2
from collections.abc import Iterator, Sequence
import dataclasses
import hashlib
import importlib.resources
from pathlib import Path
import sys
from typing import Any, ClassVar

import grain
import numpy as np

from jaxdl.data import masking, pipeline, pretrained_tokenizer
from jaxdl.data.tokenizers import TEXT_SPECIALS, ByteTokenizer, CharTokenizer
from jaxdl.errors import DataError

# The options of `load_text`, with their defaults (config keys data.<option>).
OPTIONS = {
  "tokenizer": "char",
  "block_size": 256,
  "val_fraction": 0.1,
  "objective": "lm",
  "mask_rate": 0.15,
}
TOKENIZERS = ("char", "byte")
OBJECTIVES = ("lm", "masked_lm")  # Next-token prediction (GPT), or BERT's masked tokens.

# Seven tragedies, ~1.0 MB of text (see make_shakespeare_corpus), bzip2-compressed. The digest is
# of the file as shipped, so a damaged or truncated copy is caught before it is decompressed.
SHIPPED_CORPUS = "shakespeare/tragedies.txt.bz2"
SHIPPED_CORPUS_SHA256 = "410507d99a2cf2daaa4992dd14adf3f7966551e60e11e680835fc9e8eb9f7303"

# Works in a directory are joined with one blank line between them.
WORK_SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True)
class TextDataset:
  """A token stream for language modelling, split by position into training and validation.

  Training batches are {"tokens": int32 [B, block_size + 1]}. Global batch i holds
  B * shard_count windows whose starts are drawn uniformly from all valid starts of the training
  stream by numpy's generator seeded with (seed, i, 0); shard s takes the contiguous windows
  [s * B, (s + 1) * B). So the shards together see exactly the batches one process would, whatever
  their number. Batches are independent of each other, so the stream is deterministic for a seed
  and resumes exactly from a batch index.

  Attributes:
    train_tokens: the training token stream [N_train] (an unsigned dtype wide enough for the ids).
    val_tokens: the validation token stream [N_val], the text that follows the training stream.
    block_size: tokens the model reads per window; a window holds one more (the last target).
    tokenizer: the tokenizer that made the streams.
    source: provenance {"kind", "path", "files", "num_train", "num_val", "tokenizer"}.
  """

  train_tokens: np.ndarray
  val_tokens: np.ndarray
  block_size: int
  tokenizer: CharTokenizer | ByteTokenizer
  source: dict[str, Any]

  task: ClassVar[str] = "lm"
  input_key: ClassVar[str] = "tokens"

  def __post_init__(self):
    window = self.block_size + 1
    if len(self.train_tokens) < window or len(self.val_tokens) < window:
      raise DataError(
        f"The text ({self.source.get('path')}) gives {len(self.train_tokens)} training and "
        f"{len(self.val_tokens)} validation tokens, but each split needs at least "
        f"block_size + 1 = {window} for one window. Use more text, a smaller data.block_size, "
        f"or a data.val_fraction that leaves enough for both splits."
      )

  @property
  def model_hints(self) -> dict[str, Any]:
    return {"vocab_size": self.tokenizer.vocab_size}

  def train_batches(
    self,
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 4,
  ) -> grain.IterDataset:
    """An endless stream of {"tokens": int32 [batch_size, block_size + 1]} random windows.

    Shard `shard_index` yields windows [shard_index * batch_size, (shard_index + 1) * batch_size)
    of each global batch of `batch_size * shard_count` windows, so the concatenated batches of
    shards 0 .. shard_count - 1 are exactly the single-process batches of that size. One Grain
    element per batch (batch index -> windows), so `iter(...)` gives an iterator whose
    get_state()/set_state() resume exactly.
    """
    pipeline.check_train_args(
      batch_size=batch_size,
      seed=seed,
      shard_index=shard_index,
      shard_count=shard_count,
      num_threads=num_threads,
      prefetch=prefetch,
    )
    windows = _RandomWindows(
      self.train_tokens, self.block_size, batch_size, seed, shard_index, shard_count
    )
    return (
      grain.MapDataset.range(sys.maxsize)
      .map(windows)
      .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    )

  def steps_per_epoch(self, batch_size: int) -> int:
    """Updates that read about as many windows' worth of tokens as the training stream holds."""
    pipeline.check_positive_int("batch_size", batch_size)
    return max(1, len(self.train_tokens) // (batch_size * self.block_size))

  def val_windows(self) -> np.ndarray:
    """int32 [W, block_size + 1]: the validation stream in windows starting 0, T, 2T, ...

    Consecutive windows share one token (the last target of one is the first input of the next),
    so every validation token after the first is predicted exactly once, except the last
    `(N_val - 1) % T`, which do not fill a window.
    """
    starts = np.arange(0, len(self.val_tokens) - self.block_size, self.block_size)
    return _gather(self.val_tokens, starts, self.block_size)

  def eval_batches(self, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """`val_windows()` once, in order, as {"tokens", "mask" bool [B]}, padded to `batch_size`."""
    pipeline.check_positive_int("batch_size", batch_size)
    return pipeline.eval_batches(
      pipeline.ArraySplit({"tokens": self.val_windows()}), batch_size=batch_size
    )

  def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """Zeros shaped and typed like a training batch of `batch_size`."""
    pipeline.check_positive_int("batch_size", batch_size)
    return {"tokens": np.zeros((batch_size, self.block_size + 1), np.int32)}


class _RandomWindows:
  """Batch index -> {"tokens": int32 [B, T + 1]}: this shard's slice of the global batch's windows,
  whose starts are drawn for that batch alone."""

  def __init__(
    self,
    stream: np.ndarray,
    block_size: int,
    batch_size: int,
    seed: int,
    shard_index: int,
    shard_count: int,
  ):
    self._stream, self._block_size, self._batch_size = stream, block_size, batch_size
    self._seed, self._shard_index, self._shard_count = seed, shard_index, shard_count
    self._num_starts = len(stream) - block_size  # Starts 0 .. N - T - 1 fit a T + 1 window.

  def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
    # Every shard draws the whole global batch's starts (cheap next to gathering the windows) and
    # keeps its slice. The literal 0 stands where the shard index once was, so single-process
    # streams are unchanged.
    rng = np.random.default_rng([self._seed, int(batch_index), 0])
    starts = rng.integers(0, self._num_starts, size=self._batch_size * self._shard_count)
    first = self._shard_index * self._batch_size
    return {
      "tokens": _gather(self._stream, starts[first : first + self._batch_size], self._block_size)
    }

  def __repr__(self) -> str:
    return (
      f"_RandomWindows(num_tokens={len(self._stream)}, block_size={self._block_size}, "
      f"batch_size={self._batch_size}, shard={self._shard_index} of {self._shard_count})"
    )


def _gather(stream: np.ndarray, starts: np.ndarray, block_size: int) -> np.ndarray:
  """int32 [len(starts), block_size + 1]: the windows of `stream` at `starts`."""
  return stream[starts[:, None] + np.arange(block_size + 1)].astype(np.int32)


def load_text(
  data_dir: str = "",
  *,
  allow_download: bool | None = None,
  tokenizer: str = "char",
  block_size: int = 256,
  val_fraction: float = 0.1,
  objective: str = "lm",
  mask_rate: float = 0.15,
) -> TextDataset | masking.MaskedTextDataset:
  """Loads a text for language modelling: next-token (a `TextDataset`) or masked, as BERT (a
  jaxdl.data.masking.MaskedTextDataset).

  Args:
    data_dir: a UTF-8 text file, or a directory whose `*.txt` files are joined in name order with
      a blank line between them; empty for the Shakespeare corpus shipped with jaxdl.
    allow_download: unused (text is never downloaded); accepted like every loader's.
    tokenizer: "char" (the sorted unique characters of the whole text, both splits, as nanoGPT
      does, so validation never meets an unknown character), "byte" (UTF-8 bytes, 256 ids), or
      the folder of a published tokenizer such as GPT-2's or BERT's, used as it is
      (jaxdl.data.pretrained_tokenizer).
    block_size: tokens per training window the model reads.
    val_fraction: the last this fraction of the token stream is the validation split.
    objective: "lm" (predict each next token) or "masked_lm" (BERT: rows [CLS] + block_size - 2
      tokens + [SEP], `mask_rate` of the tokens chosen and predicted; the tokenizer gains the
      special tokens [PAD]=0, [UNK], [CLS], [SEP], [MASK] before the characters or bytes).
    mask_rate: the fraction of each row's tokens masked LM chooses; only for "masked_lm".

  Raises:
    DataError: a bad option; the path is missing, empty or not UTF-8; or the text is too short for
      one window of `block_size + 1` tokens in either split.
  """
  del allow_download  # Nothing to download.
  block_size, mask_rate = check_lm_options(block_size, objective, mask_rate)
  val_fraction = pipeline.check_fraction_option("val_fraction", val_fraction)
  pretrained = check_tokenizer_option(tokenizer, objective)

  if data_dir:
    path = Path(data_dir).expanduser()
    text, num_files = read_texts(path)
    source = {"kind": "data_dir", "path": str(path.resolve()), "files": num_files}
  else:
    text, resource = load_shipped_corpus()
    source = {"kind": "shipped_corpus", "path": resource, "files": 1}

  tok = fit_tokenizer(tokenizer, text, objective, pretrained)
  stream = encode_stream(tok, text)
  num_train = len(stream) - int(len(stream) * val_fraction)
  source = {
    **source,
    "num_train": num_train,
    "num_val": len(stream) - num_train,
    "tokenizer": tokenizer,
  }
  return lm_dataset(
    stream[:num_train],
    stream[num_train:],
    tokenizer=tok,
    block_size=block_size,
    objective=objective,
    mask_rate=mask_rate,
    source=source,
  )


# The steps of `load_text` that other text sources share (jaxdl.data.record_text).


def check_lm_options(block_size, objective, mask_rate) -> tuple[int, float]:
  """data.block_size and data.mask_rate checked against data.objective; DataError if bad."""
  block_size = pipeline.check_int_option("block_size", block_size, minimum=1)
  pipeline.check_choice_option("objective", objective, OBJECTIVES)
  mask_rate = pipeline.check_fraction_option("mask_rate", mask_rate)
  if objective != "masked_lm" and mask_rate != OPTIONS["mask_rate"]:
    raise DataError(
      f"data.mask_rate={mask_rate} is for data.objective=masked_lm, but the objective is "
      f"{objective!r}; set data.objective=masked_lm or leave data.mask_rate out."
    )
  return block_size, mask_rate


def check_tokenizer_option(tokenizer, objective: str):
  """The pretrained tokenizer data.tokenizer names by its folder, or None for "char" / "byte"."""
  if tokenizer in TOKENIZERS:
    return None
  needs = ("pad", "cls", "sep", "mask") if objective == "masked_lm" else ()
  return pretrained_tokenizer.load_tokenizer_option(tokenizer, TOKENIZERS, needs)


def fit_tokenizer(tokenizer: str, text: str, objective: str, pretrained=None):
  """The tokenizer data.tokenizer names for `text`: "char" fitted on it, "byte", or `pretrained`
  (from `check_tokenizer_option`); with the special tokens masked LM needs."""
  specials = TEXT_SPECIALS if objective == "masked_lm" else ()
  if tokenizer == "char":
    return CharTokenizer.fit(text, specials)
  if tokenizer == "byte":
    return ByteTokenizer(specials)
  return pretrained if pretrained is not None else check_tokenizer_option(tokenizer, objective)


def encode_stream(tokenizer, text: str) -> np.ndarray:
  """The token ids of `text` in the narrowest unsigned dtype that holds the vocabulary."""
  # Keeps big corpora small in memory; batches are converted to int32 as they are gathered.
  return np.asarray(tokenizer.encode(text)).astype(stream_dtype(tokenizer.vocab_size))


def stream_dtype(vocab_size: int) -> np.dtype:
  """The narrowest of uint8, uint16, int32 that holds ids [0, vocab_size)."""
  return np.dtype(
    next(t for t in (np.uint8, np.uint16, np.int32) if vocab_size <= np.iinfo(t).max + 1)
  )


def lm_dataset(
  train_tokens: np.ndarray,
  val_tokens: np.ndarray,
  *,
  tokenizer,
  block_size: int,
  objective: str,
  mask_rate: float,
  source: dict[str, Any],
) -> TextDataset | masking.MaskedTextDataset:
  """The language-modelling dataset of two token streams, for `objective` "lm" or "masked_lm"."""
  if objective == "masked_lm":
    return masking.MaskedTextDataset(
      train_tokens=train_tokens,
      val_tokens=val_tokens,
      block_size=block_size,
      tokenizer=tokenizer,
      source=source,
      mask_rate=mask_rate,
    )
  return TextDataset(
    train_tokens=train_tokens,
    val_tokens=val_tokens,
    block_size=block_size,
    tokenizer=tokenizer,
    source=source,
  )


def read_texts(path: Path) -> tuple[str, int]:
  """The text of a file, or of a directory's `*.txt` files joined by `join_works`; and the number
  of files read.

  Raises:
    DataError: `path` is missing, is a directory without `*.txt` files, holds no text, or a file
      is not UTF-8.
  """
  if path.is_dir():
    files = sorted((p for p in path.glob("*.txt") if p.is_file()), key=lambda p: p.name)
    if not files:
      raise DataError(
        f"The text directory {str(path)!r} holds no *.txt files. Put the training text there "
        f"as UTF-8 files ending in .txt, or point data.dir at a text file."
      )
  elif path.is_file():
    files = [path]
  else:
    raise DataError(
      f"The text path {str(path)!r} does not exist. Set data.dir to a UTF-8 text file or a "
      f"directory of *.txt files, or leave it empty for the Shakespeare corpus shipped with "
      f"jaxdl."
    )
  texts = []
  for file in files:
    try:
      raw = file.read_bytes()
    except OSError as e:
      raise DataError(f"Cannot read the text file {str(file)!r}: {e}.") from e
    texts.append(decode_utf8(raw, str(file)))
  text = join_works(texts)
  if not text.strip():
    what = (
      f"text file {str(path)!r} is"
      if path.is_file()
      else f"{len(files)} *.txt files in {str(path)!r} are"
    )
    raise DataError(
      f"The {what} empty (or only whitespace); there is nothing to train on. Point "
      f"data.dir at the training text."
    )
  return text, len(files)


def join_works(texts: Sequence[str]) -> str:
  """Joins texts with one blank line between them (trailing newlines of each are dropped)."""
  return WORK_SEPARATOR.join(text.rstrip("\n") for text in texts)


def decode_utf8(raw: bytes, name: str) -> str:
  """`raw` decoded as UTF-8 (a leading byte-order mark dropped).

  Raises:
    DataError: naming `name` and the byte offset of the first invalid byte.
  """
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(
      f"{name!r} is not UTF-8 text: the byte at offset {e.start} (0x{raw[e.start]:02x}) is "
      f"invalid ({e.reason}). Convert the file to UTF-8, e.g. for Latin-1 text "
      f"`iconv -f latin1 -t utf-8 IN > OUT`."
    ) from e
  return text.removeprefix("\ufeff")


def load_shipped_corpus() -> tuple[str, str]:
  """The Shakespeare corpus shipped with jaxdl, checked against its SHA-256; and its location.

  Raises:
    DataError: the file is missing or damaged.
  """
  resource = importlib.resources.files(__package__).joinpath(SHIPPED_CORPUS)
  rebuild = (
    "Reinstall jaxdl, or rebuild the file with `python -m "
    "jaxdl.data.make_shakespeare_corpus ../shared/data/shakespeare jaxdl/data/shakespeare`"
    ", or set data.dir to a text of your own."
  )
  try:
    compressed = resource.read_bytes()
  except OSError as e:
    raise DataError(
      f"The Shakespeare corpus shipped with jaxdl is missing: cannot read "
      f"{str(resource)!r} ({e}). {rebuild}"
    ) from e
  digest = hashlib.sha256(compressed).hexdigest()
  if digest != SHIPPED_CORPUS_SHA256:
    raise DataError(
      f"The Shakespeare corpus shipped with jaxdl, {str(resource)!r}, is damaged: "
      f"its SHA-256 is {digest}, expected {SHIPPED_CORPUS_SHA256}. {rebuild}"
    )
  return decode_utf8(bz2.decompress(compressed), str(resource)), str(resource)
