"""data.name=hf: Hugging Face datasets saved with save_to_disk or in the local cache, read offline
through jaxdl.data.records; batches equal to the bit to the same arrays held in memory, and runs
that repeat and resume exactly."""

import shutil
import sys

import numpy as np
import pytest

from jaxdl.data import augment as augment_lib
from jaxdl.data import image_folder, load_dataset, pipeline, record_images, reviews, text
from jaxdl.data.tokenizers import CharTokenizer, WordTokenizer
from jaxdl.errors import ConfigError, DataError
from tests import records_fixtures as fx

datasets = pytest.importorskip("datasets")


def _go_offline(patch):
  """HF_DATASETS_OFFLINE=1, and the switch `datasets` read from it when it was imported."""
  patch.setenv("HF_DATASETS_OFFLINE", "1")
  patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
  _go_offline(monkeypatch)


@pytest.fixture(scope="module")
def arrays():
  """(train images, train labels, test images, test labels): uint8 [N, 8, 8], int64 [N]."""
  return (*fx.images_and_labels(fx.NUM_TRAIN, 0), *fx.images_and_labels(fx.NUM_TEST, 1))


def _save(path, columns_by_split, features=None):
  splits = {
    name: datasets.Dataset.from_dict(columns, features=features)
    for name, columns in columns_by_split.items()
  }
  datasets.DatasetDict(splits).save_to_disk(str(path))
  return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, arrays):
  """A DatasetDict of images as nested uint8 lists (Dataset.from_dict of numpy arrays)."""
  train_x, train_y, test_x, test_y = arrays
  return _save(
    tmp_path_factory.mktemp("hf") / "images",
    {
      "train": {"image": list(train_x), "label": train_y},
      "test": {"image": list(test_x), "label": test_y},
    },
  )


@pytest.fixture(scope="module")
def png_dir(tmp_path_factory, arrays):
  """The same images as an Image feature (PNG bytes) with a ClassLabel, and another column."""
  from PIL import Image

  train_x, train_y, test_x, test_y = arrays
  features = datasets.Features(
    {
      "img": datasets.Image(),
      "digit": datasets.ClassLabel(num_classes=fx.NUM_CLASSES),
      "note": datasets.Value("string"),
    }
  )

  def columns(x, y):
    return {"img": [Image.fromarray(i) for i in x], "digit": y, "note": ["x"] * len(y)}

  return _save(
    tmp_path_factory.mktemp("hf") / "png",
    {"train": columns(train_x, train_y), "test": columns(test_x, test_y)},
    features,
  )


def _reference(arrays, **options):
  """The in-memory LoadedData of the same arrays, augmented as the options say, with the training
  images' own statistics (image_folder.channel_stats) for normalisation."""
  train_x, train_y, test_x, test_y = arrays
  train = pipeline.Split(train_x[..., None], train_y)
  mean, std = image_folder.channel_stats(train.image)
  transform = augment_lib.from_options(mean=mean, std=std, **options)
  test = pipeline.Split(test_x[..., None], test_y)
  return pipeline.LoadedData(train, test, fx.NUM_CLASSES, {}, augment=transform)


def _assert_same_batches(ours, reference, *, batch_size=32, steps=12):
  """Training batches (2 shards of 2, over an epoch boundary), evaluation batches and the example
  batch of two datasets are equal to the bit."""
  assert ours.model_hints == reference.model_hints and ours.task == reference.task
  for shard in range(2):
    kwargs = dict(batch_size=batch_size, seed=7, shard_index=shard, shard_count=2)
    ours_it, ref_it = iter(ours.train_batches(**kwargs)), iter(reference.train_batches(**kwargs))
    for _ in range(steps):  # 256 / 64 = 4 global batches an epoch: 3 epochs.
      a, b = next(ours_it), next(ref_it)
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], strict=True)
  ours_eval = list(ours.eval_batches(batch_size=48))
  ref_eval = list(reference.eval_batches(batch_size=48))
  assert len(ours_eval) == len(ref_eval) == 2
  for a, b in zip(ours_eval, ref_eval):
    for key in b:
      np.testing.assert_array_equal(a[key], b[key], strict=True)
  for key, value in reference.example_batch(5).items():
    np.testing.assert_array_equal(ours.example_batch(5)[key], value, strict=True)


AUGMENTED = dict(augment="crop_flip", normalize=True, crop_padding=2, padding_mode="reflect")
PLAIN = dict(augment="none", normalize=False, crop_padding=4, padding_mode="zero")


@pytest.mark.parametrize("cache", ["memory", "none"])
@pytest.mark.parametrize("options", [PLAIN, AUGMENTED], ids=["plain", "augmented"])
def test_image_batches_equal_the_same_arrays_in_memory(image_dir, arrays, options, cache):
  """Decoded into memory at load or read from the records batch by batch: the same batches."""
  ours = load_dataset("hf", str(image_dir), cache=cache, **options)
  assert isinstance(ours, record_images.RecordImageDataset)
  assert ours.source["in_memory"] == (cache == "memory")
  assert ours.source["num_train"] == fx.NUM_TRAIN and ours.source["image_shape"] == [8, 8, 1]
  _assert_same_batches(ours, _reference(arrays, **options))


def test_png_image_column_with_class_labels_decodes_to_the_same_batches(png_dir, arrays):
  ours = load_dataset(
    "hf", str(png_dir), image_column="img", label_column="digit", num_classes=4, **AUGMENTED
  )
  assert ours.source["fields"] == {"image": "img", "label": "digit"}
  _assert_same_batches(ours, _reference(arrays, **AUGMENTED), steps=4)


def test_iterator_state_resumes_the_stream_exactly(image_dir):
  data = load_dataset("hf", str(image_dir), augment="flip")
  iterator = iter(data.train_batches(batch_size=32, seed=3))
  for _ in range(5):  # Into the second epoch.
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(4)]
  resumed = iter(data.train_batches(batch_size=32, seed=3))
  resumed.set_state(state)
  for batch in expected:
    got = next(resumed)
    for key in batch:
      np.testing.assert_array_equal(got[key], batch[key], strict=True)


def test_a_lone_dataset_carves_its_eval_rows_by_eval_fraction(tmp_path, arrays):
  train_x, train_y, _, _ = arrays
  path = tmp_path / "lone"
  datasets.Dataset.from_dict({"image": list(train_x), "label": train_y}).save_to_disk(str(path))
  data = load_dataset("hf", str(path), eval_fraction=0.25)
  # The first quarter of numpy's permutation seeded with 0 is evaluation, both kept in order.
  permutation = np.random.default_rng(0).permutation(fx.NUM_TRAIN)
  eval_rows, train_rows = np.sort(permutation[:64]), np.sort(permutation[64:])
  np.testing.assert_array_equal(data.test.images(slice(None))[..., 0], train_x[eval_rows])
  np.testing.assert_array_equal(data.train.images(slice(None))[..., 0], train_x[train_rows])
  np.testing.assert_array_equal(data.train.label, train_y[train_rows])
  assert data.source["eval_fraction"] == 0.25


def test_images_of_other_sizes_need_image_size(tmp_path):
  from PIL import Image

  rng = np.random.default_rng(0)
  pictures = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(12, 8, 3), (8, 10, 3)]]
  path = _save(
    tmp_path / "sizes",
    {
      "train": {"image": [Image.fromarray(p) for p in pictures], "label": [0, 1]},
      "test": {"image": [Image.fromarray(pictures[1])], "label": [1]},
    },
    datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
  )
  with pytest.raises(DataError, match=r"shape \(8, 10, 3\).*data.image_size"):
    load_dataset("hf", str(path))
  data = load_dataset("hf", str(path), image_size=6)
  images = data.train.images(slice(None))
  assert images.shape == (2, 6, 6, 3)
  # Shorter side to 6, then the centre crop, as Pillow computes it.
  tall = Image.fromarray(pictures[0]).resize((6, 9), Image.Resampling.BILINEAR).crop((0, 2, 6, 8))
  np.testing.assert_array_equal(images[0], np.asarray(tall))


def test_text_column_without_labels_is_language_modelling(tmp_path):
  # "z" and "!" only in the evaluation split: the characters of both splits make the vocabulary.
  train_texts, test_texts = fx.texts(40, 0), [*fx.texts(9, 1), "zebra!"]
  path = _save(tmp_path / "text", {"train": {"text": train_texts}, "test": {"text": test_texts}})
  data = load_dataset("hf", str(path), block_size=16)
  assert isinstance(data, text.TextDataset) and data.source["task"] == "lm"
  # As data.name=text tokenizes: characters of both splits, texts joined by a blank line.
  train_text, test_text = text.join_works(train_texts), text.join_works(test_texts)
  tok = CharTokenizer.fit(text.join_works([train_text, test_text]))
  np.testing.assert_array_equal(data.train_tokens, tok.encode(train_text))
  np.testing.assert_array_equal(data.val_tokens, tok.encode(test_text))
  assert data.model_hints == {"vocab_size": tok.vocab_size}

  masked = load_dataset("hf", str(path), block_size=16, objective="masked_lm", mask_rate=0.2)
  assert masked.task == "masked_lm" and masked.mask_rate == 0.2


def test_text_column_with_labels_is_classified_as_reviews_are(tmp_path):
  # "zebra" only in the test split: the vocabulary is the training split's, so it is [UNK].
  train_texts, test_texts = fx.texts(40, 0), [*fx.texts(9, 1), "the zebra sat"]
  train_y, test_y = np.arange(40) % 3, np.arange(10) % 3
  path = _save(
    tmp_path / "text",
    {
      "train": {"sentence": train_texts, "label": train_y},
      "test": {"sentence": test_texts, "label": test_y},
    },
  )
  data = load_dataset("hf", str(path), text_column="sentence", tokenizer="word", max_length=6)
  tok = WordTokenizer.fit(train_texts, 8000)
  np.testing.assert_array_equal(
    data.train.arrays["tokens"], reviews.encode_reviews(tok, train_texts, 6)
  )
  np.testing.assert_array_equal(
    data.test.arrays["tokens"], reviews.encode_reviews(tok, test_texts, 6)
  )
  np.testing.assert_array_equal(data.test.arrays["label"], test_y)
  assert data.model_hints == {"num_classes": 3, "vocab_size": tok.vocab_size}
  lm = load_dataset("hf", str(path), text_column="sentence", task="lm", block_size=8)
  assert lm.task == "lm"


def test_hub_dataset_is_read_from_the_local_cache_offline(tmp_path, monkeypatch):
  """A Hub id resolves to its copy in the datasets cache, with no network: the copy here is what
  `load_dataset` leaves in the cache (built from local files, then placed as a Hub id's)."""
  pq = pytest.importorskip("pyarrow.parquet")
  pa = pytest.importorskip("pyarrow")
  monkeypatch.delenv("HF_DATASETS_OFFLINE")  # jaxdl goes offline by itself.
  monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
  texts_ = fx.texts(30, 0)
  pq.write_table(pa.table({"text": texts_, "label": [i % 2 for i in range(30)]}), tmp_path / "t.pq")
  built = tmp_path / "built"
  datasets.load_dataset(
    "parquet",
    data_files={"train": str(tmp_path / "t.pq"), "test": str(tmp_path / "t.pq")},
    cache_dir=str(built),
  )
  (config_dir,) = (built / "parquet").iterdir()
  cache = tmp_path / "cache"
  shutil.copytree(config_dir, cache / "someone___tiny" / "default")
  for arrow in (cache / "someone___tiny").rglob("parquet-*.arrow"):
    arrow.rename(arrow.with_name(arrow.name.replace("parquet-", "tiny-")))
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))

  data = load_dataset("hf", "", dataset="someone/tiny", max_length=8)
  assert data.source["kind"] == "hf_cache" and data.source["num_train"] == 30
  assert not datasets.config.HF_HUB_OFFLINE  # Offline mode is set only while loading.
  with pytest.raises(DataError, match="local cache.*offline.*never downloads"):
    load_dataset("hf", "", dataset="someone/absent")


def test_missing_extra_is_a_one_line_error(monkeypatch, image_dir):
  monkeypatch.setitem(sys.modules, "datasets", None)
  with pytest.raises(ConfigError) as error:
    load_dataset("hf", str(image_dir))
  assert str(error.value) == (
    "data.name=hf needs the package 'datasets', which is not installed; run: pip install "
    "'jaxdl[datasets]'"
  )


@pytest.mark.parametrize(
  "options, message",
  [
    ({"label_column": "digit"}, r"data.label_column='digit' is not a column.*\['image', 'label'\]"),
    ({"image_column": "img"}, r"data.image_column='img' is not a column.*\['image', 'label'\]"),
    ({"eval_split": "validation"}, r"'validation' is not a split.*\['test', 'train'\]"),
    ({"train_split": "all"}, r"'all' is not a split.*\['test', 'train'\]"),
    ({"task": "lm"}, "data.task=lm models text"),
  ],
)
def test_bad_columns_and_splits_are_named(image_dir, options, message):
  with pytest.raises(DataError, match=message):
    load_dataset("hf", str(image_dir), **options)


def test_bad_folders_are_named(tmp_path, image_dir):
  with pytest.raises(DataError, match="does not exist"):
    load_dataset("hf", str(tmp_path / "absent"))
  with pytest.raises(DataError, match="is not a saved Hugging Face dataset"):
    load_dataset("hf", str(tmp_path))
  with pytest.raises(DataError, match="exactly one of data.dir"):
    load_dataset("hf", str(image_dir), dataset="mnist")
  with pytest.raises(DataError, match="exactly one of data.dir"):
    load_dataset("hf", "")


def test_labels_must_be_class_ids(tmp_path, arrays):
  train_x, _, test_x, _ = arrays
  path = _save(
    tmp_path / "names",
    {
      "train": {"image": list(train_x[:4]), "label": ["a", "b", "a", "b"]},
      "test": {"image": list(test_x[:2]), "label": ["a", "b"]},
    },
  )
  with pytest.raises(DataError, match="not integer class ids"):
    load_dataset("hf", str(path))
  with pytest.raises(DataError, match=r"labels range over \[0, 3\], outside \[0, 2\)"):
    load_dataset("hf", str(_save_labels(tmp_path, train_x)), num_classes=2)


def _save_labels(tmp_path, images):
  return _save(
    tmp_path / "range",
    {
      "train": {"image": list(images[:4]), "label": [0, 1, 2, 3]},
      "test": {"image": list(images[4:6]), "label": [0, 1]},
    },
  )


# End to end: training runs on an hf dataset repeat and resume exactly.


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory, png_dir):
  with pytest.MonkeyPatch.context() as patch:
    _go_offline(patch)
    return fx.straight_again_and_resumed(
      tmp_path_factory,
      "image",
      "hf",
      8,
      f"data.dir={png_dir}",
      "data.image_column=img",
      "data.label_column=digit",
      "data.augment=crop_flip",
      "data.crop_padding=2",
    )


def test_image_runs_repeat_and_resume_exactly(image_runs):
  straight = image_runs["straight"]
  assert [r["step"] for r in straight if "train/loss" in r] == [4, 8, 12, 16]
  assert straight[-1]["eval/accuracy"] > 1 / fx.NUM_CLASSES  # It learns.
  assert image_runs["again"] == straight
  assert image_runs["resumed"] == straight


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf") / "text"
  _save(path, {"train": {"text": fx.texts(200, 0)}, "test": {"text": fx.texts(40, 1)}})
  with pytest.MonkeyPatch.context() as patch:
    _go_offline(patch)
    return fx.straight_again_and_resumed(
      tmp_path_factory, "text", "hf", 8, f"data.dir={path}", "data.tokenizer=char"
    )


# Slow (four GPT runs, 10-30 s on two busy cores); in the default suite the image runs cover
# training on records, and test_text_column_without_labels_is_language_modelling the text streams.
@pytest.mark.slow
def test_language_model_runs_repeat_and_resume_exactly(text_runs):
  straight = text_runs["straight"]
  assert [r["step"] for r in straight if "eval/loss" in r] == [8, 16]
  assert text_runs["again"] == straight
  assert text_runs["resumed"] == straight


def test_cache_auto_holds_images_in_memory_only_within_the_budget(image_dir, monkeypatch):
  assert load_dataset("hf", str(image_dir)).source["in_memory"]  # 8x8 images: a few KB.
  size = (fx.NUM_TRAIN + fx.NUM_TEST) * 8 * 8
  monkeypatch.setattr(record_images, "memory_budget", lambda: size - 1)
  assert not load_dataset("hf", str(image_dir)).source["in_memory"]
  monkeypatch.setattr(record_images, "memory_budget", lambda: size)
  assert load_dataset("hf", str(image_dir)).source["in_memory"]
  with pytest.raises(DataError, match="data.cache must be one of 'auto', 'memory', 'none'"):
    load_dataset("hf", str(image_dir), cache="ram")
