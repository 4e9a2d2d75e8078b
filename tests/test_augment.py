"""Tests for jaxdl.data.augment and its use in the pipelines: formulas, determinism, resumption."""

import itertools

import numpy as np
import pytest

from jaxdl.data import augment
from jaxdl.data.pipeline import LoadedData, Split, eval_batches, train_batches
from jaxdl.errors import DataError

CROP_FLIP = augment.ImageAugment(
  crop_padding=2, flip=True, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5)
)


def _images(num=6, height=5, width=7, channels=3, seed=0):
  return np.random.default_rng(seed).random((num, height, width, channels), dtype=np.float32)


def _split(num=24, height=6, width=6, seed=0):
  """A split whose label is the example's index, so batches reveal which examples they hold."""
  image = np.random.default_rng(seed).integers(0, 256, (num, height, width, 3), dtype=np.uint8)
  return Split(image=image, label=np.arange(num, dtype=np.int32))


def _take(dataset, count):
  return list(itertools.islice(iter(dataset), count))


@pytest.mark.parametrize("mode, np_mode", [("zero", "constant"), ("reflect", "reflect")])
def test_crop_is_a_slice_of_the_padded_image(mode, np_mode):
  image = _images(num=40)
  out = augment.random_crop(image, np.random.default_rng(3), padding=2, mode=mode)
  # The same generator draws row offsets, then column offsets, one per image.
  rng = np.random.default_rng(3)
  dy, dx = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
  padded = np.pad(image, ((0, 0), (2, 2), (2, 2), (0, 0)), mode=np_mode)
  assert out.shape == image.shape and out.dtype == image.dtype
  for b in range(40):
    np.testing.assert_array_equal(out[b], padded[b, dy[b] : dy[b] + 5, dx[b] : dx[b] + 7])
  assert set(dy.tolist()) == set(dx.tolist()) == set(range(5))  # Every offset in [0, 2p] occurs.


def test_zero_crop_keeps_content_and_adds_black_border():
  image = _images(num=200) + 0.5  # Strictly positive, so zeros can only be padding.
  out = augment.random_crop(image, np.random.default_rng(0), padding=1)
  # An offset of 1 (centre) returns the image itself; with padding 1, every crop's interior
  # comes from the image and only its outermost rows and columns can be border.
  assert any(np.array_equal(out[b], image[b]) for b in range(200))
  assert out[:, 1:-1, 1:-1].min() > 0
  assert (out == 0).any()


def test_flip_mirrors_half_the_images_chosen_by_the_generator():
  image = _images(num=200)
  out = augment.random_flip(image, np.random.default_rng(5))
  flipped = np.random.default_rng(5).random(200) < 0.5
  np.testing.assert_array_equal(out[flipped], image[flipped, :, ::-1])
  np.testing.assert_array_equal(out[~flipped], image[~flipped])
  assert 70 < flipped.sum() < 130
  assert not np.shares_memory(out, image)


def test_normalize_formula():
  image = _images()
  mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
  out = augment.normalize(image, mean, std)
  expected = (image.astype(np.float64) - np.array(mean)) / np.array(std)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(DataError, match="statistics for 3 channels but the images have 1"):
    augment.normalize(image[..., :1], mean, std)


def test_train_is_crop_then_flip_then_normalize_and_eval_only_normalizes():
  image = _images(num=10)
  batch = {"image": image, "label": np.arange(10)}
  out = CROP_FLIP.train(batch, np.random.default_rng(9))
  rng = np.random.default_rng(9)
  expected = augment.random_crop(image, rng, 2)
  expected = augment.random_flip(expected, rng)
  expected = augment.normalize(expected, CROP_FLIP.mean, CROP_FLIP.std)
  np.testing.assert_array_equal(out["image"], expected)
  assert out["label"] is batch["label"]
  evaluated = CROP_FLIP.eval(batch)
  np.testing.assert_array_equal(
    evaluated["image"], augment.normalize(image, CROP_FLIP.mean, CROP_FLIP.std)
  )
  assert augment.ImageAugment(flip=True).eval(batch) is batch  # Nothing to do.


@pytest.mark.parametrize(
  "name, crop, flip",
  [("none", 0, False), ("flip", 0, True), ("crop", 4, False), ("crop_flip", 4, True)],
)
def test_from_options(name, crop, flip):
  options = {
    "augment": name,
    "crop_padding": 4,
    "padding_mode": "reflect",
    "mean": augment.CIFAR10_MEAN,
    "std": augment.CIFAR10_STD,
  }
  normalized = augment.from_options(normalize=True, **options)
  assert normalized == augment.ImageAugment(
    crop_padding=crop,
    padding_mode="reflect",
    flip=flip,
    mean=augment.CIFAR10_MEAN,
    std=augment.CIFAR10_STD,
  )
  plain = augment.from_options(normalize=False, **options)
  assert plain is None if name == "none" else plain.mean is None and plain.flip == flip


@pytest.mark.parametrize(
  "options, message",
  [
    (
      {"augment": "crop-flip"},
      r"data.augment must be one of 'none', 'flip', 'crop', "
      r"'crop_flip', got 'crop-flip'",
    ),
    ({"padding_mode": "edge"}, r"data.padding_mode must be one of 'zero', 'reflect'"),
    ({"crop_padding": 0}, r"data.crop_padding must be an integer >= 1, got 0"),
    ({"normalize": "yes"}, r"data.normalize must be true or false, got 'yes'"),
  ],
)
def test_bad_options(options, message):
  options = {
    "augment": "crop_flip",
    "normalize": True,
    "crop_padding": 4,
    "padding_mode": "zero",
    "mean": (0.5,),
    "std": (0.5,),
    **options,
  }
  with pytest.raises(DataError, match=message):
    augment.from_options(**options)


def test_bad_statistics_and_reflect_padding():
  with pytest.raises(DataError, match="std must be positive"):
    augment.ImageAugment(mean=(0.5,), std=(0.0,))
  with pytest.raises(DataError, match="one mean and one std per channel"):
    augment.ImageAugment(mean=(0.5, 0.5), std=(0.2,))
  with pytest.raises(DataError, match="Reflect padding of 5 pixels"):
    augment.random_crop(_images(height=5), np.random.default_rng(0), 5, "reflect")


# In the pipeline.


def test_each_batch_is_augmented_with_the_generator_of_its_position():
  split = _split(24)
  batches = _take(
    train_batches(split, batch_size=5, seed=11, augment=CROP_FLIP, shard_index=1, shard_count=2), 6
  )
  plain = _take(train_batches(split, batch_size=5, seed=11, shard_index=1, shard_count=2), 6)
  for index, (batch, raw) in enumerate(zip(batches, plain)):
    epoch, position = divmod(index, 12 // 5)
    np.testing.assert_array_equal(batch["label"], raw["label"])  # Same examples, same order.
    rng = np.random.default_rng([11, epoch, position, 1])
    np.testing.assert_array_equal(batch["image"], CROP_FLIP.train(raw, rng)["image"])


def test_augmentation_is_deterministic_across_threads_and_differs_by_seed():
  split = _split(40)
  runs = [
    _take(train_batches(split, batch_size=8, seed=s, augment=CROP_FLIP, num_threads=t), 10)
    for s, t in ((1, 2), (1, 0), (2, 2))
  ]
  for a, b in zip(runs[0], runs[1]):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert not all(np.array_equal(a["image"], c["image"]) for a, c in zip(runs[0], runs[2]))


def test_same_example_is_augmented_differently_each_epoch():
  split = _split(8)
  batches = _take(train_batches(split, batch_size=8, seed=0, augment=CROP_FLIP), 4)
  by_label = [batch["image"][np.argsort(batch["label"])] for batch in batches]
  for a, b in itertools.combinations(by_label, 2):
    assert not np.array_equal(a, b)


def test_get_state_set_state_resumes_augmented_batches_exactly():
  split = _split(30)
  dataset = train_batches(split, batch_size=4, seed=7, augment=CROP_FLIP)
  reference = _take(dataset, 16)
  iterator = iter(dataset)
  for _ in range(9):
    next(iterator)
  state = iterator.get_state()
  resumed = iter(train_batches(split, batch_size=4, seed=7, augment=CROP_FLIP))
  resumed.set_state(state)
  for expected in reference[9:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["label"], expected["label"])
    np.testing.assert_array_equal(got["image"], expected["image"])


def test_eval_batches_are_normalised_never_augmented_and_padding_stays_zero():
  split = _split(10)
  batches = list(eval_batches(split, batch_size=4, augment=CROP_FLIP))
  images = np.concatenate([b["image"][b["mask"]] for b in batches])
  expected = augment.normalize(split.take(slice(None))["image"], CROP_FLIP.mean, CROP_FLIP.std)
  np.testing.assert_array_equal(images, expected)
  assert not batches[-1]["image"][2:].any()
  again = np.concatenate(
    [b["image"][b["mask"]] for b in eval_batches(split, batch_size=4, augment=CROP_FLIP)]
  )
  np.testing.assert_array_equal(images, again)


def test_loaded_data_uses_its_augment():
  data = LoadedData(
    train=_split(16),
    test=_split(6, seed=1),
    num_classes=16,
    source={"kind": "test"},
    augment=CROP_FLIP,
  )
  method = _take(data.train_batches(batch_size=4, seed=3), 5)
  module = _take(train_batches(data.train, batch_size=4, seed=3, augment=CROP_FLIP), 5)
  for a, b in zip(method, module):
    np.testing.assert_array_equal(a["image"], b["image"])
  evals = list(data.eval_batches(batch_size=4))
  np.testing.assert_array_equal(
    evals[0]["image"],
    augment.normalize(data.test.take(slice(0, 4))["image"], CROP_FLIP.mean, CROP_FLIP.std),
  )
  example = data.example_batch(3)
  assert example["image"].shape == (3, 6, 6, 3) and example["image"].dtype == np.float32
  plain = LoadedData(train=_split(16), test=_split(6), num_classes=16, source={"kind": "test"})
  assert plain.augment is None
  np.testing.assert_array_equal(
    next(iter(plain.eval_batches(batch_size=6)))["image"], plain.test.take(slice(None))["image"]
  )
