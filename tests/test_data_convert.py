"""`jaxdl data convert SRC --to arrayrecord --out DIR`: MNIST shards train to the bit as the IDX
files do (straight and resumed); text, seq2seq, image folders and Parquet images read back exactly;
the output folder is never taken over, and an interrupted conversion is never taken for a dataset.
(Reading ArrayRecord files in general: tests/test_arrayrecord_data.py.)"""

import json
import sys

from flax import serialization
import numpy as np
import pytest

from jaxdl import cli
from jaxdl.data import arrayrecord, convert, image_folder, load_dataset, record_images
from jaxdl.errors import DataError
from tests import records_fixtures as fx
from tests.conftest import seed_cnn_run

array_record_module = pytest.importorskip("array_record.python.array_record_module")


def _convert(*args):
  return cli.main(["data", "convert", *args, "--to", "arrayrecord", "--no-progress"])


def _read_shards(folder, split):
  """The records of a split, read with array_record's reader and flax's msgpack, file by file."""
  description = json.loads((folder / "dataset.json").read_text())
  rows = []
  for name in description["splits"][split]["files"]:
    reader = array_record_module.ArrayRecordReader(str(folder / name))
    rows += [serialization.msgpack_restore(r) for r in reader.read_all()]
    reader.close()
  return rows


@pytest.fixture(scope="module")
def mnist_shards(tmp_path_factory):
  """The MNIST subset shipped with jaxdl, converted into three shards a split."""
  out = tmp_path_factory.mktemp("convert") / "mnist"
  assert _convert("mnist", "download=false", "--out", str(out), "--shards", "3") == 0
  return out


def test_mnist_shards_hold_the_idx_arrays(mnist_shards):
  mnist = load_dataset("mnist", allow_download=False)
  description = json.loads((mnist_shards / "dataset.json").read_text())
  assert description["splits"]["train"]["files"] == [
    f"train-0000{k}-of-00003.array_record" for k in range(3)
  ]
  assert description["num_classes"] == 10 and description["source"]["dataset"] == "mnist"
  for split, ours in (("train", mnist.train), ("test", mnist.test)):
    rows = _read_shards(mnist_shards, split)
    np.testing.assert_array_equal(np.stack([r["image"] for r in rows]), ours.image, strict=True)
    np.testing.assert_array_equal([r["label"] for r in rows], ours.label)


@pytest.fixture(scope="module")
def idx_run(tmp_path_factory):
  return seed_cnn_run(tmp_path_factory.mktemp("idx") / "run", "data.download=false")


SHARDS = ["data.name=arrayrecord"]


def test_training_on_the_shards_equals_training_on_the_idx_files(idx_run, mnist_shards, tmp_path):
  ours = seed_cnn_run(tmp_path / "shards", *SHARDS, f"data.dir={mnist_shards}")
  assert [r["step"] for r in ours] == [10, 20, 20] and "eval/loss" in ours[-1]
  assert ours == idx_run


def test_a_stopped_and_resumed_run_on_the_shards_equals_the_straight_run(
  idx_run, mnist_shards, tmp_path
):
  run, shards = tmp_path / "resumed", f"data.dir={mnist_shards}"
  seed_cnn_run(run, *SHARDS, shards, "train.num_steps=10")
  resumed = seed_cnn_run(run, *SHARDS, shards)
  # The first run also evaluated its last step, 10.
  assert [r for r in resumed if not (r["step"] == 10 and "eval/loss" in r)] == idx_run


def test_text_shards_read_back_the_same_streams_and_batches(tmp_path):
  out = tmp_path / "text"
  assert _convert("text", "block_size=16", "--out", str(out)) == 0
  ours = load_dataset("arrayrecord", str(out), block_size=16)
  theirs = load_dataset("text", block_size=16)
  for mine, reference in (
    (ours.train_tokens, theirs.train_tokens),
    (ours.val_tokens, theirs.val_tokens),
  ):
    np.testing.assert_array_equal(mine, reference, strict=True)
  assert ours.tokenizer.to_json() == theirs.tokenizer.to_json()
  rows = _read_shards(out, "train")
  assert len(rows) == -(-len(theirs.train_tokens) // convert.TOKENS_PER_RECORD)
  assert {len(r["tokens"]) for r in rows[:-1]} == {convert.TOKENS_PER_RECORD}
  # Shards 0 and 1 of 2 together are the one-process batch.
  whole = next(iter(theirs.train_batches(batch_size=8, seed=3)))["tokens"]
  halves = [
    next(iter(ours.train_batches(batch_size=4, seed=3, shard_index=i, shard_count=2)))["tokens"]
    for i in range(2)
  ]
  np.testing.assert_array_equal(np.concatenate(halves), whole, strict=True)


def test_training_on_text_shards_equals_training_on_the_text(tmp_path):
  # A small validation split keeps the evaluations short.
  assert _convert("text", "val_fraction=0.01", "--out", str(tmp_path / "shards")) == 0
  fx.train(tmp_path / "text", "text", "text", "train.num_steps=8", "data.val_fraction=0.01")
  shards = f"data.dir={tmp_path / 'shards'}"
  fx.train(tmp_path / "ours", "text", "arrayrecord", shards, "train.num_steps=8")
  ours = fx.logged(tmp_path / "ours")
  assert [r["step"] for r in ours] == [4, 8, 8] and "eval/loss" in ours[-1]
  assert ours == fx.logged(tmp_path / "text")


def test_masked_text_keeps_its_tokenizer_and_masks(tmp_path):
  masked = dict(objective="masked_lm", block_size=16, mask_rate=0.2)
  options = [f"{key}={value}" for key, value in masked.items()]
  assert _convert("text", *options, "tokenizer=byte", "--out", str(tmp_path / "t")) == 0
  theirs = load_dataset("text", tokenizer="byte", **masked)
  ours = load_dataset("arrayrecord", str(tmp_path / "t"), **masked)
  a, b = (next(iter(d.train_batches(batch_size=4, seed=1))) for d in (ours, theirs))
  for key in b:
    np.testing.assert_array_equal(a[key], b[key], strict=True)
  assert ours.model_hints == theirs.model_hints
  with pytest.raises(DataError, match="data.tokenizer='byte': the token ids in"):
    load_dataset("arrayrecord", str(tmp_path / "t"), tokenizer="byte")


def test_seq2seq_rows_read_back_as_the_same_arrays(tmp_path):
  options = ["num_train=300", "num_test=50"]
  assert _convert("seq2seq", *options, "--out", str(tmp_path / "s")) == 0
  ours = load_dataset("arrayrecord", str(tmp_path / "s"))
  theirs = load_dataset("seq2seq", num_train=300, num_test=50)
  for split in ("train", "test"):
    for name, array in getattr(theirs, split).arrays.items():
      np.testing.assert_array_equal(getattr(ours, split).arrays[name], array, strict=True)
  assert (ours.task, ours.input_key, ours.model_hints) == ("seq2seq", "src", theirs.model_hints)
  assert (ours.pad_id, ours.bos_id, ours.eos_id) == (theirs.pad_id, theirs.bos_id, theirs.eos_id)
  assert ours.tokenizer.to_json() == theirs.tokenizer.to_json()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """An image folder of RGB photos of several sizes, PNG and JPEG, two classes."""
  from PIL import Image

  root = tmp_path_factory.mktemp("photos")
  rng = np.random.default_rng(0)
  for split, count in (("train", 6), ("val", 3)):
    for k in range(count):
      folder = root / split / ("cat" if k % 2 else "dog")
      folder.mkdir(parents=True, exist_ok=True)
      height, width = int(rng.integers(12, 30)), int(rng.integers(12, 30))
      pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(folder / f"{k}.{'png' if k % 3 else 'jpg'}")
  return root


def test_a_streamed_image_folder_converts_to_the_pixels_held_in_memory(photos, tmp_path):
  in_memory = image_folder.load_image_folder(str(photos), image_size=8, streaming=False)
  for streaming in ("true", "false"):
    out = tmp_path / streaming
    assert (
      _convert(
        "image_folder", f"dir={photos}", "image_size=8", f"streaming={streaming}", "--out", str(out)
      )
      == 0
    )
    for split, theirs in (("train", in_memory.train), ("test", in_memory.test)):
      rows = _read_shards(out, split)
      np.testing.assert_array_equal(np.stack([r["image"] for r in rows]), theirs.image, strict=True)
      np.testing.assert_array_equal([r["label"] for r in rows], theirs.label)
    assert json.loads((out / "dataset.json").read_text())["classes"] == ["cat", "dog"]
  # PNG is lossless; JPEG is close.
  for encoding in ("png", "jpeg"):
    out = tmp_path / encoding
    assert (
      _convert(
        "image_folder",
        f"dir={photos}",
        "image_size=8",
        "--out",
        str(out),
        "--image-encoding",
        encoding,
      )
      == 0
    )
    images = load_dataset("arrayrecord", str(out)).train.images(slice(None))
    if encoding == "png":
      np.testing.assert_array_equal(images, in_memory.train.image, strict=True)
    else:
      error = np.abs(images.astype(int) - in_memory.train.image).mean()
      assert 0 < error < 16


def test_parquet_images_convert_to_the_same_batches(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  for split, (x, y) in (
    ("train", fx.images_and_labels(64, 0)),
    ("test", fx.images_and_labels(16, 1)),
  ):
    pq.write_table(pa.table({"image": [fx.png_bytes(i) for i in x], "label": y}), tmp_path / split)
  options = [f"dir={tmp_path}", "train_files=train", "eval_files=test"]
  assert _convert("parquet", *options, "--out", str(tmp_path / "ar")) == 0
  parquet = load_dataset(
    "parquet", str(tmp_path), train_files="train", eval_files="test", augment="flip"
  )
  ours = load_dataset("arrayrecord", str(tmp_path / "ar"), augment="flip")
  assert isinstance(ours, record_images.RecordImageDataset)
  a, b = (next(iter(d.train_batches(batch_size=16, seed=2))) for d in (ours, parquet))
  for key in b:
    np.testing.assert_array_equal(a[key], b[key], strict=True)


def test_shards_split_the_records_in_order(tmp_path, monkeypatch):
  monkeypatch.setattr(convert, "SHARD_BYTES", 1000)  # About 1 KB of records a shard.
  options = ["num_train=50", "num_test=3"]
  description = convert.convert("seq2seq", options, tmp_path / "s", show_progress=False)
  train = description["splits"]["train"]
  first = {"src": np.zeros(13, np.int32), "tgt": np.zeros(14, np.int32)}  # As seq2seq pads.
  assert len(train["files"]) == -(-50 * len(arrayrecord.encode_record(first)) // 1000)
  sizes = [len(_read_shards_file(tmp_path / "s" / name)) for name in train["files"]]
  assert sum(sizes) == 50 and max(sizes) - min(sizes) <= 1
  theirs = load_dataset("seq2seq", num_train=50, num_test=3).train.arrays["src"]
  rows = _read_shards(tmp_path / "s", "train")
  np.testing.assert_array_equal(np.stack([r["src"] for r in rows]), theirs)
  # Never more shards than records.
  description = convert.convert("seq2seq", options, tmp_path / "t", shards=5, show_progress=False)
  assert [len(s["files"]) for s in description["splits"].values()] == [5, 3]


def _read_shards_file(path):
  reader = array_record_module.ArrayRecordReader(str(path))
  try:
    return reader.read_all()
  finally:
    reader.close()


# The output folder.


def test_a_non_empty_out_is_refused_and_overwrite_replaces_only_a_conversion(tmp_path, capsys):
  out = tmp_path / "out"
  args = ["seq2seq", "num_train=40", "num_test=8", "--out", str(out)]
  assert _convert(*args, "--shards", "3") == 0
  (out / "notes.txt").write_text("mine")
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  capsys.readouterr()
  assert _convert(*args) == 2
  first_line = capsys.readouterr().err.splitlines()[0]
  assert first_line.startswith(f"jaxdl data: error: --out {str(out)!r} is not empty")
  assert "pass --overwrite" in first_line
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before

  assert _convert(*args, "--shards", "1", "--overwrite") == 0
  assert sorted(p.name for p in out.iterdir()) == [
    "dataset.json",
    "notes.txt",
    "test-00000-of-00001.array_record",
    "train-00000-of-00001.array_record",
  ]
  assert (out / "notes.txt").read_text() == "mine"
  assert len(load_dataset("arrayrecord", str(out)).train) == 40

  (tmp_path / "file").write_text("")
  assert _convert("seq2seq", "--out", str(tmp_path / "file")) == 2
  assert "is a file" in capsys.readouterr().err


def test_an_interrupted_conversion_is_not_taken_for_a_dataset(tmp_path, monkeypatch):
  out = tmp_path / "out"
  encode, calls = arrayrecord.encode_record, []

  def fail_at_the_30th(fields):
    calls.append(1)
    if len(calls) == 30:
      raise KeyboardInterrupt
    return encode(fields)

  monkeypatch.setattr(arrayrecord, "encode_record", fail_at_the_30th)
  with pytest.raises(KeyboardInterrupt):
    convert.convert("seq2seq", ["num_train=40", "num_test=8"], out, shards=2, show_progress=False)
  monkeypatch.undo()
  # The first train shard (records 0-19) is complete; nothing says the dataset is.
  assert not (out / "dataset.json").exists()
  with pytest.raises(DataError, match="has no dataset.json: .* or its conversion did not finish"):
    load_dataset("arrayrecord", str(out))
  with pytest.raises(Exception, match="is not empty"):
    convert.convert("seq2seq", ["num_train=40", "num_test=8"], out, show_progress=False)
  convert.convert(
    "seq2seq", ["num_train=40", "num_test=8"], out, overwrite=True, show_progress=False
  )
  assert sorted(p.name for p in out.iterdir()) == [
    "dataset.json",
    "test-00000-of-00001.array_record",
    "train-00000-of-00001.array_record",
  ]


def test_bad_arguments_name_the_fix(tmp_path, capsys):
  assert _convert("mnsit", "--out", str(tmp_path / "a")) == 2
  assert "Unknown dataset 'mnsit'. Did you mean mnist?" in capsys.readouterr().err
  assert _convert("text", "blocksize=8", "--out", str(tmp_path / "a")) == 2
  assert (
    "Unknown config key 'data.blocksize'. Did you mean data.block_size" in capsys.readouterr().err
  )
  assert not (tmp_path / "a").exists()


def test_missing_extra_is_a_one_line_error(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "array_record", None)
  assert _convert("mnist", "--out", str(tmp_path / "a")) == 2
  assert capsys.readouterr().err == (
    "jaxdl data: error: jaxdl data convert --to arrayrecord needs the package 'array_record', "
    "which is not installed; run: pip install 'jaxdl[arrayrecord]'\n"
  )
