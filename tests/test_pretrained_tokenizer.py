"""Published tokenizers (jaxdl.data.pretrained_tokenizer): GPT-2's byte-level BPE against OpenAI's
reference encoder, BERT's WordPiece against transformers' pure-Python BertTokenizer, tokenizer.json
folders, the workdir's copy, text and review data on them, and `jaxdl generate` through one.

The vocabularies are trained here on the shipped Shakespeare corpus (a few hundred merges), so the
tests run offline.
"""

import csv
import json
import shutil
import sys

import numpy as np
import pytest

from jaxdl import cli, sampling, trainer
from jaxdl import config as config_lib
from jaxdl import workdir as workdir_lib
from jaxdl.data import reviews, text
from jaxdl.data.pretrained_tokenizer import PretrainedTokenizer, load_pretrained_tokenizer
from jaxdl.data.tokenizers import tokenizer_from_json
from jaxdl.errors import CheckpointError, ConfigError, DataError
from tests.conftest import REPO

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
regex = pytest.importorskip("regex")

# Non-ASCII text too: bytes that split inside a character, accents BERT strips when it
# lowercases, CJK characters it splits apart, and a word longer than WordPiece's 100 characters.
EXTRA = (
  "\n\nCafé — naïve ‘quoted’ “speech”, 5€ or ½… 日本語 ÉTAT déjà-vu\t tabs  and   spaces\n"
  + "x" * 120
  + " end"
)


@pytest.fixture(scope="module")
def corpus():
  return text.load_shipped_corpus()[0]


@pytest.fixture(scope="module")
def sample(corpus):
  """Five thousand characters of Shakespeare from the middle of the corpus, and EXTRA."""
  return corpus[300_000:305_000] + EXTRA


@pytest.fixture(scope="module")
def gpt2_folder(corpus, tmp_path_factory):
  """GPT-2's files, vocab.json + merges.txt, of a byte-level BPE with ~800 merges."""
  folder = tmp_path_factory.mktemp("gpt2")
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(
    [corpus[:300_000]], vocab_size=1057, special_tokens=["<|endoftext|>"], show_progress=False
  )
  bpe.save_model(str(folder))
  return folder


@pytest.fixture(scope="module")
def bert_folder(corpus, tmp_path_factory):
  """BERT's file, vocab.txt, of a WordPiece vocabulary of 1500 pieces."""
  folder = tmp_path_factory.mktemp("bert")
  wordpiece = tokenizers.BertWordPieceTokenizer(lowercase=True)
  wordpiece.train_from_iterator([corpus[:300_000]], vocab_size=1500, show_progress=False)
  wordpiece.save_model(str(folder))
  return folder


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's printable stand-in character for each byte."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
  printable += range(ord("®"), ord("ÿ") + 1)
  others = [b for b in range(256) if b not in printable]
  chars = [*printable, *(256 + i for i in range(len(others)))]
  return dict(zip([*printable, *others], map(chr, chars)))


class OpenAIGPT2Encoder:
  """OpenAI's GPT-2 encoder (openai/gpt-2 src/encoder.py), the reference byte-level BPE."""

  PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
  )

  def __init__(self, folder):
    self.encoder = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    self.decoder = {i: t for t, i in self.encoder.items()}
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")[1:]
    self.ranks = {tuple(line.split()): rank for rank, line in enumerate(lines) if line}
    self.byte_encoder = _bytes_to_unicode()
    self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}

  def bpe(self, token: str) -> tuple[str, ...]:
    word = tuple(token)
    while len(word) > 1:
      best = min(zip(word, word[1:]), key=lambda pair: self.ranks.get(pair, float("inf")))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if word[i : i + 2] == best:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = tuple(merged)
    return word

  def encode(self, text: str) -> list[int]:
    ids = []
    for piece in self.PATTERN.findall(text):
      token = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
      ids.extend(self.encoder[t] for t in self.bpe(token))
    return ids


def _slow_bert(folder, do_lower_case=True):
  from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

  return BertTokenizerLegacy(str(folder / "vocab.txt"), do_lower_case=do_lower_case)


# ---------------------------------------------------------------------------------------------
# The ids of the reference implementations.


def test_gpt2_files_give_the_ids_of_openai_encoder(gpt2_folder, sample):
  tok = load_pretrained_tokenizer(gpt2_folder)
  ids = tok.encode(sample)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, OpenAIGPT2Encoder(gpt2_folder).encode(sample))
  assert (ids >= 256).mean() > 0.5  # Most tokens are merges, not single bytes.
  assert tok.decode(ids) == sample
  assert tok.vocab_size == 1057
  end = tok.encode("<|endoftext|>")
  assert end.tolist() == [tok.bos_id] == [tok.eos_id]
  assert tok.pad_id is None and tok.cls_id is None and tok.mask_id is None


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_bert_vocab_gives_the_ids_of_the_slow_bert_tokenizer(
  bert_folder, sample, do_lower_case, tmp_path
):
  shutil.copy(bert_folder / "vocab.txt", tmp_path / "vocab.txt")
  if not do_lower_case:
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
  tok = load_pretrained_tokenizer(tmp_path)
  slow = _slow_bert(tmp_path, do_lower_case)
  ids = tok.encode(sample + " [MASK] [SEP]")
  np.testing.assert_array_equal(
    ids, slow.encode(sample + " [MASK] [SEP]", add_special_tokens=False)
  )
  assert (ids == tok.unk_id).mean() < (0.2 if do_lower_case else 0.3)
  assert ids[-2:].tolist() == [tok.mask_id, tok.sep_id]
  vocab = (bert_folder / "vocab.txt").read_text().split("\n")
  ids_of = {name: vocab.index(f"[{name.upper()}]") for name in ("pad", "unk", "cls", "sep", "mask")}
  assert {name: getattr(tok, f"{name}_id") for name in ids_of} == ids_of
  assert tok.bos_id is None and tok.eos_id is None
  # Decoding as BertTokenizerFast does (its cleanup of spaces differs from the slow one's).
  fast = transformers.BertTokenizer.from_pretrained(str(tmp_path))
  assert tok.decode(ids) == fast.decode(ids.tolist())


def test_tokenizer_json_folders_load_the_same(gpt2_folder, bert_folder, sample, tmp_path):
  """Folders saved by transformers' fast tokenizers: tokenizer.json and tokenizer_config.json."""
  for folder, reference in (
    (gpt2_folder, transformers.GPT2Tokenizer),
    (bert_folder, transformers.BertTokenizer),
  ):
    saved = tmp_path / folder.name
    reference.from_pretrained(str(folder)).save_pretrained(str(saved))
    assert (saved / "tokenizer.json").is_file() and not (saved / "vocab.txt").exists()
    from_files, from_json = load_pretrained_tokenizer(folder), load_pretrained_tokenizer(saved)
    np.testing.assert_array_equal(from_json.encode(sample), from_files.encode(sample))
    np.testing.assert_array_equal(
      from_json.encode(sample),
      reference.from_pretrained(str(saved))(sample, add_special_tokens=False)["input_ids"],
    )
    for role in ("pad", "cls", "sep", "mask", "bos", "eos"):
      assert getattr(from_json, f"{role}_id") == getattr(from_files, f"{role}_id"), role
    assert from_json.vocab_size == from_files.vocab_size
    # A tokenizer.json file named directly.
    assert load_pretrained_tokenizer(saved / "tokenizer.json").specials == from_json.specials


def test_json_round_trip_gives_the_same_tokenizer(gpt2_folder, bert_folder, sample):
  for folder in (gpt2_folder, bert_folder):
    tok = load_pretrained_tokenizer(folder)
    rebuilt = tokenizer_from_json(tok.to_json())
    assert isinstance(rebuilt, PretrainedTokenizer) and rebuilt == tok
    assert rebuilt.to_json() == tok.to_json()  # So a resumed run's check accepts it.
    assert load_pretrained_tokenizer(folder).to_json() == tok.to_json()
    np.testing.assert_array_equal(rebuilt.encode(sample), tok.encode(sample))
    assert (rebuilt.vocab_size, rebuilt.specials) == (tok.vocab_size, tok.specials)
  with pytest.raises(DataError, match="pretrained tokenizer JSON is damaged"):
    tokenizer_from_json(json.dumps({"format": 1, "kind": "pretrained", "specials": {}}))


def test_decode_checks_ids_and_replaces_broken_bytes(gpt2_folder):
  tok = load_pretrained_tokenizer(gpt2_folder)
  with pytest.raises(DataError, match=r"outside this tokenizer's vocabulary \[0, 1057\)"):
    tok.decode([5, 1057])
  euro = tok.encode("€")  # Three bytes; a model may stop after the first two.
  assert len(euro) > 1 and tok.decode(euro[:-1]) == "\ufffd"


# ---------------------------------------------------------------------------------------------
# Errors.


def test_bad_folders_and_names_are_clear_errors(tmp_path, gpt2_folder):
  with pytest.raises(DataError, match="neither a folder nor a tokenizer.json"):
    load_pretrained_tokenizer(tmp_path / "missing")
  with pytest.raises(DataError, match="holds no tokenizer: expected tokenizer.json"):
    load_pretrained_tokenizer(tmp_path)
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(DataError, match="Cannot read the tokenizer"):
    load_pretrained_tokenizer(tmp_path)
  with pytest.raises(DataError, match=r"must be one of 'char', 'byte', got 'gpt3', which is"):
    text.load_text(tokenizer="gpt3")
  with pytest.raises(DataError, match="has no pad_token, cls_token, which"):
    reviews.load_reviews(str(tmp_path / "r.csv"), tokenizer=str(gpt2_folder))


def test_missing_tokenizers_package_names_the_install(gpt2_folder, monkeypatch):
  monkeypatch.setitem(sys.modules, "tokenizers", None)
  with pytest.raises(ConfigError, match=r"pip install 'jaxdl\[hf\]'"):
    load_pretrained_tokenizer(gpt2_folder)


# ---------------------------------------------------------------------------------------------
# Data on pretrained tokenizers.


def test_text_stream_of_gpt2_tokens(gpt2_folder, corpus):
  data = text.load_text(tokenizer=str(gpt2_folder), block_size=32)
  tok = data.tokenizer
  assert data.model_hints == {"vocab_size": tok.vocab_size}
  stream = np.concatenate([data.train_tokens, data.val_tokens])
  assert stream.dtype == np.uint16 and stream.max() < tok.vocab_size
  assert tok.decode(stream) == corpus
  batch = next(iter(data.train_batches(batch_size=4, seed=0)))["tokens"]
  assert batch.shape == (4, 33) and batch.max() < tok.vocab_size


def test_reviews_with_a_bert_tokenizer(bert_folder, tmp_path):
  rows = [("fresh" if i % 2 else "rotten", f"Review {i}: the play was good") for i in range(40)]
  rows.append(("fresh", "a " * 100))  # Longer than max_length: cut.
  with open(tmp_path / "r.csv", "w", newline="") as f:
    csv.writer(f).writerows([("category", "text"), *rows])
  data = reviews.load_reviews(
    str(tmp_path / "r.csv"), tokenizer=str(bert_folder), max_length=12, test_fraction=0.5
  )
  tok = data.tokenizer
  assert data.model_hints["vocab_size"] == tok.vocab_size == 1500
  tokens = np.concatenate([data.train.arrays["tokens"], data.test.arrays["tokens"]])
  slow = _slow_bert(bert_folder)
  expected = []
  for _, review in rows:  # [CLS], the review's first 11 tokens, [PAD]s.
    ids = [tok.cls_id, *slow.encode(review, add_special_tokens=False)[:11]]
    expected.append(ids + [tok.pad_id] * (12 - len(ids)))
  assert sorted(tokens.tolist()) == sorted(expected)
  assert tok.pad_id == 0 and (tokens == 0).any() and (tokens[:, -1] != 0).sum() == 1


# ---------------------------------------------------------------------------------------------
# A run: the workdir keeps the tokenizer, and `jaxdl generate` decodes with it.

TINY_GPT = [
  "model.num_layers=1",
  "model.num_heads=2",
  "model.embed_dim=32",
  "model.block_size=16",
  "data.block_size=16",
  "train.batch_size=8",
  "train.num_steps=4",
  "data.eval_batch_size=256",
  "train.log_every_steps=2",
  "train.eval_every_steps=1000",
  "train.checkpoint_every_steps=4",
  "optimizer.warmup_steps=1",
]


def test_gpt_trains_on_gpt2_tokens_and_generates_text(
  gpt2_folder, bert_folder, tmp_path, capsys, monkeypatch
):
  config = config_lib.load_experiment(REPO / "experiments" / "shakespeare_char_gpt.py:cpu")
  config_lib.apply_overrides(config, [*TINY_GPT, f"data.tokenizer={gpt2_folder}"])
  workdir = tmp_path / "run"
  result = trainer.train(config, workdir, show_progress=False)
  assert result.eval_metrics["eval/loss"] < 1.2 * np.log(1057)

  tok = load_pretrained_tokenizer(gpt2_folder)
  assert workdir_lib.load_tokenizer(workdir) == tok
  workdir_lib.check_tokenizer(workdir, tok)  # A resumed run's fresh load is accepted ...
  with pytest.raises(CheckpointError, match="vocabulary differs"):
    workdir_lib.check_tokenizer(workdir, load_pretrained_tokenizer(bert_folder))  # ... others not.

  sampled = []  # The ids `jaxdl generate` samples, to decode them here too.
  generate = sampling.generate
  monkeypatch.setattr(
    sampling, "generate", lambda *a, **k: sampled.append(generate(*a, **k)) or sampled[-1]
  )
  args = ["generate", str(workdir), "--prompt", "ROMEO:", "--max-new-tokens", "6", "--seed", "1"]
  assert cli.main(args) == 0
  assert len(sampled) == 1 and len(sampled[0]) == 6
  assert capsys.readouterr().out == "ROMEO:" + tok.decode(sampled[0]) + "\n"

  assert cli.main(["eval", str(workdir)]) == 0  # Evaluation reloads the data and its tokenizer.
  assert capsys.readouterr().out.startswith("step 4: validation loss")
