"""Tokenizers: text <-> int32 token ids, saved with a run as JSON so sampling can reload them.

Three kinds, all with the same small API (`encode`, `decode`, `vocab_size`, the special-token ids,
`to_json`; `tokenizer_from_json` rebuilds any of them):

- `CharTokenizer`: one id per character of a fixed vocabulary, the sorted unique characters of
  the training text (nanoGPT's shakespeare_char: tiny-shakespeare gives 65 ids).
- `ByteTokenizer`: one id per UTF-8 byte, 256 ids; any text encodes.
- `WordTokenizer`: lowercased words and punctuation marks, the `vocab_size` most frequent ones
  of the training texts; other words become [UNK].

Published tokenizers (GPT-2's, BERT's) have the same API: `jaxdl.data.pretrained_tokenizer`.

Special tokens are optional and always come first, so [PAD] (when present) is id 0 and the other
ids are shifted up by their number. A language model's char tokenizer has none, so its ids
0..V-1 are exactly the characters.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
import dataclasses
import json
import re

import numpy as np

from jaxdl.errors import DataError

PAD, UNK, CLS, SEP, MASK, BOS, EOS = (
  "[PAD]",
  "[UNK]",
  "[CLS]",
  "[SEP]",
  "[MASK]",
  "[BOS]",
  "[EOS]",
)
# The special tokens of tokenizers for classification and masked modelling, in id order.
TEXT_SPECIALS = (PAD, UNK, CLS, SEP, MASK)
_KNOWN_SPECIALS = (PAD, UNK, CLS, SEP, MASK, BOS, EOS)

# Words and punctuation: a run of word characters, or any single other non-space character.
_WORD_RE = re.compile(r"\w+|[^\w\s]")
JSON_FORMAT = 1
# How many unknown characters an error lists.
_SHOWN_UNKNOWN = 10


class _Specials:
  """Ids of the special tokens, which occupy ids 0..len(specials)-1 in the order given."""

  specials: tuple[str, ...]

  def _check_specials(self) -> None:
    specials = tuple(self.specials)
    unknown = [s for s in specials if s not in _KNOWN_SPECIALS]
    if unknown or len(set(specials)) != len(specials):
      raise DataError(
        f"Special tokens must be distinct names from {_KNOWN_SPECIALS}, got {specials}."
      )
    if PAD in specials and specials[0] != PAD:
      raise DataError(f"{PAD} must be the first special token (id 0), got {specials}.")
    object.__setattr__(self, "specials", specials)

  def _special_id(self, name: str) -> int | None:
    return self.specials.index(name) if name in self.specials else None

  @property
  def pad_id(self) -> int | None:
    return self._special_id(PAD)

  @property
  def unk_id(self) -> int | None:
    return self._special_id(UNK)

  @property
  def cls_id(self) -> int | None:
    return self._special_id(CLS)

  @property
  def sep_id(self) -> int | None:
    return self._special_id(SEP)

  @property
  def mask_id(self) -> int | None:
    return self._special_id(MASK)

  @property
  def bos_id(self) -> int | None:
    return self._special_id(BOS)

  @property
  def eos_id(self) -> int | None:
    return self._special_id(EOS)

  def _check_ids(self, ids) -> np.ndarray:
    return check_ids(ids, self.vocab_size)


@dataclasses.dataclass(frozen=True)
class CharTokenizer(_Specials):
  """One id per character: specials first, then `chars` in order.

  Text with a character outside `chars` is an error, unless the tokenizer has [UNK], which then
  stands for it.

  Attributes:
    chars: the vocabulary's characters, distinct; `fit` sorts them by code point.
    specials: special-token names (e.g. TEXT_SPECIALS), ids 0..len(specials)-1.
  """

  chars: str
  specials: tuple[str, ...] = ()

  kind = "char"

  def __post_init__(self):
    self._check_specials()
    if not isinstance(self.chars, str) or not self.chars:
      raise DataError(
        f"A char tokenizer needs a non-empty string of characters, got {self.chars!r}."
      )
    if len(set(self.chars)) != len(self.chars):
      raise DataError("A char tokenizer's characters must be distinct.")
    codes = _code_points(self.chars)
    order = np.argsort(codes)
    # Sorted code points and the id of each, for a vectorised lookup in `encode`.
    object.__setattr__(self, "_sorted_codes", codes[order])
    object.__setattr__(self, "_sorted_ids", order.astype(np.int32) + len(self.specials))
    object.__setattr__(self, "_pieces", list(self.specials) + list(self.chars))

  @classmethod
  def fit(cls, text: str | Iterable[str], specials: Sequence[str] = ()) -> CharTokenizer:
    """The tokenizer whose vocabulary is the sorted unique characters of `text` (or texts)."""
    texts = [text] if isinstance(text, str) else list(text)
    codes = np.unique(np.concatenate([_code_points(t) for t in texts] or [np.zeros(0, np.uint32)]))
    if not codes.size:
      raise DataError("Cannot build a character vocabulary from empty text.")
    chars = codes.astype("<u4").tobytes().decode("utf-32-le", errors="surrogatepass")
    return cls(chars=chars, specials=tuple(specials))

  @property
  def vocab_size(self) -> int:
    return len(self.specials) + len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    """int32 [len(text)]: the id of each character of `text`.

    Raises:
      DataError: `text` has characters outside the vocabulary and the tokenizer has no [UNK].
    """
    codes = _code_points(text)
    position = np.searchsorted(self._sorted_codes, codes)
    position = np.minimum(position, len(self._sorted_codes) - 1)
    known = self._sorted_codes[position] == codes
    ids = self._sorted_ids[position]
    if not known.all():
      if self.unk_id is None:
        unknown = list(dict.fromkeys(chr(c) for c in codes[~known][:1000].tolist()))[
          :_SHOWN_UNKNOWN
        ]
        count = int((~known).sum())
        raise DataError(
          f"The text has {count} character{'s' * (count != 1)} outside this tokenizer's "
          f"vocabulary of {len(self.chars)} characters, e.g. {', '.join(map(repr, unknown))}. "
          f"The vocabulary comes from the training text: use only characters seen in "
          f"training (or train with the byte tokenizer, which encodes any text)."
        )
      ids = np.where(known, ids, np.int32(self.unk_id))
    return ids.astype(np.int32)

  def decode(self, ids) -> str:
    """The text of token ids (int [L]); special tokens appear as their names, e.g. "[PAD]"."""
    return "".join(self._pieces[i] for i in self._check_ids(ids).tolist())

  def to_json(self) -> str:
    return json.dumps(
      {
        "format": JSON_FORMAT,
        "kind": self.kind,
        "specials": list(self.specials),
        "chars": self.chars,
      }
    )


@dataclasses.dataclass(frozen=True)
class ByteTokenizer(_Specials):
  """One id per UTF-8 byte: specials first, then the 256 byte values in order."""

  specials: tuple[str, ...] = ()

  kind = "byte"

  def __post_init__(self):
    self._check_specials()

  @property
  def vocab_size(self) -> int:
    return len(self.specials) + 256

  def encode(self, text: str) -> np.ndarray:
    """int32 [number of UTF-8 bytes of `text`]: each byte's id."""
    try:
      raw = text.encode("utf-8")
    except UnicodeEncodeError as e:
      raise DataError(
        f"The text cannot be encoded as UTF-8 at character {e.start} "
        f"({e.object[e.start]!r}: {e.reason})."
      ) from e
    return np.frombuffer(raw, np.uint8).astype(np.int32) + len(self.specials)

  def decode(self, ids) -> str:
    """The text of token ids (int [L]); special tokens appear as their names, e.g. "[PAD]".

    Bytes that are not valid UTF-8 (a model can emit any byte sequence) decode to U+FFFD.
    """
    pieces, run = [], bytearray()
    offset = len(self.specials)
    for i in self._check_ids(ids).tolist():
      if i >= offset:
        run.append(i - offset)
      else:
        pieces.append(run.decode("utf-8", errors="replace"))
        pieces.append(self.specials[i])
        run = bytearray()
    pieces.append(run.decode("utf-8", errors="replace"))
    return "".join(pieces)

  def to_json(self) -> str:
    return json.dumps({"format": JSON_FORMAT, "kind": self.kind, "specials": list(self.specials)})


@dataclasses.dataclass(frozen=True)
class WordTokenizer(_Specials):
  """Lowercased words and punctuation marks; ids are TEXT_SPECIALS then `words` in order.

  Text is split into runs of word characters and single punctuation marks (`split_words`); words
  outside the vocabulary become [UNK]. Decoding joins tokens with spaces, so it gives back the
  words, not the original spacing.

  Attributes:
    words: the vocabulary, distinct, most frequent first (see `fit`).
  """

  words: tuple[str, ...]
  specials: tuple[str, ...] = TEXT_SPECIALS

  kind = "word"

  def __post_init__(self):
    self._check_specials()
    if UNK not in self.specials:
      raise DataError(f"A word tokenizer needs the {UNK} special token for unseen words.")
    words = tuple(self.words)
    if len(set(words)) != len(words) or set(words) & set(self.specials):
      raise DataError("A word tokenizer's words must be distinct and not special-token names.")
    object.__setattr__(self, "words", words)
    offset = len(self.specials)
    object.__setattr__(self, "_index", {w: i + offset for i, w in enumerate(words)})
    object.__setattr__(self, "_pieces", list(self.specials) + list(words))

  @classmethod
  def fit(
    cls, texts: Iterable[str], vocab_size: int, specials: Sequence[str] = TEXT_SPECIALS
  ) -> WordTokenizer:
    """The tokenizer of the `vocab_size - len(specials)` most frequent words of `texts`.

    Ties in frequency are broken by the word itself (sorted), so the vocabulary does not depend on
    the order of `texts`. `vocab_size` counts the special tokens; the vocabulary is smaller when
    the texts have fewer distinct words.
    """
    if vocab_size <= len(specials):
      raise DataError(
        f"vocab_size must exceed the {len(specials)} special tokens, got {vocab_size}."
      )
    counts = collections.Counter(word for text in texts for word in split_words(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return cls(
      words=tuple(w for w, _ in ranked[: vocab_size - len(specials)]), specials=tuple(specials)
    )

  @property
  def vocab_size(self) -> int:
    return len(self.specials) + len(self.words)

  def encode(self, text: str) -> np.ndarray:
    """int32 [number of words and punctuation marks in `text`]; unseen words become [UNK]."""
    unk = self.unk_id
    return np.array([self._index.get(w, unk) for w in split_words(text)], np.int32)

  def decode(self, ids) -> str:
    """The tokens of `ids` (int [L]) joined by spaces; special tokens appear as their names."""
    return " ".join(self._pieces[i] for i in self._check_ids(ids).tolist())

  def to_json(self) -> str:
    return json.dumps(
      {
        "format": JSON_FORMAT,
        "kind": self.kind,
        "specials": list(self.specials),
        "words": list(self.words),
      }
    )


Tokenizer = CharTokenizer | ByteTokenizer | WordTokenizer


def check_ids(ids, vocab_size: int) -> np.ndarray:
  """int64 [L]: `ids` (int [L]) checked to be token ids in [0, vocab_size).

  Raises:
    DataError: `ids` is not a 1-D integer array, or an id is outside the vocabulary.
  """
  ids = np.asarray(ids)
  if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
    raise DataError(
      f"decode takes a 1-D array of integer token ids, got {ids.dtype} with shape {ids.shape}."
    )
  bad = ids[(ids < 0) | (ids >= vocab_size)]
  if bad.size:
    raise DataError(
      f"Token ids {bad[:_SHOWN_UNKNOWN].tolist()} are outside this tokenizer's "
      f"vocabulary [0, {vocab_size}); they come from another tokenizer or "
      f"a model with a larger vocabulary."
    )
  return ids.astype(np.int64)


def split_words(text: str) -> list[str]:
  """The lowercased words and punctuation marks of `text`, e.g. "Don't!" -> don ' t !."""
  return _WORD_RE.findall(text.lower())


def tokenizer_from_json(text: str) -> Tokenizer:
  """Rebuilds the tokenizer whose `to_json()` gave `text`.

  Raises:
    DataError: `text` is not a jaxdl tokenizer's JSON.
  """
  try:
    spec = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(
      f"The tokenizer file is not valid JSON ({e}); it is damaged. Copy "
      f"tokenizer.json back from the run that wrote it."
    ) from e
  if not isinstance(spec, dict) or spec.get("format") != JSON_FORMAT:
    raise DataError(f"Not a jaxdl tokenizer (format {JSON_FORMAT}): the JSON starts {text[:80]!r}.")
  kind, specials = spec.get("kind"), tuple(spec.get("specials", ()))
  try:
    if kind == "char":
      return CharTokenizer(chars=spec["chars"], specials=specials)
    if kind == "byte":
      return ByteTokenizer(specials=specials)
    if kind == "word":
      return WordTokenizer(words=tuple(spec["words"]), specials=specials)
  except (KeyError, TypeError) as e:
    raise DataError(f"The {kind} tokenizer JSON lacks or garbles {e}; it is damaged.") from e
  if kind == "pretrained":
    # Imported here, as that module imports this one.
    from jaxdl.data import pretrained_tokenizer  # pylint: disable=g-import-not-at-top

    return pretrained_tokenizer.PretrainedTokenizer.from_spec(spec)
  raise DataError(
    f"Unknown tokenizer kind {kind!r} in the tokenizer JSON; known kinds: char, byte, word, "
    f"pretrained."
  )


def _code_points(text: str) -> np.ndarray:
  # UTF-32 makes one 4-byte unit per character (surrogatepass keeps lone surrogates, which a str
  # can hold), so this is a copy-free view of the code points.
  return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), "<u4")
