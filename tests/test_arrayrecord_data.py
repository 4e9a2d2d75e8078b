"""data.name=arrayrecord: ArrayRecord files written here with array_record's own writer (msgpack,
text and tf.train.Example records) named by data.train_files; batches equal to the bit to the same
arrays in memory, runs that repeat and resume exactly, and clear errors for damaged folders and
files. (Folders written by `jaxdl data convert`: tests/test_data_convert.py.)"""

import json
import sys

from flax import serialization
import numpy as np
import pytest

from jaxdl.data import arrayrecord, load_dataset, record_source, text, tf_example
from jaxdl.data.tokenizers import ByteTokenizer, CharTokenizer
from jaxdl.errors import ConfigError, DataError
from tests import records_fixtures as fx
from tests.reference.tf_example import example_class

array_record_module = pytest.importorskip("array_record.python.array_record_module")


def write_records(path, payloads):
  """One ArrayRecord file of `payloads` (bytes), written as Grain recommends (group_size:1)."""
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for payload in payloads:
    writer.write(payload)
  writer.close()


@pytest.fixture(scope="module")
def arrays():
  return (*fx.images_and_labels(fx.NUM_TRAIN, 0), *fx.images_and_labels(fx.NUM_TEST, 1))


@pytest.fixture(scope="module")
def msgpack_files(tmp_path_factory, arrays):
  """Train examples {"image": uint8 [8, 8, 1], "label": int} in three files written out of name
  order, test examples in one."""
  train_x, train_y, test_x, test_y = arrays
  root = tmp_path_factory.mktemp("arrayrecord")

  def examples(x, y):
    return [
      serialization.msgpack_serialize({"image": i[..., None], "label": int(c)})
      for i, c in zip(x, y)
    ]

  train = examples(train_x, train_y)
  for part, start in ((2, 200), (0, 0), (1, 100)):
    write_records(root / f"train-{part}.array_record", train[start : start + 100])
  write_records(root / "test.array_record", examples(test_x, test_y))
  return root


AUGMENTED = dict(augment="crop_flip", normalize=True, crop_padding=2, padding_mode="zero")


def _assert_same_batches(ours, reference, steps=6):
  for shard in range(2):
    kwargs = dict(batch_size=32, seed=5, shard_index=shard, shard_count=2)
    ours_it, ref_it = iter(ours.train_batches(**kwargs)), iter(reference.train_batches(**kwargs))
    for _ in range(steps):  # Over an epoch boundary (4 global batches an epoch).
      a, b = next(ours_it), next(ref_it)
      for key in b:
        np.testing.assert_array_equal(a[key], b[key], strict=True)
  for a, b in zip(ours.eval_batches(batch_size=40), reference.eval_batches(batch_size=40)):
    for key in b:
      np.testing.assert_array_equal(a[key], b[key], strict=True)


def _in_memory(arrays, **options):
  """The same images and labels as a pipeline.LoadedData, augmented as `options` say."""
  from jaxdl.data import augment as augment_lib
  from jaxdl.data import image_folder, pipeline

  train_x, train_y, test_x, test_y = arrays
  train = pipeline.Split(train_x[..., None], train_y)
  mean, std = image_folder.channel_stats(train.image)
  transform = augment_lib.from_options(mean=mean, std=std, **options)
  test = pipeline.Split(test_x[..., None], test_y)
  return pipeline.LoadedData(train, test, fx.NUM_CLASSES, {}, augment=transform)


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_msgpack_batches_equal_the_same_arrays_in_memory(msgpack_files, arrays, cache):
  """Decoded at load, or read from the shards at random positions batch by batch: the same."""
  ours = load_dataset(
    "arrayrecord",
    str(msgpack_files),
    train_files="train-*.array_record",
    eval_files="test.array_record",
    cache=cache,
    **AUGMENTED,
  )
  assert ours.source["in_memory"] == (cache == "memory")
  assert ours.source["train_files"] == [
    str(msgpack_files / f"train-{i}.array_record") for i in range(3)
  ]
  _assert_same_batches(ours, _in_memory(arrays, **AUGMENTED))


def test_files_comma_separated_or_a_folder_keep_their_order(msgpack_files, arrays):
  train_x = arrays[0]
  listed = load_dataset(
    "arrayrecord",
    str(msgpack_files),
    train_files="train-1.array_record, train-0.array_record",
    eval_files="test.array_record",
  )
  np.testing.assert_array_equal(
    listed.train.images(slice(None))[..., 0], np.concatenate([train_x[100:200], train_x[:100]])
  )
  # A folder: its *.array_record files, sorted (test.array_record after the train files).
  folder = load_dataset("arrayrecord", "", train_files=str(msgpack_files), eval_fraction=0.25)
  assert len(folder.train) + len(folder.test) == fx.NUM_TRAIN + fx.NUM_TEST


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory, msgpack_files):
  return fx.straight_again_and_resumed(
    tmp_path_factory,
    "image",
    "arrayrecord",
    8,
    f"data.dir={msgpack_files}",
    "data.train_files=train-*.array_record",
    "data.eval_files=test.array_record",
    "data.augment=flip",
  )


def test_image_runs_repeat_and_resume_exactly(image_runs):
  straight = image_runs["straight"]
  assert [r["step"] for r in straight if "eval/loss" in r] == [8, 16]
  assert straight[-1]["eval/accuracy"] > 1 / fx.NUM_CLASSES  # It learns.
  assert image_runs["again"] == straight
  assert image_runs["resumed"] == straight


def test_text_records_and_token_ids_make_language_model_streams(tmp_path):
  train_texts, test_texts = fx.texts(30, 0), fx.texts(8, 1)
  write_records(tmp_path / "train.array_record", [t.encode() for t in train_texts])
  write_records(tmp_path / "test.array_record", [t.encode() for t in test_texts])
  data = load_dataset(
    "arrayrecord",
    str(tmp_path),
    train_files="train.array_record",
    eval_files="test.array_record",
    decoder="text",
    block_size=8,
  )
  train_text, test_text = text.join_works(train_texts), text.join_works(test_texts)
  tok = CharTokenizer.fit(train_text + text.WORK_SEPARATOR + test_text)
  np.testing.assert_array_equal(data.train_tokens, tok.encode(train_text))
  np.testing.assert_array_equal(data.val_tokens, tok.encode(test_text))

  # msgpack records of token ids, concatenated; with the byte tokenizer, the texts' UTF-8 bytes.
  ids = [np.frombuffer(t.encode(), np.uint8).astype(np.int32) for t in train_texts]
  payloads = [serialization.msgpack_serialize({"input_ids": row}) for row in ids]
  write_records(tmp_path / "ids.array_record", payloads)
  data = load_dataset(
    "arrayrecord", str(tmp_path), train_files="ids.array_record", tokenizer="byte", block_size=8
  )
  stream = np.concatenate(ids)
  cut = len(stream) - int(len(stream) * 0.1)
  np.testing.assert_array_equal(data.train_tokens, stream[:cut])
  np.testing.assert_array_equal(data.val_tokens, stream[cut:])
  assert isinstance(data.tokenizer, ByteTokenizer)


# tf.train.Example records, as TFDS and tf.data write them; protobuf's own serialiser is the
# reference (tests/reference/tf_example.py builds the message classes from example.proto).


def test_tf_example_features_parse_as_protobuf_wrote_them():
  Example = example_class()
  example = Example()
  features = example.features.feature
  features["image"].bytes_list.value.append(b"\x89PNG\r\n")
  features["label"].int64_list.value.append(7)
  features["ids"].int64_list.value.extend([-5, 0, 300, 2**62, -(2**63)])
  features["scores"].float_list.value.extend([0.5, -1.25, 3e-8])
  features["words"].bytes_list.value.extend([b"a", "héllo".encode()])
  features["empty"].int64_list.SetInParent()
  parsed = tf_example.parse_example(example.SerializeToString())
  assert parsed.keys() == {"image", "label", "ids", "scores", "words", "empty"}
  assert parsed["image"] == b"\x89PNG\r\n" and parsed["label"] == 7
  np.testing.assert_array_equal(
    parsed["ids"], np.array([-5, 0, 300, 2**62, -(2**63)], np.int64), strict=True
  )
  np.testing.assert_array_equal(
    parsed["scores"], np.array([0.5, -1.25, 3e-8], np.float32), strict=True
  )
  assert parsed["words"] == [b"a", "héllo".encode()]
  assert parsed["empty"].size == 0

  # Repeated scalars written unpacked, one field each (proto2's default), read the same.
  unpacked = example_class(packed=False)()
  unpacked.features.feature["ids"].int64_list.value.extend([-5, 0, 300])
  unpacked.features.feature["scores"].float_list.value.extend([0.5, -1.25])
  data = unpacked.SerializeToString()
  assert data != Example.FromString(data).SerializeToString()  # Packed is another encoding.
  parsed = tf_example.parse_example(data)
  np.testing.assert_array_equal(parsed["ids"], [-5, 0, 300], strict=False)
  np.testing.assert_array_equal(parsed["scores"], np.array([0.5, -1.25], np.float32))

  with pytest.raises(DataError, match="not a serialised tf.train.Example"):
    tf_example.parse_example(example.SerializeToString()[:-3])


def test_tf_example_images_equal_the_same_arrays_in_memory(tmp_path, arrays):
  Example = example_class()

  def examples(x, y):
    for image, label in zip(x, y):
      example = Example()
      example.features.feature["image/encoded"].bytes_list.value.append(fx.png_bytes(image))
      example.features.feature["label"].int64_list.value.append(int(label))
      yield example.SerializeToString()

  train_x, train_y, test_x, test_y = arrays
  write_records(tmp_path / "train.array_record", examples(train_x, train_y))
  write_records(tmp_path / "test.array_record", examples(test_x, test_y))
  ours = load_dataset(
    "arrayrecord",
    str(tmp_path),
    train_files="train.array_record",
    eval_files="test.array_record",
    decoder="tf_example",
    image_column="image/encoded",
  )
  _assert_same_batches(
    ours,
    _in_memory(arrays, augment="none", normalize=False, crop_padding=4, padding_mode="zero"),
    steps=2,
  )


# Errors.


def test_bad_files_and_records_are_named(msgpack_files, tmp_path):
  with pytest.raises(DataError, match="needs data.dir, a folder written by `jaxdl data convert`"):
    load_dataset("arrayrecord", "")
  with pytest.raises(DataError, match=r"data.train_files: .*nothing-\*' matches no file"):
    load_dataset("arrayrecord", str(msgpack_files), train_files="nothing-*")
  (tmp_path / "bad.array_record").write_bytes(b"not an array record file" * 10)
  with pytest.raises(DataError, match=r"^Cannot read the ArrayRecord file .*bad.array_record"):
    load_dataset("arrayrecord", str(tmp_path), train_files="bad.array_record")
  write_records(tmp_path / "texts.array_record", [b"plain text, not msgpack"] * 3)
  with pytest.raises(DataError, match=r"^A record is not a msgpack map.*Set data.decoder"):
    load_dataset("arrayrecord", str(tmp_path), train_files="texts.array_record")
  with pytest.raises(DataError, match="data.decoder must be one of"):
    load_dataset("arrayrecord", str(tmp_path), train_files="texts.array_record", decoder="png")


def test_missing_extra_is_a_one_line_error(monkeypatch, msgpack_files):
  monkeypatch.setitem(sys.modules, "array_record", None)
  with pytest.raises(ConfigError) as error:
    load_dataset("arrayrecord", str(msgpack_files), train_files="train-*")
  assert str(error.value) == (
    "data.name=arrayrecord needs the package 'array_record', which is not installed; run: pip "
    "install 'jaxdl[arrayrecord]'"
  )


def _converted(root, arrays):
  """A folder laid out as `jaxdl data convert` writes one, written here by hand."""
  train_x, train_y, test_x, test_y = arrays
  root.mkdir()
  splits = {}
  for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
    name = f"{split}-00000-of-00001.array_record"
    write_records(
      root / name,
      [
        serialization.msgpack_serialize({"image": i[..., None], "label": int(c)})
        for i, c in zip(x, y)
      ],
    )
    splits[split] = {"num_records": len(y), "files": [name]}
  description = {
    "format": "jaxdl.arrayrecord",
    "version": 1,
    "layout": "records",
    "columns": ["image", "label"],
    "num_classes": fx.NUM_CLASSES,
    "splits": splits,
  }
  (root / "dataset.json").write_text(json.dumps(description))
  return description


def test_a_converted_folder_reads_its_description(tmp_path, arrays):
  _converted(tmp_path / "ok", arrays)
  ours = load_dataset("arrayrecord", str(tmp_path / "ok"), **AUGMENTED)
  assert ours.source["kind"] == "arrayrecord" and ours.num_classes == fx.NUM_CLASSES
  _assert_same_batches(ours, _in_memory(arrays, **AUGMENTED), steps=2)


def test_a_damaged_or_unfinished_folder_is_a_clear_error(tmp_path, arrays):
  folder = tmp_path / "shards"
  description = _converted(folder, arrays)

  def error(**options):
    with pytest.raises(DataError) as caught:
      load_dataset("arrayrecord", str(folder), **options)
    return str(caught.value)

  (folder / "dataset.json").unlink()
  assert error().startswith(
    f"The ArrayRecord folder {str(folder)!r} has no dataset.json: it is not a folder written by "
    f"`jaxdl data convert`, or its conversion did not finish"
  )
  for damaged, problem in (
    ('{"format": "jaxdl.arrayrecord", "vers', "is damaged (JSONDecodeError"),
    (json.dumps({**description, "version": 99}), "has format version 99; this jaxdl reads"),
    (json.dumps({**description, "format": "other"}), "is not a jaxdl ArrayRecord description"),
    (json.dumps({**description, "splits": {"train": {}}}), "is damaged: it needs a layout"),
  ):
    (folder / "dataset.json").write_text(damaged)
    assert problem in error().splitlines()[0], damaged
  (folder / "dataset.json").write_text(json.dumps(description))
  with pytest.raises(DataError, match="data.decoder='text' is for files named by data.train"):
    load_dataset("arrayrecord", str(folder), decoder="text")

  # A shard lost, or cut short.
  shard = folder / "test-00000-of-00001.array_record"
  content = shard.read_bytes()
  shard.unlink()
  assert "lacks ['test-00000-of-00001.array_record'] of its test split" in error()
  shard.write_bytes(content[: len(content) // 2])
  assert error().startswith(f"Cannot read the ArrayRecord file {str(shard)!r}")
  shard.write_bytes(content)
  description["splits"]["test"]["num_records"] += 1
  (folder / "dataset.json").write_text(json.dumps(description))
  assert "hold 64 records, but its dataset.json says 65" in error()


def test_a_record_source_reads_batches_in_order(msgpack_files, arrays):
  files = arrayrecord.ArrayRecordFiles(sorted(msgpack_files.glob("train-*.array_record")))
  assert len(files) == fx.NUM_TRAIN
  rows = record_source.read_records(files, [255, 3, 104, 3])
  np.testing.assert_array_equal(
    np.stack([r["image"][..., 0] for r in rows]), arrays[0][[255, 3, 104, 3]]
  )
  assert record_source.read_records(files, []) == []
