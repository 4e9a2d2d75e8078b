"""Published tokenizers (GPT-2's byte-level BPE, BERT's WordPiece, any tokenizer.json) with the API
of jaxdl's own tokenizers, through the optional `tokenizers` package (pip install 'jaxdl[hf]').

    tok = load_pretrained_tokenizer("path/to/gpt2")  # a Hugging Face folder
    ids = tok.encode("To be, or not to be")  # int32; no special tokens are added

A folder is read the way `transformers` reads one: its tokenizer.json when it has one; else GPT-2's
vocab.json + merges.txt (the byte-level BPE of GPT2TokenizerFast); else BERT's vocab.txt (the
WordPiece of BertTokenizerFast, lowercasing unless tokenizer_config.json says do_lower_case false).
`encode` adds no [CLS], [SEP] or <|endoftext|>: jaxdl's pipelines place them themselves.

The special-token ids are those of the tokens tokenizer_config.json or special_tokens_map.json name
(pad_token, cls_token, ...), else of the special tokens with the usual names: [PAD] [UNK] [CLS]
[SEP] [MASK] for BERT; GPT-2's <|endoftext|> is both bos and eos, and GPT-2 has no pad.

`to_json` holds the whole tokenizer.json, so a workdir that saves it needs the folder no more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxdl.data import tokenizers as tokenizers_lib
from jaxdl.errors import DataError

KIND = "pretrained"
TOKENIZER_JSON = "tokenizer.json"
GPT2_VOCAB, GPT2_MERGES = "vocab.json", "merges.txt"
BERT_VOCAB = "vocab.txt"
# Files that name a folder's special tokens and BERT's text normalisation.
TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP = "tokenizer_config.json", "special_tokens_map.json"
GPT2_END = "<|endoftext|>"
ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
# The names special tokens go by in common families, for folders whose config names none.
_USUAL_NAMES = {
  "pad": ("[PAD]", "<pad>"),
  "unk": ("[UNK]", "<unk>"),
  "cls": ("[CLS]",),
  "sep": ("[SEP]",),
  "mask": ("[MASK]", "<mask>"),
  "bos": ("[BOS]", "<s>", GPT2_END),
  "eos": ("[EOS]", "</s>", GPT2_END),
}
_BERT_SPECIALS = ("[UNK]", "[SEP]", "[CLS]", "[PAD]", "[MASK]")  # As BertWordPieceTokenizer.
_FOLDER_FILES = f"{TOKENIZER_JSON}, GPT-2's {GPT2_VOCAB} + {GPT2_MERGES}, or BERT's {BERT_VOCAB}"


class PretrainedTokenizer:
  """A `tokenizers.Tokenizer` with jaxdl's tokenizer API.

  Attributes:
    specials: {role: token}, role one of ROLES, for the special tokens this tokenizer has.
    vocab_size: the tokenizer's vocabulary, added tokens included (one more than its largest
      id); a model may have a larger one, whose extra ids this tokenizer never gives.
  """

  kind = KIND

  def __init__(self, tokenizer: Any, specials: Mapping[str, str]):
    """Wraps `tokenizer` (a tokenizers.Tokenizer); `specials` maps roles to tokens it holds.

    Raises:
      DataError: a role not in ROLES, or a token the tokenizer lacks.
    """
    self._tokenizer = tokenizer
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    bad = {r: t for r, t in specials.items() if r not in ROLES or t not in vocab}
    if bad:
      raise DataError(
        f"Special tokens {bad} are not in the tokenizer's vocabulary (or not one of the roles "
        f"{', '.join(ROLES)}); the tokenizer files are inconsistent."
      )
    self.specials = {r: specials[r] for r in ROLES if r in specials}
    self._ids = {r: vocab[t] for r, t in self.specials.items()}
    self.vocab_size = max(tokenizer.get_vocab_size(with_added_tokens=True), max(vocab.values()) + 1)
    self._json: str | None = None

  @classmethod
  def from_spec(cls, spec: Mapping[str, Any]) -> PretrainedTokenizer:
    """Rebuilds the tokenizer from the dict its `to_json` wrote.

    Raises:
      DataError: the dict lacks the tokenizer or garbles it.
    """
    module = _require("Reading a pretrained tokenizer from a workdir")
    try:
      tokenizer = module.Tokenizer.from_str(json.dumps(spec["tokenizer"]))
      specials = dict(spec["specials"])
    except Exception as e:  # A missing key, or the plain Exception tokenizers raises.
      raise DataError(f"The pretrained tokenizer JSON is damaged ({e}).") from e
    return cls(tokenizer, specials)

  @property
  def pad_id(self) -> int | None:
    return self._ids.get("pad")

  @property
  def unk_id(self) -> int | None:
    return self._ids.get("unk")

  @property
  def cls_id(self) -> int | None:
    return self._ids.get("cls")

  @property
  def sep_id(self) -> int | None:
    return self._ids.get("sep")

  @property
  def mask_id(self) -> int | None:
    return self._ids.get("mask")

  @property
  def bos_id(self) -> int | None:
    return self._ids.get("bos")

  @property
  def eos_id(self) -> int | None:
    return self._ids.get("eos")

  def encode(self, text: str) -> np.ndarray:
    """int32 [number of tokens of `text`], with no special tokens added (special tokens written
    in the text, e.g. "[MASK]", become their ids, as in `transformers`)."""
    if not isinstance(text, str):
      raise DataError(f"encode takes a str, got {type(text).__name__}.")
    return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

  def decode(self, ids) -> str:
    """The text of token ids (int [L]); special tokens appear as themselves, e.g. "[PAD]".

    Byte-level tokens that do not make valid UTF-8 (a model can emit any sequence) decode to
    U+FFFD.
    """
    ids = tokenizers_lib.check_ids(ids, self.vocab_size)
    return self._tokenizer.decode(ids.tolist(), skip_special_tokens=False)

  def to_json(self) -> str:
    if self._json is None:
      self._json = json.dumps(
        {
          "format": tokenizers_lib.JSON_FORMAT,
          "kind": self.kind,
          "specials": self.specials,
          "tokenizer": json.loads(self._tokenizer.to_str()),
        }
      )
    return self._json

  def save_pretrained(self, folder: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Writes tokenizer.json and a tokenizer_config.json naming the special tokens into `folder`,
    which transformers' AutoTokenizer.from_pretrained reads. Returns the files written.

    Raises:
      DataError: a file is already there and `overwrite` is false.
    """
    folder = Path(folder)
    config = {f"{role}_token": token for role, token in self.specials.items()}
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    files = {
      folder / TOKENIZER_JSON: self._tokenizer.to_str(),
      folder / TOKENIZER_CONFIG: json.dumps(config, indent=2, sort_keys=True) + "\n",
    }
    existing = [str(path) for path in files if path.exists()]
    if existing and not overwrite:
      raise DataError(f"{existing} exist; choose another folder or remove them first.")
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
      path.write_text(text)
    return list(files)

  def __eq__(self, other) -> bool:
    return isinstance(other, PretrainedTokenizer) and other.to_json() == self.to_json()

  __hash__ = None

  def __repr__(self) -> str:
    model = type(self._tokenizer.model).__name__
    return f"PretrainedTokenizer({model}, vocab_size={self.vocab_size}, specials={self.specials})"


def load_pretrained_tokenizer(path: str | Path) -> PretrainedTokenizer:
  """The tokenizer of a Hugging Face folder (or of a tokenizer.json file).

  Raises:
    ConfigError: the `tokenizers` package is not installed.
    DataError: the path is missing, holds none of the tokenizer files, or a file is damaged.
  """
  path = Path(path).expanduser()
  if path.is_file() and path.suffix == ".json":
    folder, file = path.parent, path
  elif path.is_dir():
    folder, file = path, path / TOKENIZER_JSON
  else:
    raise DataError(
      f"Pretrained tokenizer {str(path)!r} is neither a folder nor a tokenizer.json file. Point "
      f"at a folder holding {_FOLDER_FILES}."
    )
  module = _require("A pretrained tokenizer")
  config = _special_config(folder)
  try:
    if file.is_file():
      tokenizer = module.Tokenizer.from_file(str(file))
    elif (folder / GPT2_VOCAB).is_file() and (folder / GPT2_MERGES).is_file():
      tokenizer = _gpt2(module, folder, config)
    elif (folder / BERT_VOCAB).is_file():
      tokenizer = _bert(module, folder, config)
    else:
      raise DataError(
        f"The folder {str(folder)!r} holds no tokenizer: expected {_FOLDER_FILES}. A model "
        f"folder saved by `transformers` has them; copy them next to its config.json."
      )
  except DataError:
    raise
  except Exception as e:  # tokenizers reports bad files as plain Exceptions.
    raise DataError(f"Cannot read the tokenizer in {str(folder)!r}: {e}") from e
  return PretrainedTokenizer(tokenizer, _specials(tokenizer, config))


def load_tokenizer_option(value: Any, names: Sequence[str], needs: Sequence[str] = ()):
  """The pretrained tokenizer a `data.tokenizer` option names by its folder.

  Args:
    value: the option's value, one not in `names` (the loader's own tokenizers).
    names: the loader's tokenizer names, for the error message.
    needs: roles (e.g. "cls", "pad") the loader's batches need a token for.

  Raises:
    DataError: `value` is neither one of `names` nor an existing path, or the tokenizer lacks a
      token for a role in `needs`.
  """
  if not isinstance(value, (str, Path)) or not str(value) or not Path(value).expanduser().exists():
    raise DataError(
      f"data.tokenizer must be one of {', '.join(map(repr, names))}, got {value!r}, which is "
      f"neither one of them nor an existing path. It may also be the folder of a pretrained "
      f"tokenizer ({_FOLDER_FILES})."
    )
  tokenizer = load_pretrained_tokenizer(value)
  missing = [r for r in needs if r not in tokenizer.specials]
  if missing:
    raise DataError(
      f"The tokenizer in {str(value)!r} has no {', '.join(f'{r}_token' for r in missing)}, "
      f"which this data needs (it places {', '.join(needs)} tokens itself). Use a tokenizer "
      f"that has them (e.g. BERT's), or name them in the folder's {TOKENIZER_CONFIG}."
    )
  return tokenizer


def _gpt2(module, folder: Path, config: Mapping[str, str]):
  """GPT2TokenizerFast's tokenizer from vocab.json + merges.txt: byte-level BPE, no prefix space."""
  vocab, merges = module.models.BPE.read_file(str(folder / GPT2_VOCAB), str(folder / GPT2_MERGES))
  tokenizer = module.Tokenizer(
    module.models.BPE(
      vocab,
      merges,
      dropout=None,
      continuing_subword_prefix="",
      end_of_word_suffix="",
      fuse_unk=False,
    )
  )
  tokenizer.pre_tokenizer = module.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = module.decoders.ByteLevel()
  tokenizer.post_processor = module.processors.ByteLevel(trim_offsets=False)
  # transformers makes <|endoftext|> (its default unk, bos and eos) special, adding it if absent.
  names = [GPT2_END, *(t for t in config.values() if t != GPT2_END)]
  tokenizer.add_special_tokens([module.AddedToken(t, special=True) for t in names])
  return tokenizer


def _bert(module, folder: Path, config: Mapping[str, Any]):
  """BertTokenizerFast's tokenizer from vocab.txt: BERT normalisation, WordPiece with "##"."""
  settings = _read_json(folder / TOKENIZER_CONFIG)
  unk = config.get("unk", "[UNK]")
  vocab = module.models.WordPiece.read_file(str(folder / BERT_VOCAB))
  if unk not in vocab:
    raise DataError(
      f"{str(folder / BERT_VOCAB)!r} has no {unk} token, which WordPiece needs for unknown "
      f"words; the vocabulary is not BERT's."
    )
  tokenizer = module.Tokenizer(
    module.models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100)
  )
  specials = [t for t in (*_BERT_SPECIALS, *config.values()) if t in vocab]
  tokenizer.add_special_tokens(list(dict.fromkeys(specials)))
  tokenizer.normalizer = module.normalizers.BertNormalizer(
    clean_text=True,
    handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
    strip_accents=settings.get("strip_accents"),
    lowercase=settings.get("do_lower_case", True),
  )
  tokenizer.pre_tokenizer = module.pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = module.decoders.WordPiece(prefix="##")
  return tokenizer


def _special_config(folder: Path) -> dict[str, str]:
  """{role: token} named by the folder's special_tokens_map.json and tokenizer_config.json."""
  named = {}
  for file in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):  # The second wins, as in transformers.
    for role in ROLES:
      token = _read_json(folder / file).get(f"{role}_token")
      if isinstance(token, dict):  # An AddedToken, saved as {"content": ..., ...}.
        token = token.get("content")
      if isinstance(token, str) and token:
        named[role] = token
  return named


def _specials(tokenizer, config: Mapping[str, str]) -> dict[str, str]:
  """{role: token}: the config's tokens the tokenizer has, else its special tokens' usual names."""
  vocab = tokenizer.get_vocab(with_added_tokens=True)
  special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
  found = {r: t for r, t in config.items() if t in vocab}
  for role, names in _USUAL_NAMES.items():
    usual = next((t for t in names if t in special), None)
    if role not in found and usual is not None:
      found[role] = usual
  return found


def _read_json(path: Path) -> dict[str, Any]:
  if not path.is_file():
    return {}
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"Cannot read {str(path)!r} ({e}); the file is damaged.") from e
  return data if isinstance(data, dict) else {}


def _require(why: str):
  # Imported here: jaxdl.pretrained pulls in the models, which text data does not need.
  from jaxdl.pretrained.files import require  # pylint: disable=g-import-not-at-top

  return require("tokenizers", "hf", why)
