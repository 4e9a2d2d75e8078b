"""Tests for the text datasets: language modelling windows (jaxdl.data.text), the shipped
Shakespeare corpus, review sentiment (jaxdl.data.reviews) and synthetic seq2seq
(jaxdl.data.synthetic)."""

import bz2
import csv
import hashlib
import importlib.resources
import inspect
import io
import itertools

import numpy as np
import pytest

from jaxdl.data import make_shakespeare_corpus, reviews, synthetic, text
from jaxdl.data.reviews import load_reviews
from jaxdl.data.synthetic import load_seq2seq
from jaxdl.data.text import load_text
from jaxdl.data.tokenizers import split_words
from jaxdl.errors import DataError
from tests.conftest import SHARED_DATA, need_data


def _take(dataset, count):
  return list(itertools.islice(iter(dataset), count))


# ---------------------------------------------------------------------------------------------
# Language modelling on a text file.


def _counting_text(num_chars: int) -> str:
  """A text of `num_chars` distinct characters in increasing code point order: its char tokens
  are 0, 1, 2, ..., so a window's first token is its start position."""
  return "".join(chr(0x100 + i) for i in range(num_chars))


@pytest.fixture
def counting_lm(tmp_path):
  path = tmp_path / "counting.txt"
  path.write_text(_counting_text(200), encoding="utf-8")
  return load_text(str(path), block_size=8, val_fraction=0.25)


def test_split_by_position(counting_lm):
  data = counting_lm
  np.testing.assert_array_equal(data.train_tokens, np.arange(150))
  np.testing.assert_array_equal(data.val_tokens, np.arange(150, 200))
  assert data.source["num_train"] == 150 and data.source["num_val"] == 50
  assert data.source["kind"] == "data_dir" and data.source["files"] == 1
  assert data.task == "lm" and data.input_key == "tokens"
  assert data.model_hints == {"vocab_size": 200} and data.tokenizer.vocab_size == 200


def test_train_windows_are_slices_of_the_train_stream_at_uniform_starts(counting_lm):
  data = counting_lm
  batches = _take(data.train_batches(batch_size=4, seed=0), 200)
  starts = []
  for batch in batches:
    assert set(batch) == {"tokens"}
    tokens = batch["tokens"]
    assert tokens.dtype == np.int32 and tokens.shape == (4, 9)
    for window in tokens:
      np.testing.assert_array_equal(window, data.train_tokens[window[0] : window[0] + 9])
      starts.append(int(window[0]))
  # 800 draws over the 150 - 8 = 142 valid starts 0..141: all of them, nothing beyond.
  assert sorted(set(starts)) == list(range(142))


def test_train_windows_match_a_numpy_stream_of_ordinary_text(tmp_path):
  words = np.random.default_rng(0).choice(["to", "be", "or", "not", "that", "is"], size=600)
  content = " ".join(words)
  (tmp_path / "a.txt").write_text(content, encoding="utf-8")
  data = load_text(str(tmp_path / "a.txt"), tokenizer="byte", block_size=16)
  stream = np.frombuffer(content.encode(), np.uint8).astype(np.int32)
  num_train = len(stream) - int(len(stream) * 0.1)
  np.testing.assert_array_equal(data.train_tokens, stream[:num_train])
  all_windows = np.lib.stride_tricks.sliding_window_view(stream[:num_train], 17)
  for batch in _take(data.train_batches(batch_size=8, seed=1), 5):
    for window in batch["tokens"]:
      assert (all_windows == window).all(axis=1).any()


def _tokens(data, count, **kwargs):
  return np.stack([b["tokens"] for b in _take(data.train_batches(**kwargs), count)])


def test_same_seed_same_batches_other_seed_or_shard_other_batches(counting_lm):
  reference = _tokens(counting_lm, 10, batch_size=4, seed=3)
  np.testing.assert_array_equal(_tokens(counting_lm, 10, batch_size=4, seed=3), reference)
  assert not np.array_equal(_tokens(counting_lm, 10, batch_size=4, seed=4), reference)
  shard0 = _tokens(counting_lm, 10, batch_size=4, seed=3, shard_index=0, shard_count=2)
  shard1 = _tokens(counting_lm, 10, batch_size=4, seed=3, shard_index=1, shard_count=2)
  assert not np.array_equal(shard0, shard1)
  np.testing.assert_array_equal(
    _tokens(counting_lm, 10, batch_size=4, seed=3, shard_index=1, shard_count=2), shard1
  )


def test_single_process_starts_are_drawn_as_before(counting_lm):
  starts = _tokens(counting_lm, 3, batch_size=4, seed=3)[:, :, 0]
  # Recorded from the stream before shards became slices of global batches: unchanged.
  assert starts.tolist() == [[115, 12, 25, 33], [138, 35, 82, 57], [119, 3, 80, 105]]
  for k, batch_starts in enumerate(starts):  # 150 - 8 = 142 valid starts.
    expected = np.random.default_rng([3, k, 0]).integers(0, 142, size=4)
    np.testing.assert_array_equal(batch_starts, expected)


@pytest.mark.parametrize("shard_count", [2, 3])
def test_shards_concatenate_to_the_single_process_batches(counting_lm, shard_count):
  single = _tokens(counting_lm, 6, batch_size=3 * shard_count, seed=7)
  shards = [
    _tokens(counting_lm, 6, batch_size=3, seed=7, shard_index=i, shard_count=shard_count)
    for i in range(shard_count)
  ]
  np.testing.assert_array_equal(np.concatenate(shards, axis=1), single)


def test_get_state_set_state_resumes_mid_stream(counting_lm):
  reference = _take(counting_lm.train_batches(batch_size=4, seed=5), 12)
  iterator = iter(counting_lm.train_batches(batch_size=4, seed=5))
  for _ in range(7):
    next(iterator)
  state = iterator.get_state()
  resumed = iter(counting_lm.train_batches(batch_size=4, seed=5))
  resumed.set_state(state)
  for expected in reference[7:]:
    np.testing.assert_array_equal(next(resumed)["tokens"], expected["tokens"])


def test_val_windows_cover_the_val_stream_once(counting_lm):
  data = counting_lm  # 50 validation tokens 150..199, T = 8: (50 - 1) // 8 = 6 windows.
  batches = list(data.eval_batches(batch_size=4))
  assert [b["mask"].tolist() for b in batches] == [[True] * 4, [True, True, False, False]]
  windows = np.concatenate([b["tokens"][b["mask"]] for b in batches])
  assert windows.dtype == np.int32 and windows.shape == (6, 9)
  np.testing.assert_array_equal(windows[:, 0], 150 + 8 * np.arange(6))  # Starts 0, T, 2T, ...
  for window in windows:
    np.testing.assert_array_equal(window, np.arange(window[0], window[0] + 9))
  # Every predicted token (window[1:]) of the first 48 after the first is predicted once.
  np.testing.assert_array_equal(windows[:, 1:].ravel(), np.arange(151, 199))
  assert not batches[-1]["tokens"][2:].any()


def test_steps_per_epoch_and_example_batch(counting_lm):
  assert counting_lm.steps_per_epoch(4) == 150 // (4 * 8) == 4
  assert counting_lm.steps_per_epoch(1000) == 1
  example = counting_lm.example_batch(3)
  assert example["tokens"].shape == (3, 9) and example["tokens"].dtype == np.int32
  assert not example["tokens"].any()


def test_directory_of_txt_files_joined_in_name_order(tmp_path):
  (tmp_path / "b.txt").write_text("second work\n", encoding="utf-8")
  (tmp_path / "a.txt").write_text("first work\n\n\n", encoding="utf-8")
  (tmp_path / "notes.md").write_text("not a work", encoding="utf-8")
  data = load_text(str(tmp_path), block_size=4, val_fraction=0.3)
  joined = "first work\n\nsecond work"
  assert data.source["files"] == 2
  assert data.tokenizer.chars == "".join(sorted(set(joined)))
  stream = np.concatenate([data.train_tokens, data.val_tokens])
  assert data.tokenizer.decode(stream) == joined
  assert len(data.val_tokens) == int(len(joined) * 0.3)


def test_byte_tokenizer_on_non_ascii_text(tmp_path):
  content = "Ça va? Ünïcödé ✓ " * 40
  (tmp_path / "u.txt").write_text(content, encoding="utf-8")
  data = load_text(str(tmp_path / "u.txt"), tokenizer="byte", block_size=8)
  assert data.model_hints == {"vocab_size": 256}
  stream = np.concatenate([data.train_tokens, data.val_tokens])
  assert bytes(stream.astype(np.uint8)) == content.encode("utf-8")


def test_text_errors(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    load_text(str(tmp_path / "missing.txt"))
  (tmp_path / "empty.txt").write_bytes(b"")
  with pytest.raises(DataError, match="empty.txt' is empty"):
    load_text(str(tmp_path / "empty.txt"))
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "data.csv").write_text("a,b")
  with pytest.raises(DataError, match="holds no \\*.txt files"):
    load_text(str(tmp_path / "sub"))
  (tmp_path / "latin1.txt").write_bytes("caf\u00e9 ok".encode("latin-1"))
  with pytest.raises(
    DataError,
    match=r"latin1.txt' is not UTF-8 text: the byte at offset 3 "
    r"\(0xe9\).*Convert the file to UTF-8",
  ):
    load_text(str(tmp_path / "latin1.txt"))
  (tmp_path / "short.txt").write_text("x" * 100)
  # 100 tokens: 90 train, 10 val; a block of 16 needs 17 in each split.
  with pytest.raises(
    DataError, match=r"90 training and 10 validation tokens.*block_size \+ 1 = 17"
  ):
    load_text(str(tmp_path / "short.txt"), block_size=16)
  assert load_text(str(tmp_path / "short.txt"), block_size=9).source["num_val"] == 10


@pytest.mark.parametrize(
  "options, message",
  [
    ({"tokenizer": "bpe"}, r"data.tokenizer must be one of 'char', 'byte', got 'bpe'"),
    ({"block_size": 0}, r"data.block_size must be an integer >= 1, got 0"),
    ({"val_fraction": 1.0}, r"data.val_fraction must be a number strictly between 0 and 1"),
  ],
)
def test_text_bad_options(options, message):
  with pytest.raises(DataError, match=message):
    load_text(**options)


def test_text_options_match_loader_defaults():
  defaults = {name: p.default for name, p in _keyword_params(load_text).items()}
  assert defaults == text.OPTIONS


def _keyword_params(function):
  params = inspect.signature(function).parameters
  return {n: p for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n != "allow_download"}


# ---------------------------------------------------------------------------------------------
# The shipped Shakespeare corpus.


def test_shipped_corpus_loads():
  data = load_text(block_size=256)
  assert data.source["kind"] == "shipped_corpus"
  num_chars = data.source["num_train"] + data.source["num_val"]
  assert num_chars == 1_016_477  # About tiny-shakespeare's 1.1 MB.
  assert data.source["num_val"] == int(num_chars * 0.1)
  assert data.model_hints == {"vocab_size": 70}
  corpus = data.tokenizer.decode(data.train_tokens[:200])
  assert corpus.startswith("JULIUS CAESAR\n\nby William Shakespeare")
  assert "HAMLET" in data.tokenizer.decode(data.train_tokens)


def test_shipped_corpus_checksum_and_size():
  resource = importlib.resources.files("jaxdl.data").joinpath(text.SHIPPED_CORPUS)
  content = resource.read_bytes()
  assert hashlib.sha256(content).hexdigest() == text.SHIPPED_CORPUS_SHA256
  assert len(content) < 2**20  # Well under 2 MB in the package.


def test_damaged_shipped_corpus_is_an_error(monkeypatch):
  monkeypatch.setattr(text, "SHIPPED_CORPUS_SHA256", "0" * 64)
  with pytest.raises(DataError, match=r"is damaged: its SHA-256 is [0-9a-f]{64}, expected 0+\."):
    load_text()
  monkeypatch.setattr(text, "SHIPPED_CORPUS", "shakespeare/missing.txt.bz2")
  with pytest.raises(DataError, match="shipped with jaxdl is missing"):
    load_text()


def test_corpus_script_reproduces_the_shipped_file(tmp_path):
  src = SHARED_DATA / "shakespeare"
  need_data(
    src.is_dir(),
    f"the Shakespeare plays are not at {src} (../shared/data is only on jaxdl dev machines)",
  )
  assert make_shakespeare_corpus.main([str(src), str(tmp_path)]) == 0
  built = (tmp_path / "tragedies.txt.bz2").read_bytes()
  shipped = importlib.resources.files("jaxdl.data").joinpath(text.SHIPPED_CORPUS).read_bytes()
  assert built == shipped
  # It is the plays, in the script's order, joined as load_text joins a directory.
  plays = [
    (src / f"{name}.txt").read_text(encoding="utf-8") for name in make_shakespeare_corpus.PLAYS
  ]
  assert bz2.decompress(built).decode("utf-8") == text.join_works(plays)


# ---------------------------------------------------------------------------------------------
# Review sentiment.

REVIEWS = [
  ("fresh", "A great film, moving and funny."),
  ("rotten", "Dull, long and loud."),
  ("plot", "A man goes to the city."),
  ("fresh", "Great acting; a moving story."),
  ("rotten", "Loud and dull."),
  ("fresh", "Funny, sharp, great!"),
  ("rotten", "A long, long bore."),
  ("fresh", "Moving."),
  ("rotten", "Not funny at all, just dull."),
  ("plot", "She finds a dog."),
  ("fresh", "An instant classic: great."),
  ("rotten", "Boring and far too long."),
  ("fresh", "A moving, funny, great film."),  # Appears twice: must land in one split.
  ("fresh", "A moving, funny, great film."),
  ("rotten", "Multi-line\nreview, quoted."),
  ("fresh", "Sharp writing, great cast."),
  ("rotten", "Dull plot, dull cast."),
  ("fresh", "Loved it."),
  ("rotten", "Hated it."),
  ("fresh", "Zesty and bold."),
]


def _write_csv(path, rows, header=("category", "text", "movie_name", "has_plot_and_reviews")):
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  for category, review in rows:
    writer.writerow([category, review, "a_movie", "False"])
  if path.suffix == ".bz2":
    path.write_bytes(bz2.compress(buffer.getvalue().encode("utf-8")))
  else:
    path.write_text(buffer.getvalue(), encoding="utf-8")
  return path


def _in_test(review, fraction):
  """The documented split rule, written out independently."""
  digest = hashlib.sha256(review.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < fraction * 2**64


def test_reviews_labels_split_and_encoding(tmp_path):
  _write_csv(tmp_path / reviews.FILE_NAME, REVIEWS)
  data = load_reviews(str(tmp_path), vocab_size=40, max_length=6, test_fraction=0.3)
  kept = [(c, r) for c, r in REVIEWS if c != "plot"]
  expected = {
    "train": [(c, r) for c, r in kept if not _in_test(r, 0.3)],
    "test": [(c, r) for c, r in kept if _in_test(r, 0.3)],
  }
  assert expected["train"] and expected["test"]
  tok = data.tokenizer
  for name, split in (("train", data.train), ("test", data.test)):
    rows = expected[name]
    assert len(split) == len(rows) and data.source[f"num_{name}"] == len(rows)
    np.testing.assert_array_equal(split.arrays["label"], [c == "fresh" for c, _ in rows])
    tokens = split.arrays["tokens"]
    assert tokens.dtype == np.int32 and tokens.shape == (len(rows), 6)
    for row, (_, review) in zip(tokens, rows):
      ids = tok.encode(review)[:5]  # [CLS] + at most 5 tokens, then [PAD] = 0.
      np.testing.assert_array_equal(row, [tok.cls_id, *ids, *[0] * (5 - len(ids))])
  duplicate = REVIEWS[12][1]
  assert (
    sum(r == duplicate for _, r in expected["train" if not _in_test(duplicate, 0.3) else "test"])
    == 2
  )
  assert data.task == "classify" and data.input_key == "tokens"
  assert data.model_hints == {"num_classes": 2, "vocab_size": tok.vocab_size}


def test_reviews_tokenizer_fitted_on_train_only(tmp_path):
  _write_csv(tmp_path / "reviews.csv", REVIEWS)
  data = load_reviews(str(tmp_path / "reviews.csv"), test_fraction=0.3)
  kept = [r for c, r in REVIEWS if c != "plot"]
  train_words = {w for r in kept if not _in_test(r, 0.3) for w in split_words(r)}
  test_words = {w for r in kept if _in_test(r, 0.3) for w in split_words(r)}
  assert set(data.tokenizer.words) == train_words  # vocab_size 8000 > the words there are.
  assert test_words - train_words  # The fixture has test-only words, which become [UNK].
  assert data.tokenizer.unk_id in data.test.arrays["tokens"]
  assert data.tokenizer.unk_id not in data.train.arrays["tokens"]


def test_reviews_split_is_deterministic_and_independent_of_row_order(tmp_path):
  _write_csv(tmp_path / "a.csv", REVIEWS)
  _write_csv(tmp_path / "b.csv.bz2", REVIEWS[::-1])
  a = load_reviews(str(tmp_path / "a.csv"), test_fraction=0.3)
  again = load_reviews(str(tmp_path / "a.csv"), test_fraction=0.3)
  b = load_reviews(str(tmp_path / "b.csv.bz2"), test_fraction=0.3)
  np.testing.assert_array_equal(a.test.arrays["tokens"], again.test.arrays["tokens"])
  decode = lambda data: sorted(a.tokenizer.decode(row) for row in data.test.arrays["tokens"])
  assert decode(a) == decode(b) and a.tokenizer == b.tokenizer


@pytest.mark.parametrize("tokenizer, vocab_size", [("char", None), ("byte", 261)])
def test_reviews_char_and_byte_tokenizers(tmp_path, tokenizer, vocab_size):
  _write_csv(tmp_path / "r.csv", REVIEWS)
  data = load_reviews(
    str(tmp_path / "r.csv"), tokenizer=tokenizer, max_length=200, test_fraction=0.3
  )
  tok = data.tokenizer
  assert tok.cls_id == 2 and tok.pad_id == 0
  if vocab_size:
    assert tok.vocab_size == vocab_size
  first = data.train.arrays["tokens"][0]
  length = int((first != 0).sum())
  assert first[0] == tok.cls_id and tok.decode(first[1:length]) in [r for _, r in REVIEWS]


def test_reviews_errors(tmp_path):
  with pytest.raises(DataError, match=r"not shipped.*data.dir=../shared/data/rotten_tomatoes"):
    load_reviews("")
  with pytest.raises(DataError, match="holds neither rotten_tomatoes_corpus_full.csv.bz2"):
    load_reviews(str(tmp_path))
  with pytest.raises(DataError, match="does not exist"):
    load_reviews(str(tmp_path / "nope.csv"))
  bad = _write_csv(tmp_path / "cols.csv", REVIEWS[:3], header=("label", "review", "m", "p"))
  with pytest.raises(
    DataError,
    match=r"cols.csv' line 1: .* lacks the column\(s\) \['category', "
    r"'text'\]",
  ):
    load_reviews(str(bad))
  # A quoted field spanning two lines moves later line numbers down by one.
  rows = REVIEWS[:14] + [("rotten", "Multi-line\nreview."), ("meh", "Unclear.")]
  bad = _write_csv(tmp_path / "category.csv", rows)
  with pytest.raises(DataError, match=r"category.csv' line 18: unknown category 'meh'"):
    load_reviews(str(bad))
  bad = tmp_path / "fields.csv"
  bad.write_text(
    "category,text,movie_name,has_plot_and_reviews\nfresh,Good.,m,False\nrotten,Bad.,m\n"
  )
  with pytest.raises(DataError, match=r"fields.csv' line 3: 3 fields where the header has 4"):
    load_reviews(str(bad))
  bad = tmp_path / "quote.csv"
  bad.write_text('category,text,movie_name,has_plot_and_reviews\nfresh,"Good." x,m,False\n')
  with pytest.raises(DataError, match=r"quote.csv' line 2: malformed CSV"):
    load_reviews(str(bad))
  bad = tmp_path / "plots.csv"
  _write_csv(bad, [("plot", "Only a plot.")])
  with pytest.raises(DataError, match="holds no fresh or rotten reviews"):
    load_reviews(str(bad))
  with pytest.raises(DataError, match=r"data.max_length must be an integer >= 2, got 1"):
    load_reviews(str(tmp_path), max_length=1)


def test_reviews_options_match_loader_defaults():
  defaults = {name: p.default for name, p in _keyword_params(load_reviews).items()}
  assert defaults == reviews.OPTIONS


def test_real_rotten_tomatoes_counts():
  path = SHARED_DATA / "rotten_tomatoes"
  need_data(
    (path / reviews.FILE_NAME).is_file(),
    f"the Rotten Tomatoes corpus is not at {path} (../shared/data is only on jaxdl dev machines)",
  )
  data = load_reviews(str(path))
  labels = np.concatenate([data.train.arrays["label"], data.test.arrays["label"]])
  assert len(labels) == 7403 + 5405 and labels.sum() == 7403
  assert abs(len(data.test) / len(labels) - 0.1) < 0.01
  assert data.model_hints == {"num_classes": 2, "vocab_size": 8000}
  assert (data.train.arrays["tokens"][:, 0] == data.tokenizer.cls_id).all()


# ---------------------------------------------------------------------------------------------
# Synthetic sequence-to-sequence.


def _lengths(src):
  return (src != 0).sum(axis=1) - 1  # Symbols, without [EOS].


@pytest.mark.parametrize("kind", ["reverse", "sort"])
def test_seq2seq_targets(kind):
  data = load_seq2seq(
    kind=kind, num_train=300, num_test=50, min_length=2, max_length=7, num_symbols=5
  )
  for split in (data.train, data.test):
    src, tgt = split.arrays["src"], split.arrays["tgt"]
    assert src.dtype == tgt.dtype == np.int32
    assert src.shape == (len(split), 8) and tgt.shape == (len(split), 9)
    lengths = _lengths(src)
    assert sorted(set(lengths.tolist())) == list(range(2, 8))
    for s, t, length in zip(src, tgt, lengths):
      symbols = s[:length]
      assert ((symbols >= 3) & (symbols < 8)).all()
      assert s[length] == data.eos_id == 2 and not s[length + 1 :].any()
      answer = symbols[::-1] if kind == "reverse" else np.sort(symbols)
      np.testing.assert_array_equal(t[: length + 2], [data.bos_id, *answer, data.eos_id])
      assert not t[length + 2 :].any()
  assert data.task == "seq2seq" and data.input_key == "src" and data.pad_id == 0
  assert data.model_hints == {"vocab_size": 8}


def test_seq2seq_train_and_test_disjoint_and_deterministic():
  data = load_seq2seq(num_train=2000, num_test=150, min_length=1, max_length=4, num_symbols=4)
  train = {row.tobytes() for row in data.train.arrays["src"]}
  test = [row.tobytes() for row in data.test.arrays["src"]]
  assert len(set(test)) == 150 and not train & set(test)
  # 4 + 16 + 64 + 256 = 340 possible sequences; training draws cover all that are not test.
  again = load_seq2seq(num_train=2000, num_test=150, min_length=1, max_length=4, num_symbols=4)
  np.testing.assert_array_equal(again.train.arrays["src"], data.train.arrays["src"])
  other = load_seq2seq(
    num_train=2000, num_test=150, min_length=1, max_length=4, num_symbols=4, generator_seed=1
  )
  assert not np.array_equal(other.test.arrays["src"], data.test.arrays["src"])


def test_seq2seq_batches_and_tokenizer():
  data = load_seq2seq(num_train=64, num_test=10)
  batch = _take(data.train_batches(batch_size=16, seed=0), 1)[0]
  assert batch["src"].shape == (16, 13) and batch["tgt"].shape == (16, 14)
  assert data.steps_per_epoch(16) == 4
  evals = list(data.eval_batches(batch_size=4))
  assert [int(b["mask"].sum()) for b in evals] == [4, 4, 2]
  example = data.example_batch(2)
  assert example["src"].shape == (2, 13) and example["tgt"].shape == (2, 14)
  src = data.test.arrays["src"][0]
  length = _lengths(src[None])[0]
  assert data.tokenizer.decode(src[:length]) == "".join(str(i - 3) for i in src[:length])
  assert load_seq2seq(num_symbols=63, num_train=10, num_test=10).tokenizer is None


def test_seq2seq_errors():
  with pytest.raises(DataError, match="generated, not read; leave data.dir empty"):
    load_seq2seq("some/dir")
  with pytest.raises(DataError, match=r"data.kind must be one of 'reverse', 'sort'"):
    load_seq2seq(kind="copy")
  with pytest.raises(DataError, match=r"data.max_length must be an integer >= 4, got 3"):
    load_seq2seq(max_length=3)
  with pytest.raises(DataError, match=r"only 12 distinct sequences, too few for 7"):
    load_seq2seq(min_length=1, max_length=2, num_symbols=3, num_test=7)


def test_seq2seq_options_match_loader_defaults():
  defaults = {name: p.default for name, p in _keyword_params(load_seq2seq).items()}
  assert defaults == synthetic.OPTIONS
