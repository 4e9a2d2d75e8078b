"""Tests for jaxdl.data.tokenizers: vocabularies, round trips, special tokens, JSON, errors."""

import numpy as np
import pytest

from jaxdl.data.tokenizers import (
  BOS,
  EOS,
  PAD,
  TEXT_SPECIALS,
  ByteTokenizer,
  CharTokenizer,
  WordTokenizer,
  split_words,
  tokenizer_from_json,
)
from jaxdl.errors import DataError

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak."


def test_char_vocabulary_is_sorted_unique_characters():
  tok = CharTokenizer.fit(TEXT)
  assert tok.chars == "".join(sorted(set(TEXT)))
  assert tok.vocab_size == len(set(TEXT))
  ids = tok.encode(TEXT)
  assert ids.dtype == np.int32 and ids.shape == (len(TEXT),)
  np.testing.assert_array_equal(ids, [tok.chars.index(c) for c in TEXT])  # Ids 0..V-1 = chars.
  assert tok.decode(ids) == TEXT
  assert tok.pad_id is tok.unk_id is tok.cls_id is tok.sep_id is tok.mask_id is None


def test_char_fit_over_several_texts_and_non_ascii():
  tok = CharTokenizer.fit(["héllo", "wörld ✓", "日本"])
  assert tok.chars == "".join(sorted(set("héllowörld ✓日本")))
  for text in ("héllo wörld ✓", "日本", ""):
    assert tok.decode(tok.encode(text)) == text


def test_char_unknown_characters_are_an_error_naming_them():
  tok = CharTokenizer.fit("abc ")
  with pytest.raises(DataError) as info:
    tok.encode("abc xyzx é")  # x twice: counted twice, shown once.
  message = str(info.value)
  assert "5 characters outside" in message and "'x', 'y', 'z', 'é'" in message
  assert "use only characters seen in training" in message


def test_char_specials_come_first_and_unk_replaces_unknown():
  tok = CharTokenizer.fit("cab", specials=TEXT_SPECIALS)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.vocab_size == 5 + 3
  np.testing.assert_array_equal(tok.encode("abzc"), [5, 6, 1, 7])
  assert tok.decode([2, 5, 6, 0]) == "[CLS]ab[PAD]"


def test_byte_round_trip_including_multibyte_utf8():
  tok = ByteTokenizer()
  text = "naïve café — 日本語 ✓ \U0001f600"
  ids = tok.encode(text)
  assert tok.vocab_size == 256 and ids.dtype == np.int32
  np.testing.assert_array_equal(ids, list(text.encode("utf-8")))
  assert tok.decode(ids) == text
  # A model can emit bytes that are not UTF-8; they decode to U+FFFD instead of failing.
  assert tok.decode([0x61, 0xFF, 0x62]) == "a\ufffdb"


def test_byte_with_specials_shifts_bytes():
  tok = ByteTokenizer(specials=TEXT_SPECIALS)
  assert tok.vocab_size == 261 and tok.pad_id == 0 and tok.cls_id == 2
  ids = tok.encode("é")
  np.testing.assert_array_equal(ids, np.array([0xC3, 0xA9]) + 5)
  assert tok.decode([2, *ids, 0, 0]) == "[CLS]é[PAD][PAD]"


def test_split_words():
  assert split_words("Don't stop -- it's GREAT!") == [
    "don",
    "'",
    "t",
    "stop",
    "-",
    "-",
    "it",
    "'",
    "s",
    "great",
    "!",
  ]


def test_word_vocabulary_most_frequent_with_deterministic_ties():
  texts = ["b a c a", "c b d", "a e"]  # a: 3, b: 2, c: 2, d: 1, e: 1.
  tok = WordTokenizer.fit(texts, vocab_size=len(TEXT_SPECIALS) + 4)
  assert tok.words == ("a", "b", "c", "d")  # Ties (b/c, d/e) broken alphabetically.
  assert WordTokenizer.fit(reversed(texts), vocab_size=9) == tok  # Order of texts is irrelevant.
  assert tok.vocab_size == 9 and tok.pad_id == 0 and tok.unk_id == 1 and tok.cls_id == 2
  ids = tok.encode("A e B zebra")
  np.testing.assert_array_equal(ids, [5, 1, 6, 1])  # Lowercased; e and zebra unknown.
  assert tok.decode(ids) == "a [UNK] b [UNK]"
  # Fewer distinct words than room: the vocabulary is just smaller.
  assert WordTokenizer.fit(texts, vocab_size=100).vocab_size == 5 + 5


def test_word_vocab_size_must_exceed_specials():
  with pytest.raises(DataError, match="must exceed the 5 special tokens"):
    WordTokenizer.fit(["a"], vocab_size=5)


@pytest.mark.parametrize(
  "tok, sample",
  [
    (CharTokenizer.fit(TEXT), "Speak"),
    (CharTokenizer.fit("é日", specials=TEXT_SPECIALS), "日é?"),
    (CharTokenizer(chars="0123", specials=(PAD, BOS, EOS)), "3120"),
    (ByteTokenizer(), "Speak ✓"),
    (ByteTokenizer(specials=TEXT_SPECIALS), "Speak ✓"),
    (WordTokenizer.fit([TEXT], vocab_size=12), "Speak, citizen!"),
  ],
  ids=["char", "char_specials", "char_bos_eos", "byte", "byte_specials", "word"],
)
def test_json_round_trip(tok, sample):
  loaded = tokenizer_from_json(tok.to_json())
  assert type(loaded) is type(tok) and loaded == tok
  assert loaded.vocab_size == tok.vocab_size
  assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (tok.pad_id, tok.bos_id, tok.eos_id)
  ids = tok.encode(sample)
  np.testing.assert_array_equal(loaded.encode(sample), ids)
  assert loaded.decode(ids) == tok.decode(ids)


def test_bos_eos_tokenizer_ids():
  tok = CharTokenizer(chars="0123", specials=(PAD, BOS, EOS))
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.cls_id) == (0, 1, 2, None)
  np.testing.assert_array_equal(tok.encode("310"), [6, 4, 3])
  assert tok.decode([1, 6, 4, 3, 2, 0]) == "[BOS]310[EOS][PAD]"


@pytest.mark.parametrize(
  "text, message",
  [
    ("not json", "not valid JSON"),
    ('{"kind": "char"}', "Not a jaxdl tokenizer"),
    ('{"format": 1, "kind": "bpe"}', "Unknown tokenizer kind 'bpe'"),
    ('{"format": 1, "kind": "char"}', "lacks or garbles 'chars'"),
  ],
)
def test_bad_json(text, message):
  with pytest.raises(DataError, match=message):
    tokenizer_from_json(text)


def test_bad_construction_and_decode():
  with pytest.raises(DataError, match="must be distinct"):
    CharTokenizer(chars="aa")
  with pytest.raises(DataError, match=r"\[PAD\] must be the first"):
    CharTokenizer(chars="a", specials=("[UNK]", "[PAD]"))
  with pytest.raises(DataError, match="Special tokens must be distinct names"):
    ByteTokenizer(specials=("[FOO]",))
  with pytest.raises(DataError, match=r"Token ids \[3\] are outside .* \[0, 3\)"):
    CharTokenizer(chars="abc").decode([0, 3])
