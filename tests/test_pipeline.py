"""Tests for jaxdl.data.pipeline: determinism, epochs, sharding, resumption and evaluation."""

import itertools

import numpy as np
import pytest

from jaxdl.data import LoadedData, Split, eval_batches, train_batches
from jaxdl.data.pipeline import ArrayDataset, ArraySplit, steps_per_epoch
from jaxdl.errors import DataError


def _split(num_examples, height=4, width=3):
  """A split whose label is the example's index, so batches reveal which examples they hold."""
  rng = np.random.default_rng(num_examples)
  image = rng.integers(0, 256, size=(num_examples, height, width, 1), dtype=np.uint8)
  image[0] = 255  # Make sure the top of the range is exercised.
  return Split(image=image, label=np.arange(num_examples, dtype=np.int32))


def _take(dataset, count):
  return list(itertools.islice(iter(dataset), count))


def _labels(batches):
  return [batch["label"].tolist() for batch in batches]


def test_batch_contents_and_types():
  split = _split(20)
  batches = list(train_batches(split, batch_size=4, seed=0, num_epochs=1))
  assert len(batches) == 5
  for batch in batches:
    assert set(batch) == {"image", "label"}
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (4, 4, 3, 1)
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (4,)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    # Each row is the scaled image of the example its label names.
    np.testing.assert_array_equal(batch["image"] * 255, split.image[batch["label"]])
  assert max(batch["image"].max() for batch in batches) == 1.0


def test_same_seed_same_batches_other_seed_other_batches():
  split = _split(50)
  first = _take(train_batches(split, batch_size=8, seed=3), 12)
  again = _take(train_batches(split, batch_size=8, seed=3), 12)
  other = _take(train_batches(split, batch_size=8, seed=4), 12)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert _labels(first) != _labels(other)


def test_each_epoch_is_a_permutation_minus_the_remainder():
  split = _split(23)
  batches = list(train_batches(split, batch_size=5, seed=0, num_epochs=2))
  assert len(batches) == 2 * steps_per_epoch(23, 5) == 8
  epochs = [np.concatenate(_labels(batches[:4])), np.concatenate(_labels(batches[4:]))]
  for labels in epochs:
    assert len(labels) == 20 and len(set(labels.tolist())) == 20  # 3 dropped, no repeats.
  assert epochs[0].tolist() != epochs[1].tolist()  # Reshuffled.
  assert set(epochs[0].tolist()) != set(epochs[1].tolist())  # Different examples dropped.


def test_shards_are_disjoint_equal_and_cover_the_data():
  split = _split(24)
  seen = []
  for shard_index in range(3):
    labels = np.concatenate(
      _labels(
        train_batches(
          split, batch_size=4, seed=1, num_epochs=1, shard_index=shard_index, shard_count=3
        )
      )
    )
    assert len(labels) == 8 == 4 * steps_per_epoch(24, 4, shard_count=3)
    assert labels.tolist() != sorted(labels.tolist())  # Shuffled within the shard.
    seen.extend(labels.tolist())
  assert sorted(seen) == list(range(24))


def test_uneven_shards_are_trimmed_to_the_same_size():
  split = _split(26)  # One global batch of 3 x 8 per epoch; 2 examples left out.
  shards = [
    np.concatenate(
      _labels(
        train_batches(split, batch_size=8, seed=0, num_epochs=1, shard_index=i, shard_count=3)
      )
    )
    for i in range(3)
  ]
  assert [len(s) for s in shards] == [8, 8, 8]
  assert len(set(np.concatenate(shards).tolist())) == 24


@pytest.mark.parametrize("shard_count", [2, 4])
def test_shards_together_yield_the_single_process_batches(shard_count):
  """Process i of n takes rows [i * B/n, (i + 1) * B/n) of each global batch of B: a run sees the
  same data whatever the number of processes."""
  split = _split(50)
  whole = _labels(train_batches(split, batch_size=8, seed=3, num_epochs=3))
  shards = [
    _labels(
      train_batches(
        split,
        batch_size=8 // shard_count,
        seed=3,
        num_epochs=3,
        shard_index=i,
        shard_count=shard_count,
      )
    )
    for i in range(shard_count)
  ]
  assert len(whole) == 18 == steps_per_epoch(50, 8 // shard_count, shard_count) * 3
  for step, batch in enumerate(whole):
    np.testing.assert_array_equal(np.concatenate([s[step] for s in shards]), batch)


def test_get_state_set_state_resumes_exactly():
  split = _split(30)
  dataset = train_batches(split, batch_size=4, seed=7)
  reference = _take(dataset, 20)

  iterator = iter(dataset)
  for _ in range(9):
    next(iterator)
  state = iterator.get_state()

  resumed = iter(train_batches(split, batch_size=4, seed=7))
  resumed.set_state(state)
  for expected in reference[9:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["label"], expected["label"])
    np.testing.assert_array_equal(got["image"], expected["image"])


def test_finite_epochs_stop():
  assert len(list(train_batches(_split(10), batch_size=3, seed=0, num_epochs=3))) == 9


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"batch_size": 11}, r"batch_size 11 is larger than the 10 training examples"),
    (
      {"batch_size": 4, "shard_count": 3},
      r"batch_size 12 \(4 on each of 3 shards\) is larger than the 10 training examples",
    ),
    ({"batch_size": 0}, r"batch_size must be a positive integer"),
    ({"batch_size": 2, "seed": -1}, r"seed must be an integer in \[0, 2\*\*32 - 1\]"),
    ({"batch_size": 2, "shard_index": 2, "shard_count": 2}, r"shard_index must be in \[0, 2\)"),
    ({"batch_size": 2, "num_epochs": 0}, r"num_epochs must be a positive integer"),
  ],
)
def test_bad_arguments(kwargs, message):
  kwargs = {"seed": 0, **kwargs}
  with pytest.raises(DataError, match=message):
    train_batches(_split(10), **kwargs)


def test_eval_batches_cover_everything_once_with_padding():
  split = _split(10)
  batches = list(eval_batches(split, batch_size=4))
  assert len(batches) == 3
  for batch in batches:
    assert batch["image"].shape == (4, 4, 3, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["mask"].dtype == bool
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert [int(b["mask"].sum()) for b in batches] == [4, 4, 2]
  real = np.concatenate([b["label"][b["mask"]] for b in batches])
  assert real.tolist() == list(range(10))  # In order, each once.
  last = batches[-1]
  assert last["mask"].tolist() == [True, True, False, False]
  assert not last["image"][2:].any() and not last["label"][2:].any()
  np.testing.assert_array_equal(last["image"][:2] * 255, split.image[8:])


def test_eval_batches_can_be_repeated():
  split = _split(8)
  first = [b["label"].tolist() for b in eval_batches(split, batch_size=4)]
  second = [b["label"].tolist() for b in eval_batches(split, batch_size=4)]
  assert first == second == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_eval_batches_checks_batch_size_eagerly():
  with pytest.raises(DataError, match="batch_size must be a positive integer"):
    eval_batches(_split(4), batch_size=0)


def test_split_checks():
  image = np.zeros((3, 2, 2, 1), np.uint8)
  with pytest.raises(DataError, match="3 images but 2 labels"):
    Split(image=image, label=np.zeros(2, np.int32))
  with pytest.raises(DataError, match=r"uint8 array \[N, H, W, C\].*float32"):
    Split(image=image.astype(np.float32), label=np.zeros(3, np.int32))
  with pytest.raises(DataError, match=r"uint8 array \[N, H, W, C\].*\(3, 2, 2\)"):
    Split(image=image[..., 0], label=np.zeros(3, np.int32))
  split = Split(image=image, label=np.zeros(3, np.int64))
  assert split.label.dtype == np.int32 and len(split) == 3


def test_loaded_data_checks_label_range():
  good = _split(5)
  bad = Split(image=good.image, label=np.array([0, 1, 2, 3, 10], np.int32))
  with pytest.raises(DataError, match=r"test labels range over \[0, 10\], outside \[0, 10\)"):
    LoadedData(train=good, test=bad, num_classes=10, source={"kind": "test"})


# LoadedData and ArrayDataset as jaxdl.data.base.Dataset.


def test_loaded_data_implements_the_dataset_protocol():
  data = LoadedData(train=_split(20), test=_split(10), num_classes=20, source={"kind": "test"})
  assert (data.task, data.input_key, data.tokenizer) == ("classify", "image", None)
  assert data.model_hints == {"num_classes": 20}
  example = data.example_batch(6)
  assert set(example) == {"image", "label"}
  assert example["image"].shape == (6, 4, 3, 1) and example["image"].dtype == np.float32
  assert example["label"].shape == (6,) and example["label"].dtype == np.int32
  assert not example["image"].any() and not example["label"].any()
  assert data.steps_per_epoch(6) == steps_per_epoch(20, 6) == 3
  # The method is the module-level pipeline, batch for batch (resumed runs depend on it).
  method = _take(data.train_batches(batch_size=4, seed=2, shard_index=1, shard_count=2), 7)
  module = _take(train_batches(data.train, batch_size=4, seed=2, shard_index=1, shard_count=2), 7)
  assert _labels(method) == _labels(module)
  for a, b in zip(method, module):
    np.testing.assert_array_equal(a["image"], b["image"])
  evals = list(data.eval_batches(batch_size=4))
  assert [b["mask"].tolist() for b in evals][-1] == [True, True, False, False]
  assert np.concatenate([b["label"][b["mask"]] for b in evals]).tolist() == list(range(10))


def _array_dataset(num_train=12, num_test=5):
  def split(n, offset):
    rows = np.arange(offset, offset + n)
    return ArraySplit(
      {
        "tokens": np.stack([rows, rows * 10], axis=1).astype(np.int32),
        "label": (rows % 2).astype(np.int32),
      }
    )

  return ArrayDataset(
    train=split(num_train, 0),
    test=split(num_test, 100),
    task="classify",
    input_key="tokens",
    model_hints={"num_classes": 2},
    source={"kind": "test", "num_train": num_train},
  )


def test_array_dataset_batches():
  data = _array_dataset()
  batches = _take(data.train_batches(batch_size=4, seed=0), 6)  # Two epochs of 3 batches.
  for batch in batches:
    assert batch["tokens"].dtype == np.int32 and batch["tokens"].shape == (4, 2)
    # Rows stay whole: each row's columns and label belong to the same example.
    np.testing.assert_array_equal(batch["tokens"][:, 1], batch["tokens"][:, 0] * 10)
    np.testing.assert_array_equal(batch["label"], batch["tokens"][:, 0] % 2)
  for epoch in (batches[:3], batches[3:]):
    assert sorted(np.concatenate([b["tokens"][:, 0] for b in epoch]).tolist()) == list(range(12))
  assert data.steps_per_epoch(4) == 3
  evals = list(data.eval_batches(batch_size=2))
  assert [b["mask"].tolist() for b in evals] == [[True, True], [True, True], [True, False]]
  last = evals[-1]
  assert last["tokens"].dtype == np.int32 and last["tokens"].tolist() == [[104, 1040], [0, 0]]
  example = data.example_batch(3)
  assert example["tokens"].shape == (3, 2) and example["label"].shape == (3,)


def test_array_split_and_dataset_checks():
  with pytest.raises(DataError, match="same number of rows"):
    ArraySplit({"a": np.zeros((3, 2)), "b": np.zeros(4)})
  good = ArraySplit({"tokens": np.zeros((3, 4), np.int32)})
  other = ArraySplit({"tokens": np.zeros((3, 5), np.int32)})
  with pytest.raises(DataError, match="Train and test splits hold different arrays"):
    ArrayDataset(
      train=good, test=other, task="lm", input_key="tokens", model_hints={}, source={"kind": "test"}
    )
  with pytest.raises(DataError, match="input_key 'src' is not one of"):
    ArrayDataset(
      train=good, test=good, task="lm", input_key="src", model_hints={}, source={"kind": "test"}
    )
