"""Tests for jaxdl.data.fashion_mnist: the sources in order, and the real set when installed."""

import functools
import hashlib
import http.server
import inspect
from pathlib import Path
import threading

import numpy as np
import pytest

from jaxdl.data import augment, fashion_mnist
from jaxdl.data.idx import write_idx
from jaxdl.errors import DataError
from tests.conftest import needs_data

INSTALLED = Path("/usr/share/datasets/fashion-mnist")
needs_installed = needs_data(
  (INSTALLED / "train-images-idx3-ubyte.gz").is_file(),
  f"Fashion-MNIST is not installed at {INSTALLED} (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
  """An empty cache, no network and no system copy, unless a test says otherwise."""
  monkeypatch.setenv("JAXDL_DATA_DIR", str(tmp_path / "cache_root"))
  monkeypatch.setenv("JAXDL_OFFLINE", "1")
  monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no_system_copy")


def _fake(seed=0, num_train=12, num_test=5):
  rng = np.random.default_rng(seed)
  return {
    "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
    "train-labels-idx1-ubyte": rng.integers(0, 10, num_train, dtype=np.uint8),
    "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
    "t10k-labels-idx1-ubyte": rng.integers(0, 10, num_test, dtype=np.uint8),
  }


def _write(directory, arrays):
  directory.mkdir(parents=True, exist_ok=True)
  for name, array in arrays.items():
    write_idx(directory / f"{name}.gz", array)


def _assert_matches(data, arrays):
  np.testing.assert_array_equal(data.train.image[..., 0], arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(data.train.label, arrays["train-labels-idx1-ubyte"])
  np.testing.assert_array_equal(data.test.image[..., 0], arrays["t10k-images-idx3-ubyte"])
  np.testing.assert_array_equal(data.test.label, arrays["t10k-labels-idx1-ubyte"])
  assert data.num_classes == 10 and data.train.image.shape[1:] == (28, 28, 1)


def test_sources_in_order_data_dir_system_cache(tmp_path, monkeypatch):
  mine, system, cached = _fake(1), _fake(2), _fake(3)
  _write(tmp_path / "mine", mine)
  _write(tmp_path / "system", system)
  _write(fashion_mnist.cache_dir(), cached)
  assert fashion_mnist.cache_dir() == tmp_path / "cache_root" / "fashion_mnist"
  monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "system")

  data = fashion_mnist.load_fashion_mnist(str(tmp_path / "mine"))
  _assert_matches(data, mine)
  assert data.source == {
    "kind": "data_dir",
    "path": str((tmp_path / "mine").resolve()),
    "num_train": 12,
    "num_test": 5,
  }
  data = fashion_mnist.load_fashion_mnist()
  _assert_matches(data, system)
  assert data.source["kind"] == "system" and data.source["path"] == str(tmp_path / "system")
  (tmp_path / "system" / "t10k-labels-idx1-ubyte.gz").unlink()  # An incomplete system copy.
  data = fashion_mnist.load_fashion_mnist()
  _assert_matches(data, cached)
  assert data.source["kind"] == "cache"


def test_data_dir_missing_file(tmp_path):
  arrays = _fake()
  del arrays["train-labels-idx1-ubyte"]
  _write(tmp_path / "mine", arrays)
  with pytest.raises(
    DataError,
    match=r"Fashion-MNIST data directory .*mine' lacks "
    r"train-labels-idx1-ubyte \(.*Fix data\.dir",
  ):
    fashion_mnist.load_fashion_mnist(str(tmp_path / "mine"))


def test_swapped_files_name_the_dataset(tmp_path):
  arrays = _fake()
  arrays["t10k-images-idx3-ubyte"] = arrays["t10k-labels-idx1-ubyte"]
  _write(tmp_path / "mine", arrays)
  with pytest.raises(DataError, match="not an image file of Fashion-MNIST"):
    fashion_mnist.load_fashion_mnist(str(tmp_path / "mine"))


def test_nothing_found_offline_says_how_to_get_it():
  with pytest.raises(DataError) as info:
    fashion_mnist.load_fashion_mnist()
  message = str(info.value)
  assert "dataset-fashion-mnist" in message and "JAXDL_OFFLINE=1" in message
  assert str(fashion_mnist.cache_dir()) in message and "data.dir" in message


def test_options_build_the_augmentation(tmp_path):
  _write(tmp_path / "mine", _fake())
  assert fashion_mnist.load_fashion_mnist(str(tmp_path / "mine")).augment is None
  data = fashion_mnist.load_fashion_mnist(
    str(tmp_path / "mine"), augment="crop_flip", normalize=True, padding_mode="reflect"
  )
  assert data.augment == augment.ImageAugment(
    crop_padding=4, padding_mode="reflect", flip=True, mean=(0.2860,), std=(0.3530,)
  )


def test_options_are_the_loaders_keyword_defaults():
  params = inspect.signature(fashion_mnist.load_fashion_mnist).parameters
  assert {name: params[name].default for name in fashion_mnist.OPTIONS} == fashion_mnist.OPTIONS


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


def test_download_checks_md5_of_each_gz(tmp_path, monkeypatch):
  arrays = _fake(4)
  _write(tmp_path / "www", arrays)
  for name in arrays:
    digest = hashlib.md5((tmp_path / "www" / f"{name}.gz").read_bytes()).hexdigest()
    monkeypatch.setitem(fashion_mnist.MD5, name, digest)
  handler = functools.partial(_QuietHandler, directory=str(tmp_path / "www"))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
  base = f"http://127.0.0.1:{server.server_address[1]}/"
  try:
    data = fashion_mnist.load_fashion_mnist(allow_download=True, mirrors=[base])
    _assert_matches(data, arrays)
    assert data.source["kind"] == "download" and data.source["url"] == base
    monkeypatch.setitem(fashion_mnist.MD5, "train-images-idx3-ubyte", "0" * 32)
    (fashion_mnist.cache_dir() / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="(?s)Downloading Fashion-MNIST failed.*expected MD5 0000"):
      fashion_mnist.load_fashion_mnist(allow_download=True, mirrors=[base])
  finally:
    server.shutdown()
    server.server_close()


@needs_installed
def test_installed_full_set(monkeypatch):
  monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", INSTALLED)
  data = fashion_mnist.load_fashion_mnist()
  assert data.source["kind"] == "system"
  assert (data.source["num_train"], data.source["num_test"]) == (60_000, 10_000)
  assert data.train.image.shape == (60_000, 28, 28, 1) and data.test.image.shape[0] == 10_000
  assert np.bincount(data.train.label).tolist() == [6000] * 10
  assert np.bincount(data.test.label).tolist() == [1000] * 10
  # The published normalisation statistics are those of this training set.
  pixels = data.train.image[:, :, :, 0] / 255.0
  assert abs(pixels.mean() - augment.FASHION_MNIST_MEAN[0]) < 1e-4
  assert abs(pixels.std() - augment.FASHION_MNIST_STD[0]) < 1e-4
