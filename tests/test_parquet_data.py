"""data.name=parquet: Parquet files (a file, a glob, a folder or a list) read through
jaxdl.data.records; PNG bytes, nested-list and token-id columns; batches equal to the bit to the
same arrays in memory, and runs that repeat and resume exactly."""

import sys

import numpy as np
import pytest

from jaxdl.data import augment as augment_lib
from jaxdl.data import image_folder, load_dataset, pipeline, record_images, text
from jaxdl.data.parquet import ArrowRecords
from jaxdl.data.tokenizers import ByteTokenizer, CharTokenizer
from jaxdl.errors import ConfigError, DataError
from tests import records_fixtures as fx

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def arrays():
  return (*fx.images_and_labels(fx.NUM_TRAIN, 0), *fx.images_and_labels(fx.NUM_TEST, 1))


@pytest.fixture(scope="module")
def png_files(tmp_path_factory, arrays):
  """Train images as PNG bytes in three files (written out of name order), test in one."""
  train_x, train_y, test_x, test_y = arrays
  root = tmp_path_factory.mktemp("parquet")
  table = pa.table({"image": [fx.png_bytes(x) for x in train_x], "label": train_y})
  for part, start in ((2, 200), (0, 0), (1, 100)):
    pq.write_table(table.slice(start, 100), root / f"train-{part}.parquet")
  pq.write_table(
    pa.table({"image": [fx.png_bytes(x) for x in test_x], "label": test_y}), root / "t"
  )
  return root


def _reference(arrays, **options):
  train_x, train_y, test_x, test_y = arrays
  train = pipeline.Split(train_x[..., None], train_y)
  mean, std = image_folder.channel_stats(train.image)
  transform = augment_lib.from_options(mean=mean, std=std, **options)
  test = pipeline.Split(test_x[..., None], test_y)
  return pipeline.LoadedData(train, test, fx.NUM_CLASSES, {}, augment=transform)


AUGMENTED = dict(augment="crop_flip", normalize=True, crop_padding=2, padding_mode="zero")


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_png_batches_equal_the_same_arrays_in_memory(png_files, arrays, cache):
  ours = load_dataset(
    "parquet",
    str(png_files),
    train_files="train-*.parquet",
    eval_files="t",
    cache=cache,
    **AUGMENTED,
  )
  assert ours.source["in_memory"] == (cache == "memory")
  assert isinstance(ours, record_images.RecordImageDataset)
  assert ours.source["train_files"] == [str(png_files / f"train-{i}.parquet") for i in range(3)]
  reference = _reference(arrays, **AUGMENTED)
  for shard in range(2):
    kwargs = dict(batch_size=32, seed=5, shard_index=shard, shard_count=2)
    ours_it, ref_it = iter(ours.train_batches(**kwargs)), iter(reference.train_batches(**kwargs))
    for _ in range(6):  # Over an epoch boundary (4 global batches an epoch).
      a, b = next(ours_it), next(ref_it)
      for key in b:
        np.testing.assert_array_equal(a[key], b[key], strict=True)
  for a, b in zip(ours.eval_batches(batch_size=40), reference.eval_batches(batch_size=40)):
    for key in b:
      np.testing.assert_array_equal(a[key], b[key], strict=True)


def test_files_as_a_list_a_folder_or_a_glob_keep_a_sorted_order(png_files, arrays, tmp_path):
  train_x = arrays[0]
  listed = load_dataset(
    "parquet",
    "",
    train_files=[str(png_files / "train-1.parquet"), str(png_files / "train-0.parquet")],
    eval_files=str(png_files / "t"),
  )
  np.testing.assert_array_equal(
    listed.train.images(slice(None))[..., 0], np.concatenate([train_x[100:200], train_x[:100]])
  )
  folder = load_dataset("parquet", str(png_files), train_files=".", eval_files="t")
  np.testing.assert_array_equal(folder.train.images(slice(None))[..., 0], train_x)


def test_nested_list_images_are_read_a_batch_at_a_time(tmp_path, arrays):
  train_x, train_y, test_x, test_y = arrays
  for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
    pq.write_table(pa.table({"image": [row.tolist() for row in x], "label": y}), tmp_path / name)
  data = load_dataset("parquet", str(tmp_path), train_files="train", eval_files="test")
  np.testing.assert_array_equal(data.train.images(np.array([5, 3]))[..., 0], train_x[[5, 3]])
  # The column comes back stacked, [N, 8, 8], not as Python lists of numbers.
  source = ArrowRecords(pq.read_table(tmp_path / "train"))
  stacked = source.__getitems__([5, 3])
  assert isinstance(stacked[0]["image"], np.ndarray) and stacked[0]["image"].shape == (8, 8)


def test_without_eval_files_eval_rows_are_carved_out(png_files, arrays):
  data = load_dataset("parquet", str(png_files), train_files="train-*", eval_fraction=0.5)
  permutation = np.random.default_rng(0).permutation(fx.NUM_TRAIN)
  np.testing.assert_array_equal(data.test.label, arrays[1][np.sort(permutation[:128])])


def test_text_and_token_id_columns_make_language_model_streams(tmp_path):
  train_texts, test_texts = fx.texts(30, 0), fx.texts(8, 1)
  pq.write_table(pa.table({"text": train_texts}), tmp_path / "train.parquet")
  pq.write_table(pa.table({"text": test_texts}), tmp_path / "test.parquet")
  data = load_dataset(
    "parquet", str(tmp_path), train_files="train.parquet", eval_files="test.parquet", block_size=8
  )
  train_text, test_text = text.join_works(train_texts), text.join_works(test_texts)
  tok = CharTokenizer.fit(train_text + text.WORK_SEPARATOR + test_text)
  np.testing.assert_array_equal(data.train_tokens, tok.encode(train_text))
  np.testing.assert_array_equal(data.val_tokens, tok.encode(test_text))

  # Token ids, concatenated; with the byte tokenizer they are the texts' UTF-8 bytes.
  ids = [list(t.encode()) for t in train_texts]
  pq.write_table(pa.table({"input_ids": ids}), tmp_path / "ids.parquet")
  data = load_dataset(
    "parquet", str(tmp_path), train_files="ids.parquet", tokenizer="byte", block_size=8
  )
  stream = np.concatenate([np.frombuffer(t.encode(), np.uint8) for t in train_texts])
  cut = len(stream) - int(len(stream) * 0.1)
  np.testing.assert_array_equal(data.train_tokens, stream[:cut])
  np.testing.assert_array_equal(data.val_tokens, stream[cut:])
  assert isinstance(data.tokenizer, ByteTokenizer)
  with pytest.raises(DataError, match="records hold token ids"):
    load_dataset("parquet", str(tmp_path), train_files="ids.parquet", tokenizer="char")


def test_missing_extra_is_a_one_line_error(monkeypatch, png_files):
  monkeypatch.setitem(sys.modules, "pyarrow", None)
  with pytest.raises(ConfigError) as error:
    load_dataset("parquet", str(png_files), train_files="train-*")
  assert str(error.value) == (
    "data.name=parquet needs the package 'pyarrow', which is not installed; run: pip install "
    "'jaxdl[parquet]'"
  )


def test_bad_files_and_columns_are_named(png_files, tmp_path):
  with pytest.raises(DataError, match="needs data.train_files"):
    load_dataset("parquet", str(png_files))
  with pytest.raises(DataError, match=r"data.train_files: .*nothing-\*.parquet' matches no"):
    load_dataset("parquet", str(png_files), train_files="nothing-*.parquet")
  with pytest.raises(DataError, match=r"data.image_column=.img. is not a column.*\[.image., .l"):
    load_dataset("parquet", str(png_files), train_files="train-*", image_column="img")
  (tmp_path / "bad.parquet").write_text("not parquet")
  with pytest.raises(DataError, match="Cannot read the Parquet file .*bad.parquet"):
    load_dataset("parquet", str(tmp_path), train_files="bad.parquet")
  pq.write_table(pa.table({"x": [1.5, 2.5]}), tmp_path / "floats.parquet")
  with pytest.raises(DataError, match=r"No image, text or token-id column.*\['x'\]"):
    load_dataset("parquet", str(tmp_path), train_files="floats.parquet")


def test_decode_image_accepts_each_form_and_names_a_bad_field():
  from PIL import Image

  pixels = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
  for value in (
    pixels,
    pixels.tolist(),
    fx.png_bytes(pixels),
    {"bytes": fx.png_bytes(pixels), "path": None},
    Image.fromarray(pixels),
  ):
    np.testing.assert_array_equal(record_images.decode_image(value), pixels, strict=True)
  np.testing.assert_array_equal(record_images.decode_image(pixels[..., 0]), pixels[..., :1])
  with pytest.raises(DataError, match="'photo'.*not a PNG"):
    record_images.decode_image(b"nonsense", "photo")
  with pytest.raises(DataError, match="'photo' has pixel values in \\[0, 300\\]"):
    record_images.decode_image([[0, 300]], "photo")
  with pytest.raises(DataError, match="'photo' holds str"):
    record_images.decode_image("cat.png", "photo")


def test_grayscale_images_in_a_colour_dataset_get_three_equal_channels(tmp_path):
  from PIL import Image

  colour = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
  gray = np.full((4, 4), 7, np.uint8)
  cmyk = Image.fromarray(colour).convert("CMYK")  # Other modes become RGB as Pillow converts.
  images = [fx.png_bytes(colour), fx.png_bytes(gray), fx.png_bytes(colour)]
  pq.write_table(pa.table({"image": images, "label": [0, 1, 0]}), tmp_path / "train.parquet")
  data = load_dataset("parquet", str(tmp_path), train_files="train.parquet", eval_files="train.*")
  decoded = data.train.images(slice(None))
  np.testing.assert_array_equal(decoded[1], np.repeat(gray[..., None], 3, axis=-1))
  np.testing.assert_array_equal(decoded[0], colour)
  np.testing.assert_array_equal(record_images.decode_image(cmyk), np.asarray(cmyk.convert("RGB")))


# End to end.


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory, png_files):
  return fx.straight_again_and_resumed(
    tmp_path_factory,
    "image",
    "parquet",
    8,
    f"data.dir={png_files}",
    "data.train_files=train-*.parquet",
    "data.eval_files=t",
    "data.augment=flip",
    "data.normalize=true",
  )


def test_image_runs_repeat_and_resume_exactly(image_runs):
  straight = image_runs["straight"]
  assert [r["step"] for r in straight if "eval/loss" in r] == [8, 16]
  assert straight[-1]["eval/accuracy"] > 1 / fx.NUM_CLASSES  # It learns.
  assert image_runs["again"] == straight
  assert image_runs["resumed"] == straight


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("parquet_text")
  pq.write_table(pa.table({"text": fx.texts(200, 0)}), root / "train.parquet")
  return fx.straight_again_and_resumed(
    tmp_path_factory,
    "text",
    "parquet",
    8,
    f"data.dir={root}",
    "data.train_files=train.parquet",
    "data.tokenizer=char",
  )


# Slow (four GPT runs, 10-30 s on two busy cores); the default suite trains on Parquet images above.
@pytest.mark.slow
def test_language_model_runs_repeat_and_resume_exactly(text_runs):
  straight = text_runs["straight"]
  assert [r["step"] for r in straight if "eval/loss" in r] == [8, 16]
  assert text_runs["again"] == straight
  assert text_runs["resumed"] == straight
