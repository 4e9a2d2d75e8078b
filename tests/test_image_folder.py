"""Tests for jaxdl.data.image_folder: layout, decoding, resizing, labels and bad folders."""

import inspect
import shutil

import numpy as np
from PIL import Image
import pytest

from jaxdl.data import augment, image_folder
from jaxdl.errors import DataError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _save(path, pixels_HWC, mode=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(np.asarray(pixels_HWC, np.uint8))
  if mode:
    image = image.convert(mode)
  image.save(path)


def _solid(color, height=8, width=8):
  return np.broadcast_to(np.array(color, np.uint8), (height, width, 3))


def _stripes(height=8):
  """16 wide: 4 red columns, 8 green, 4 blue; a centre square crop of side 8 is all green."""
  return np.concatenate(
    [_solid(RED, height, 4), _solid(GREEN, height, 8), _solid(BLUE, height, 4)], axis=1
  )


@pytest.fixture
def folder(tmp_path):
  """train/{cat,dog} and val/{cat,dog}; PNG and JPEG, several sizes and colour modes."""
  root = tmp_path / "pets"
  _save(root / "train" / "dog" / "b.png", _solid(BLUE))
  _save(root / "train" / "dog" / "a.PNG", _stripes())  # Wide: centre crop.
  _save(root / "train" / "cat" / "1.jpg", _solid(RED, 12, 12))  # Downscaled, lossy.
  _save(root / "train" / "cat" / "2.png", _solid((128, 128, 128), 4, 4), mode="L")  # Upscaled.
  _save(root / "train" / "cat" / "3.jpeg", _solid(GREEN, 8, 10))
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  (root / "train" / ".hidden").mkdir()  # Hidden folders are not classes.
  _save(root / "val" / "dog" / "x.png", _solid(RED, 10, 8), mode="RGBA")
  _save(root / "test" / "cat" / "y.png", _solid(BLUE))  # Ignored: val is preferred.
  return root


def test_loads_sorted_classes_resized_and_centre_cropped(folder):
  data = image_folder.load_image_folder(str(folder), image_size=8, normalize=False, augment="none")
  assert data.source == {
    "kind": "data_dir",
    "path": str(folder.resolve()),
    "num_train": 5,
    "num_test": 1,
    "eval_split": "val",
    "classes": ["cat", "dog"],
    "image_size": 8,
  }
  assert data.num_classes == 2 and data.augment is None
  assert data.train.image.shape == (5, 8, 8, 3) and data.train.image.dtype == np.uint8
  # Sorted by class, then file name: cat/1.jpg, cat/2.png, cat/3.jpeg, dog/a.PNG, dog/b.png.
  assert data.train.label.tolist() == [0, 0, 0, 1, 1]
  image = data.train.image.astype(int)
  assert np.abs(image[0] - RED).max() <= 3  # JPEG is lossy.
  np.testing.assert_array_equal(image[1], _solid((128, 128, 128)))  # Gray "L" -> RGB.
  assert np.abs(image[2] - GREEN).max() <= 3
  np.testing.assert_array_equal(image[3], _solid(GREEN))  # The centre of the stripes.
  np.testing.assert_array_equal(image[4], _solid(BLUE))
  np.testing.assert_array_equal(data.test.image[0], _solid(RED))  # RGBA -> RGB.
  assert data.test.label.tolist() == [1]


def test_shorter_side_is_resized_before_the_crop(tmp_path):
  root = tmp_path / "d"
  # 8 high, 32 wide: 8 red, 16 green, 8 blue columns. Halved to 4x16 and cropped to the centre
  # 4 columns, it is all green; squashing it to 4x4 instead would keep red and blue.
  wide = np.concatenate([_solid(RED, 8, 8), _solid(GREEN, 8, 16), _solid(BLUE, 8, 8)], axis=1)
  tall = wide.transpose(1, 0, 2)
  _save(root / "train" / "a" / "wide.png", wide)
  _save(root / "train" / "a" / "xtall.png", tall)
  _save(root / "val" / "a" / "v.png", wide)
  data = image_folder.load_image_folder(str(root), image_size=4, normalize=False)
  np.testing.assert_array_equal(data.train.image, [_solid(GREEN, 4, 4)] * 2)


def test_test_split_is_used_without_val(folder):
  shutil.rmtree(folder / "val")
  data = image_folder.load_image_folder(str(folder), image_size=8)
  assert data.source["eval_split"] == "test" and data.test.label.tolist() == [0]


def test_normalisation_uses_the_training_images_statistics(folder):
  data = image_folder.load_image_folder(str(folder), image_size=8)
  pixels = data.train.image.reshape(-1, 3) / 255.0
  assert data.augment == augment.ImageAugment(
    flip=True, mean=data.augment.mean, std=data.augment.std
  )
  np.testing.assert_allclose(data.augment.mean, pixels.mean(axis=0), rtol=1e-9)
  np.testing.assert_allclose(data.augment.std, pixels.std(axis=0), rtol=1e-9)
  batch = next(iter(data.eval_batches(batch_size=2)))
  np.testing.assert_allclose(
    batch["image"][0],
    (data.test.image[0] / 255.0 - data.augment.mean) / data.augment.std,
    rtol=1e-5,
  )
  assert image_folder.OPTIONS == {
    "image_size": 224,
    "augment": "flip",
    "normalize": True,
    "crop_padding": 4,
    "padding_mode": "zero",
    "streaming": "auto",
  }


def test_options_are_the_loaders_keyword_defaults():
  params = inspect.signature(image_folder.load_image_folder).parameters
  assert {name: params[name].default for name in image_folder.OPTIONS} == image_folder.OPTIONS


def test_channel_stats_matches_numpy_in_chunks():
  image = np.random.default_rng(0).integers(0, 256, (10, 3, 5, 3), dtype=np.uint8)
  mean, std = image_folder.channel_stats(image, chunk=3)
  np.testing.assert_allclose(mean, (image / 255).mean(axis=(0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(std, (image / 255).std(axis=(0, 1, 2)), rtol=1e-9)
  _, constant_std = image_folder.channel_stats(np.full((2, 2, 2, 1), 7, np.uint8))
  assert constant_std.tolist() == [1e-3]


def test_unknown_eval_class(folder):
  _save(folder / "val" / "horse" / "h.png", _solid(RED))
  with pytest.raises(DataError, match=r"val' has class folders \['horse'\] that train/ lacks"):
    image_folder.load_image_folder(str(folder), image_size=8)


def test_unreadable_image_is_named(folder):
  (folder / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  with pytest.raises(DataError, match=r"Cannot decode image .*dog/broken\.jpg'"):
    image_folder.load_image_folder(str(folder), image_size=8)


def test_truncated_png_is_named(folder):
  path = folder / "train" / "dog" / "b.png"
  _save(path, np.random.default_rng(0).integers(0, 256, (64, 64, 3)))
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(DataError, match=r"Cannot decode image .*dog/b\.png'"):
    image_folder.load_image_folder(str(folder), image_size=8)


@pytest.mark.parametrize(
  "problem, message",
  [
    ("no data_dir", r"needs data\.dir"),
    ("missing root", r"nowhere' does not exist"),
    ("no train", "has no train/ sub-folder"),
    ("no eval split", "neither val/ nor test/"),
    ("empty class", r"bird' holds no images"),
  ],
)
def test_bad_layouts(folder, problem, message):
  data_dir = str(folder)
  if problem == "no data_dir":
    data_dir = ""
  elif problem == "missing root":
    data_dir = str(folder / "nowhere")
  elif problem == "no train":
    (folder / "train").rename(folder / "training")
  elif problem == "no eval split":
    shutil.rmtree(folder / "val")
    shutil.rmtree(folder / "test")
  else:
    (folder / "train" / "bird").mkdir()
  with pytest.raises(DataError, match=message):
    image_folder.load_image_folder(data_dir, image_size=8)


def test_too_large_for_memory_is_refused(folder, monkeypatch):
  monkeypatch.setattr(image_folder, "MAX_BYTES", 6 * 8 * 8 * 3 - 1)
  with pytest.raises(DataError, match=r"6 images at 8x8 need .* Set data.streaming=true"):
    image_folder.load_image_folder(str(folder), image_size=8, streaming=False)
  with pytest.raises(DataError, match=r"data.image_size must be an integer >= 1, got 0"):
    image_folder.load_image_folder(str(folder), image_size=0)


def test_training_batches_are_augmented_and_deterministic(folder):
  data = image_folder.load_image_folder(
    str(folder), image_size=8, augment="crop_flip", crop_padding=2, num_workers=1
  )
  first = next(iter(data.train_batches(batch_size=4, seed=0)))
  again = next(iter(data.train_batches(batch_size=4, seed=0)))
  assert first["image"].shape == (4, 8, 8, 3) and first["image"].dtype == np.float32
  np.testing.assert_array_equal(first["image"], again["image"])
