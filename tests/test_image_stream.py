"""Tests for jaxdl.data.image_stream: crops, transforms, determinism, resumption, shards, errors."""

import itertools
import math

import numpy as np
from PIL import Image
import pytest

from jaxdl.data import augment, image_folder, image_stream
from jaxdl.data.pipeline import LoadedData
from jaxdl.errors import DataError

NUM_TRAIN = 12
CLASSES = ("ant", "bee", "cat")  # Train image i is in class i // 4.


def _save(path, pixels_HWC):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(pixels_HWC, np.uint8)).save(path)


def _colour(i):
  """Train image i is this solid colour: its red value 10 + 20 i identifies it in a batch."""
  return (10 + 20 * i, 100, 250 - 20 * i)


def _noise(height, width, seed):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
  """train/{ant,bee,cat}: 12 solid images 16x20 or 20x16, PNG and JPEG; val/: 5 noise PNGs."""
  root = tmp_path / "insects"
  for i in range(NUM_TRAIN):
    height, width = (20, 16) if i % 2 else (16, 20)
    suffix = ".jpg" if i % 3 == 0 else ".png"
    _save(
      root / "train" / CLASSES[i // 4] / f"{i:02d}{suffix}",
      np.broadcast_to(np.array(_colour(i), np.uint8), (height, width, 3)),
    )
  for i, name in enumerate(["ant", "ant", "bee", "cat", "cat"]):
    height, width = (20, 16) if i % 2 else (16, 20)
    _save(root / "val" / name / f"v{i}.png", _noise(height, width, seed=i))
  return root


def _stream(folder, **options):
  options = {
    "image_size": 8,
    "streaming": True,
    "augment": "inception",
    "num_workers": 2,
    **options,
  }
  return image_folder.load_image_folder(str(folder), **options)


def _take(dataset, count, state=None):
  """The first `count` batches of a fresh iterator (set to `state` first), and its final state."""
  iterator = iter(dataset)
  try:
    if state is not None:
      iterator.set_state(state)
    batches = list(itertools.islice(iterator, count))
    return batches, iterator.get_state()
  finally:
    iterator.close()


def _image_ids(image_BHWC):
  """Which train image each row of an un-normalised, un-augmented batch is (by its red value)."""
  red = image_BHWC[..., 0].mean(axis=(1, 2)) * 255
  ids = np.round((red - 10) / 20).astype(int)
  np.testing.assert_allclose(red, 10 + 20 * ids, atol=4)  # JPEGs are within a few levels.
  return ids.tolist()


def _torchvision_get_params(width, height, scale, ratio, rng):
  """torchvision.transforms.RandomResizedCrop.get_params, line by line, torch's draws -> numpy's:
  torch.empty(1).uniform_(a, b) -> rng.uniform(a, b); torch.randint(0, n) -> rng.integers(0, n).
  """
  area = height * width
  log_ratio = [math.log(ratio[0]), math.log(ratio[1])]
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      i = rng.integers(0, height - h + 1)
      j = rng.integers(0, width - w + 1)
      return i, j, h, w
  # Fallback to central crop
  in_ratio = float(width) / float(height)
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:  # whole image
    w = width
    h = height
  i = (height - h) // 2
  j = (width - w) // 2
  return i, j, h, w


# ---------------------------------------------------------------- Random-resized crop


@pytest.mark.parametrize("width, height", [(16, 20), (20, 16), (500, 375), (9, 7), (100, 2)])
def test_crop_params_match_torchvision(width, height):
  for seed in range(200):
    rng, reference_rng = np.random.default_rng(seed), np.random.default_rng(seed)
    params = image_stream.random_resized_crop_params(width, height, rng)
    expected = _torchvision_get_params(width, height, (0.08, 1.0), (3 / 4, 4 / 3), reference_rng)
    assert params == tuple(int(v) for v in expected)
    assert rng.random() == reference_rng.random()  # The same number of draws.


def test_crop_params_stay_within_the_bounds():
  # Square, so that rejecting crops that do not fit favours neither wide nor tall ones.
  width, height, draws = 1500, 1500, 3000
  rng = np.random.default_rng(0)
  params = np.array(
    [image_stream.random_resized_crop_params(width, height, rng) for _ in range(draws)]
  )
  top, left, crop_h, crop_w = params.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + crop_h <= height).all() and (left + crop_w <= width).all()
  area, ratio = crop_h * crop_w / (width * height), crop_w / crop_h
  # Rounding the sides to whole pixels moves these by well under 1% at this size.
  assert 0.08 * 0.99 <= area.min() < 0.1 and 0.9 < area.max() <= 1.0
  assert 0.75 * 0.99 <= ratio.min() < 0.77 and 1.3 < ratio.max() <= 4 / 3 * 1.01
  assert abs(np.log(ratio).mean()) < 0.02  # Log-uniform: symmetric about ratio 1.
  # Crops that fit are placed uniformly: their centres spread over the whole free range.
  free = width - crop_w
  relative = np.divide(left, free, out=np.full(draws, 0.5), where=free > 0)
  assert abs(relative.mean() - 0.5) < 0.03


@pytest.mark.parametrize(
  "width, height, scale, expected",
  [
    (20, 16, (2.0, 3.0), (0, 0, 16, 20)),  # Ratio 1.25 is within bounds: the whole image.
    (100, 20, (2.0, 3.0), (0, 36, 20, 27)),  # Too wide: 20 * 4/3 = 26.7 -> 27 columns, centred.
    (20, 100, (2.0, 3.0), (36, 0, 27, 20)),  # Too tall: 20 / (3/4) = 26.7 -> 27 rows, centred.
    (100, 1, (0.08, 1.0), (0, 49, 1, 1)),  # One row: every crop is at least 2 rows high.
  ],
)
def test_crop_falls_back_to_the_centre_after_ten_attempts(width, height, scale, expected):
  rng = np.random.default_rng(7)
  assert image_stream.random_resized_crop_params(width, height, rng, scale=scale) == expected
  # Ten attempts of two draws each, and nothing else.
  assert rng.random() == np.random.default_rng(7).random(21)[-1]


def test_inception_decode_crops_resizes_and_flips_like_pillow(tmp_path):
  path = tmp_path / "noise.png"
  _save(path, _noise(16, 20, seed=3))
  original = Image.open(path).convert("RGB")
  flips = set()
  for seed in range(8):
    reference_rng = np.random.default_rng(seed)
    top, left, crop_h, crop_w = _torchvision_get_params(
      20, 16, (0.08, 1.0), (3 / 4, 4 / 3), reference_rng
    )
    expected = np.asarray(
      original.resize(
        (8, 8), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h)
      )
    )
    flip = reference_rng.random() < 0.5
    flips.add(flip)
    got = image_stream.decode_train(path, 8, "inception", np.random.default_rng(seed))
    np.testing.assert_array_equal(got, expected[:, ::-1] if flip else expected)
  assert flips == {False, True}


def test_inception_decodes_large_jpegs_at_reduced_scale_in_the_right_place(tmp_path):
  # A smooth 256x192 gradient: a crop read at 1/2^k scale must land where the full decode's does.
  y, x = np.mgrid[0:192, 0:256]
  pixels = np.stack([x, y * 255 / 191, (x + y) / 2], axis=-1)
  path = tmp_path / "big.jpg"
  Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
  full = Image.open(path).convert("RGB")  # Decoded at full size: no draft.
  for seed in range(5):
    rng = np.random.default_rng(seed)
    top, left, crop_h, crop_w = image_stream.random_resized_crop_params(256, 192, rng)
    expected = np.asarray(
      full.resize((8, 8), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h)),
      float,
    )
    if rng.random() < 0.5:
      expected = expected[:, ::-1]
    got = image_stream.decode_train(path, 8, "inception", np.random.default_rng(seed))
    assert np.abs(got - expected).max() <= 8


def test_flip_and_none_resize_the_shorter_side_and_crop_the_centre(tmp_path):
  path = tmp_path / "tall.png"
  _save(path, _noise(20, 16, seed=5))
  # 16x20 (w x h) -> shorter side 8: 8x10, crop rows round(1.0) = 1 .. 9.
  expected = np.asarray(
    Image.open(path).resize((8, 10), Image.Resampling.BILINEAR).crop((0, 1, 8, 9))
  )
  np.testing.assert_array_equal(
    image_stream.decode_train(path, 8, "none", np.random.default_rng(0)), expected
  )
  for seed in range(4):
    flip = np.random.default_rng(seed).random() < 0.5
    np.testing.assert_array_equal(
      image_stream.decode_train(path, 8, "flip", np.random.default_rng(seed)),
      expected[:, ::-1] if flip else expected,
    )


# ---------------------------------------------------------------- Evaluation


def test_eval_resizes_to_s_over_0875_and_crops_the_centre(folder):
  data = _stream(folder, normalize=False)
  batches = list(data.eval_batches(batch_size=2))
  assert [b["mask"].tolist() for b in batches] == [[True, True], [True, True], [True, False]]
  assert [b["label"].tolist() for b in batches] == [[0, 0], [1, 2], [2, 0]]
  image = np.concatenate([b["image"] for b in batches])
  assert image.dtype == np.float32 and image.shape == (6, 8, 8, 3)
  np.testing.assert_array_equal(image[5], 0)  # Padding.
  for i in range(5):
    original = Image.open(folder / "val" / ["ant", "ant", "bee", "cat", "cat"][i] / f"v{i}.png")
    # S = 8: shorter side round(8 / 0.875) = 9. 20x16 -> 11x9, centre columns round(1.5) = 2..10;
    # 16x20 -> 9x11, centre rows 2..10.
    if i % 2:
      expected = original.resize((9, 11), Image.Resampling.BILINEAR).crop((0, 2, 8, 10))
    else:
      expected = original.resize((11, 9), Image.Resampling.BILINEAR).crop((2, 0, 10, 8))
    np.testing.assert_array_equal(np.round(image[i] * 255), np.asarray(expected))


def test_normalises_with_imagenet_statistics_by_default(folder):
  raw = next(_stream(folder, normalize=False).eval_batches(batch_size=5))["image"]
  normalised = next(_stream(folder).eval_batches(batch_size=5))["image"]
  np.testing.assert_allclose(
    normalised,
    (raw - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD),
    rtol=1e-5,
    atol=1e-5,
  )
  assert augment.IMAGENET_MEAN == (0.485, 0.456, 0.406)
  assert augment.IMAGENET_STD == (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- Training stream


def test_dataset_interface(folder):
  data = _stream(folder)
  assert isinstance(data, image_stream.StreamingImageFolder)
  assert (data.task, data.input_key, data.tokenizer) == ("classify", "image", None)
  assert data.model_hints == {"num_classes": 3} and data.augment == "inception"
  assert data.source == {
    "kind": "data_dir",
    "path": str(folder.resolve()),
    "num_train": 12,
    "num_test": 5,
    "eval_split": "val",
    "classes": list(CLASSES),
    "image_size": 8,
    "streaming": True,
  }
  assert data.steps_per_epoch(5) == 2 and data.steps_per_epoch(12) == 1
  example = data.example_batch(4)
  assert example["image"].shape == (4, 8, 8, 3) and example["image"].dtype == np.float32
  assert example["label"].shape == (4,) and example["label"].dtype == np.int32
  (batch,), _ = _take(data.train_batches(batch_size=4, seed=0), 1)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
    k: (v.shape, v.dtype) for k, v in example.items()
  }
  assert "ant/00.jpg" not in repr(data)  # The file list stays out of logs.


def test_epochs_are_permutations_with_correct_labels(folder):
  data = _stream(folder, augment="none", normalize=False)
  batches, _ = _take(data.train_batches(batch_size=5, seed=0), 6)  # 3 epochs of 2 batches.
  epochs = []
  for first, second in zip(batches[::2], batches[1::2]):
    ids = _image_ids(first["image"]) + _image_ids(second["image"])
    assert len(set(ids)) == 10  # 10 different images; the other 2 are left out this epoch.
    assert first["label"].tolist() + second["label"].tolist() == [i // 4 for i in ids]
    epochs.append(ids)
  assert epochs[0] != epochs[1] != epochs[2]  # Reshuffled every epoch.


def test_single_process_order_is_the_epoch_permutation_as_before(folder):
  data = _stream(folder, augment="none", normalize=False)
  batches, _ = _take(data.train_batches(batch_size=5, seed=0), 4)  # 2 epochs of 2 batches.
  ids = [_image_ids(b["image"]) for b in batches]
  # Recorded from the stream before shards became slices of global batches: unchanged.
  assert ids == [[9, 2, 7, 4, 5], [11, 0, 3, 6, 10], [0, 7, 1, 11, 3], [10, 4, 6, 9, 8]]
  for epoch in range(2):
    expected = np.random.default_rng([0, epoch]).permutation(NUM_TRAIN)[:10].tolist()
    assert ids[2 * epoch] + ids[2 * epoch + 1] == expected


@pytest.mark.parametrize("shard_count", [2, 3])
def test_shards_take_contiguous_slices_of_the_global_batches(folder, shard_count):
  data = _stream(folder, augment="none", normalize=False)
  per_epoch = NUM_TRAIN // (2 * shard_count)  # Global batches of 2 * shard_count images.
  shards = [
    _take(
      data.train_batches(batch_size=2, seed=0, shard_index=i, shard_count=shard_count),
      2 * per_epoch,
    )[0]
    for i in range(shard_count)
  ]
  for epoch in range(2):
    permutation = np.random.default_rng([0, epoch]).permutation(NUM_TRAIN)
    for g in range(per_epoch):
      for i, batches in enumerate(shards):
        start = (g * shard_count + i) * 2
        assert (
          _image_ids(batches[epoch * per_epoch + g]["image"])
          == permutation[start : start + 2].tolist()
        )
  # The shards of one epoch are disjoint and hold every file.
  first_epoch = [
    row for batches in shards for b in batches[:per_epoch] for row in _image_ids(b["image"])
  ]
  assert sorted(first_epoch) == list(range(NUM_TRAIN))


@pytest.fixture
def noise_folder(tmp_path):
  """train/{ant,bee}: 12 noise images 16x20 or 20x16, so that every crop and flip shows."""
  root = tmp_path / "noise"
  for i in range(NUM_TRAIN):
    height, width = (20, 16) if i % 2 else (16, 20)
    _save(root / "train" / CLASSES[i % 2] / f"{i:02d}.png", _noise(height, width, seed=100 + i))
  _save(root / "val" / "ant" / "v.png", _noise(8, 8, seed=0))
  return root


def test_single_process_augmentation_is_seeded_by_global_position_as_before(noise_folder):
  data = _stream(noise_folder, normalize=False)
  batches, _ = _take(data.train_batches(batch_size=5, seed=11), 3)  # 2 batches an epoch.
  files = data.train.files
  for n, batch in enumerate(batches):
    epoch, batch_in_epoch = divmod(n, 2)
    permutation = np.random.default_rng([11, epoch]).permutation(NUM_TRAIN)
    for j in range(5):
      position = batch_in_epoch * 5 + j
      rng = np.random.default_rng([11, epoch, position, 0])
      expected = image_stream.decode_train(files[permutation[position]], 8, "inception", rng)
      np.testing.assert_array_equal(
        batch["image"][j], expected.astype(np.float32) / np.float32(255)
      )
      assert batch["label"][j] == data.train.label[permutation[position]]
  # Recorded from the stream before shards became slices of global batches: unchanged.
  assert [b["label"].tolist() for b in batches] == [
    [0, 1, 1, 0, 1],
    [1, 0, 0, 1, 0],
    [0, 0, 1, 1, 1],
  ]
  np.testing.assert_allclose(
    [b["image"].astype(np.float64).sum() for b in batches],
    [476.98040502984077, 476.4980528578162, 502.10589542333037],
    rtol=1e-9,
  )


@pytest.mark.parametrize("shard_count", [2, 3])
def test_shards_concatenate_to_the_single_process_batches_augmentation_included(
  noise_folder, shard_count
):
  data = _stream(noise_folder)
  # 12 // (2 * shard_count) global batches an epoch: 4 steps cross into the second epoch.
  single, _ = _take(data.train_batches(batch_size=2 * shard_count, seed=5), 4)
  shards = [
    _take(data.train_batches(batch_size=2, seed=5, shard_index=i, shard_count=shard_count), 4)[0]
    for i in range(shard_count)
  ]
  for step, expected in enumerate(single):
    for key in ("image", "label"):
      got = np.concatenate([batches[step][key] for batches in shards])
      np.testing.assert_array_equal(got, expected[key])


def test_a_shard_resumes_exactly(noise_folder):
  data = _stream(noise_folder)
  stream = data.train_batches(batch_size=2, seed=3, shard_index=1, shard_count=2)
  uninterrupted, _ = _take(stream, 5)  # 3 global batches an epoch: crosses an epoch boundary.
  _, state = _take(stream, 2)
  resumed, _ = _take(stream, 3, state=state)
  for expected, got in zip(uninterrupted[2:], resumed):
    np.testing.assert_array_equal(got["image"], expected["image"])
    np.testing.assert_array_equal(got["label"], expected["label"])


def test_stream_is_deterministic_whatever_the_threads(folder):
  data = _stream(folder)
  one_thread, _ = _take(data.train_batches(batch_size=4, seed=3, num_threads=1), 4)
  three_threads, _ = _take(data.train_batches(batch_size=4, seed=3, num_threads=3, prefetch=2), 4)
  in_caller, _ = _take(data.train_batches(batch_size=4, seed=3, num_threads=0, prefetch=0), 4)
  other_seed, _ = _take(data.train_batches(batch_size=4, seed=4), 4)
  for a, b, c, d in zip(one_thread, three_threads, in_caller, other_seed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["image"], c["image"])
    np.testing.assert_array_equal(a["label"], c["label"])
    assert not np.array_equal(a["image"], d["image"])


def test_resumes_exactly_across_an_epoch_boundary(folder):
  data = _stream(folder)
  stream = data.train_batches(batch_size=5, seed=11)  # 2 batches an epoch.
  uninterrupted, _ = _take(stream, 6)
  _, state = _take(stream, 3)  # Stops in the second epoch.
  resumed, _ = _take(data.train_batches(batch_size=5, seed=11), 3, state=state)
  for expected, got in zip(uninterrupted[3:], resumed):
    np.testing.assert_array_equal(got["image"], expected["image"])
    np.testing.assert_array_equal(got["label"], expected["label"])


# ---------------------------------------------------------------- Choosing streaming; errors


def test_auto_streams_only_what_does_not_fit_in_memory(folder, monkeypatch):
  assert isinstance(_stream(folder, streaming="auto", augment="flip"), LoadedData)
  assert isinstance(_stream(folder, streaming="false", augment="flip"), LoadedData)  # From a CLI.
  assert isinstance(
    _stream(folder, streaming="true", augment="flip"), image_stream.StreamingImageFolder
  )
  monkeypatch.setattr(image_folder, "MAX_BYTES", 17 * 8 * 8 * 3 - 1)  # One byte short.
  data = _stream(folder, streaming="auto", augment="flip")
  assert isinstance(data, image_stream.StreamingImageFolder) and data.augment == "flip"
  # Defaults, as the registry passes them: auto picks streaming, the in-memory "flip" carries over.
  data = image_folder.load_image_folder(str(folder), **{**image_folder.OPTIONS, "image_size": 8})
  assert isinstance(data, image_stream.StreamingImageFolder)


@pytest.mark.parametrize(
  "options, message",
  [
    ({"streaming": False, "augment": "inception"}, r"set data\.streaming=true"),
    ({"augment": "crop_flip"}, r"streaming pipeline crops the original image"),
    ({"augment": "blur"}, r"data\.augment must be one of 'inception', 'flip', 'none'"),
    ({"streaming": "maybe"}, r"data\.streaming must be 'auto', true or false, got 'maybe'"),
    ({"normalize": "yes"}, r"data\.normalize must be true or false"),
  ],
)
def test_bad_options(folder, options, message):
  with pytest.raises(DataError, match=message):
    _stream(folder, **options)


def test_bad_layout_is_reported_as_for_the_in_memory_folder(folder):
  (folder / "train").rename(folder / "training")
  with pytest.raises(DataError, match="has no train/ sub-folder"):
    _stream(folder)


def test_batch_larger_than_the_data(folder):
  data = _stream(folder)
  with pytest.raises(
    DataError,
    match=r"batch_size 13 is larger than the 12 training images, so "
    r"not one full batch fits\. Use a batch size of at most "
    r"12\.",
  ):
    data.train_batches(batch_size=13, seed=0)
  # With shards it is the global batch that must fit.
  with pytest.raises(
    DataError,
    match=r"batch_size 14 \(7 on each of 2 shards\) is larger than "
    r"the 12 training images.*at most 6 per shard\.",
  ):
    data.train_batches(batch_size=7, seed=0, shard_count=2)
  data.train_batches(batch_size=6, seed=0, shard_index=1, shard_count=2)  # Exactly fits.
  with pytest.raises(DataError, match="batch_size must be a positive integer"):
    data.eval_batches(batch_size=0)


def test_undecodable_files_are_named_from_the_workers(folder):
  (folder / "train" / "bee" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  (folder / "val" / "cat" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")
  data = _stream(folder)  # Nothing is decoded yet.
  with pytest.raises(DataError, match=r"Cannot decode image .*bee/broken\.jpg'"):
    _take(data.train_batches(batch_size=13, seed=0), 1)  # One batch holds every file.
  with pytest.raises(DataError, match=r"Cannot decode image .*cat/truncated\.png'"):
    list(data.eval_batches(batch_size=4))
