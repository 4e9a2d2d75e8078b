"""Tests for jaxdl.data.mnist and load_dataset: every source, in order, and their failures."""

import functools
import hashlib
import http.server
import logging
from pathlib import Path
import threading

import numpy as np
import pytest

from jaxdl.data import download, load_dataset, mnist
from jaxdl.data.idx import read_idx, write_idx
from jaxdl.errors import DataError
from tests.conftest import needs_data

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_shared_mnist = needs_data(
  SHARED_MNIST.is_dir(), f"full MNIST not available at {SHARED_MNIST}"
)

NAMES = list(mnist.FILES.values())


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
  """Every test gets an empty cache and no network, unless it says otherwise."""
  monkeypatch.setenv("JAXDL_DATA_DIR", str(tmp_path / "cache_root"))
  monkeypatch.setenv("JAXDL_OFFLINE", "1")


def _fake_mnist(num_train=12, num_test=5, seed=0):
  """Small random arrays in MNIST's layout, keyed by canonical file name."""
  rng = np.random.default_rng(seed)
  return {
    "train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
    "train-labels-idx1-ubyte": rng.integers(0, 10, num_train, dtype=np.uint8),
    "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
    "t10k-labels-idx1-ubyte": rng.integers(0, 10, num_test, dtype=np.uint8),
  }


def _write(directory, arrays, gz=(True, False, True, False)):
  directory.mkdir(parents=True, exist_ok=True)
  for (name, array), compressed in zip(arrays.items(), gz):
    write_idx(directory / (name + (".gz" if compressed else "")), array)


def _assert_matches(data, arrays):
  np.testing.assert_array_equal(data.train.image[..., 0], arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(data.train.label, arrays["train-labels-idx1-ubyte"])
  np.testing.assert_array_equal(data.test.image[..., 0], arrays["t10k-images-idx3-ubyte"])
  np.testing.assert_array_equal(data.test.label, arrays["t10k-labels-idx1-ubyte"])
  assert data.train.image.shape[1:] == (28, 28, 1) and data.train.image.dtype == np.uint8
  assert data.train.label.dtype == np.int32 and data.num_classes == 10


def test_data_dir_with_raw_and_gzip_files(tmp_path):
  arrays = _fake_mnist()
  _write(tmp_path / "mine", arrays)
  data = mnist.load_mnist(str(tmp_path / "mine"))
  _assert_matches(data, arrays)
  assert data.source == {
    "kind": "data_dir",
    "path": str((tmp_path / "mine").resolve()),
    "num_train": 12,
    "num_test": 5,
  }


def test_data_dir_missing_file_fails_without_fallback(tmp_path):
  arrays = _fake_mnist()
  _write(tmp_path / "mine", arrays)
  (tmp_path / "mine" / "t10k-labels-idx1-ubyte").unlink()
  _write(mnist.cache_dir(), arrays)  # A usable cache must not be used instead.
  with pytest.raises(DataError) as info:
    mnist.load_mnist(str(tmp_path / "mine"))
  message = str(info.value)
  assert str(tmp_path / "mine") in message and "t10k-labels-idx1-ubyte" in message
  assert "lacks t10k-labels-idx1-ubyte (" in message  # Only the missing one is named as missing.
  assert "data.dir" in message


def test_data_dir_that_does_not_exist(tmp_path):
  with pytest.raises(DataError, match=r"nothing-here' does not exist\. Fix data\.dir"):
    mnist.load_mnist(str(tmp_path / "nothing-here"))


def test_cache_from_env(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXDL_DATA_DIR", str(tmp_path / "elsewhere"))
  arrays = _fake_mnist(seed=1)
  _write(tmp_path / "elsewhere" / "mnist", arrays)
  data = load_dataset("mnist")
  _assert_matches(data, arrays)
  assert data.source["kind"] == "cache"
  assert data.source["path"] == str((tmp_path / "elsewhere" / "mnist").resolve())


def test_default_cache_is_under_home(tmp_path, monkeypatch):
  monkeypatch.delenv("JAXDL_DATA_DIR")
  monkeypatch.setenv("HOME", str(tmp_path))
  assert mnist.cache_dir() == tmp_path / ".cache" / "jaxdl" / "mnist"


def test_image_label_count_mismatch(tmp_path):
  arrays = _fake_mnist()
  arrays["t10k-labels-idx1-ubyte"] = arrays["t10k-labels-idx1-ubyte"][:4]
  _write(tmp_path / "mine", arrays)
  with pytest.raises(
    DataError,
    match=r"t10k-images-idx3-ubyte.gz' holds 5 images but .*"
    r"t10k-labels-idx1-ubyte' holds 4 labels",
  ):
    mnist.load_mnist(str(tmp_path / "mine"))


def test_label_out_of_range(tmp_path):
  arrays = _fake_mnist()
  arrays["train-labels-idx1-ubyte"][3] = 10
  _write(tmp_path / "mine", arrays)
  with pytest.raises(DataError, match=r"train labels range over \[\d, 10\], outside \[0, 10\)"):
    mnist.load_mnist(str(tmp_path / "mine"))


def test_swapped_files(tmp_path):
  arrays = _fake_mnist()
  arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"] = (
    arrays["train-labels-idx1-ubyte"],
    arrays["train-images-idx3-ubyte"],
  )
  _write(tmp_path / "mine", arrays)
  with pytest.raises(DataError, match="train-images-idx3-ubyte.gz' should hold uint8 images"):
    mnist.load_mnist(str(tmp_path / "mine"))


def test_unknown_dataset():
  with pytest.raises(
    DataError, match=r"Unknown dataset 'mnsit'. Did you mean mnist\? Known datasets: "
  ):
    load_dataset("mnsit")


@pytest.fixture
def mirrors(tmp_path, monkeypatch):
  """Two local HTTP mirrors, "bad" and "good", serving fake MNIST as .gz; digests patched in.

  Returns (bad_dir, good_dir, base_url, arrays): files put in bad_dir/good_dir are served at
  base_url + "bad/" and base_url + "good/".
  """
  arrays = _fake_mnist(seed=2)
  root = tmp_path / "www"
  for name, array in arrays.items():
    monkeypatch.setitem(mnist.SHA256, name, hashlib.sha256(_raw_bytes(tmp_path, array)).hexdigest())
  handler = functools.partial(_QuietHandler, directory=str(root))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  yield root / "bad", root / "good", f"http://127.0.0.1:{server.server_address[1]}/", arrays
  server.shutdown()
  server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  """Serves files; under /cut/ it promises 1000 bytes and hangs up after 10, like a dropped link."""

  def do_GET(self):
    if not self.path.startswith("/cut/"):
      super().do_GET()
      return
    self.send_response(200)
    self.send_header("Content-Length", "1000")
    self.end_headers()
    self.wfile.write(b"\x1f\x8b" + bytes(8))
    self.close_connection = True

  def log_message(self, *args):
    pass


def _raw_bytes(tmp_path, array):
  write_idx(tmp_path / "raw-for-digest", array)
  return (tmp_path / "raw-for-digest").read_bytes()


def test_download_fills_the_cache(mirrors):
  _, good, base, arrays = mirrors
  _write(good, arrays, gz=(True,) * 4)
  data = mnist.load_mnist(allow_download=True, mirrors=[base + "good/"])
  _assert_matches(data, arrays)
  assert data.source["kind"] == "download" and data.source["url"] == base + "good/"
  cache = mnist.cache_dir()
  assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in NAMES)
  # The next load finds everything in the cache and does not download.
  assert mnist.load_mnist(allow_download=True, mirrors=[base + "gone/"]).source["kind"] == "cache"


def test_bad_checksum_falls_back_to_next_mirror(mirrors, caplog):
  bad, good, base, arrays = mirrors
  _write(good, arrays, gz=(True,) * 4)
  _write(bad, _fake_mnist(seed=3), gz=(True,) * 4)  # Valid IDX, wrong content.
  with caplog.at_level(logging.WARNING):
    data = mnist.load_mnist(allow_download=True, mirrors=[base + "bad/", base + "good/"])
  _assert_matches(data, arrays)
  assert data.source["url"] == base + "good/"
  assert "checksum mismatch" in caplog.text and base + "bad/" in caplog.text
  # Only the four verified files remain: no temporary or partial files.
  assert sorted(p.name for p in mnist.cache_dir().iterdir()) == sorted(f"{n}.gz" for n in NAMES)


def test_download_fetches_only_missing_files(mirrors):
  _, good, base, arrays = mirrors
  _write(mnist.cache_dir(), {n: arrays[n] for n in NAMES[:3]}, gz=(True,) * 3)
  _write(good, {NAMES[3]: arrays[NAMES[3]]}, gz=(True,))  # Only the missing file is served.
  data = mnist.load_mnist(allow_download=True, mirrors=[base + "good/"])
  _assert_matches(data, arrays)
  assert data.source["kind"] == "download"


def test_failed_download_falls_back_to_subset(mirrors, caplog):
  bad, _, base, _ = mirrors
  _write(bad, _fake_mnist(seed=3), gz=(True,) * 4)
  with caplog.at_level(logging.WARNING):
    data = mnist.load_mnist(allow_download=True, mirrors=[base + "bad/", base + "missing/"])
  assert data.source["kind"] == "shipped_subset"
  assert "HTTP 404" in caplog.text and "downloading MNIST failed" in caplog.text
  assert list(mnist.cache_dir().iterdir()) == []


def test_download_verified_reports_every_mirror(mirrors, tmp_path):
  bad, _, base, arrays = mirrors
  _write(bad, arrays, gz=(True,) * 4)
  name = "train-labels-idx1-ubyte"
  dest = tmp_path / "out" / f"{name}.gz"
  with pytest.raises(DataError) as info:
    download.download_verified(
      [base + "bad/" + f"{name}.gz", base + "nope/" + f"{name}.gz"], dest, "0" * 64
    )
  message = str(info.value)
  assert "checksum mismatch" in message and "HTTP 404" in message and str(dest) in message
  assert list(dest.parent.iterdir()) == []


def test_interrupted_download_leaves_no_file(mirrors, tmp_path):
  _, good, base, arrays = mirrors
  name = "train-labels-idx1-ubyte"
  _write(good, {name: arrays[name]}, gz=(True,))
  dest = tmp_path / "out" / f"{name}.gz"
  with pytest.raises(DataError, match="connection closed after 10 of 1000 bytes"):
    download.download_verified([base + f"cut/{name}.gz"], dest, mnist.SHA256[name])
  assert list(dest.parent.iterdir()) == []
  # The next mirror in the list is used after a cut connection.
  url = download.download_verified(
    [base + f"cut/{name}.gz", base + f"good/{name}.gz"], dest, mnist.SHA256[name]
  )
  assert url == base + f"good/{name}.gz"
  assert [p.name for p in dest.parent.iterdir()] == [dest.name]
  np.testing.assert_array_equal(read_idx(dest), arrays[name])


def test_content_sha256_ignores_compression(tmp_path):
  array = np.arange(300, dtype=np.uint8)
  write_idx(tmp_path / "a", array)
  write_idx(tmp_path / "a.gz", array)
  expected = hashlib.sha256((tmp_path / "a").read_bytes()).hexdigest()
  assert download.content_sha256(tmp_path / "a") == expected
  assert download.content_sha256(tmp_path / "a.gz") == expected


@pytest.mark.parametrize("how", ["argument", "env"])
def test_offline_falls_back_to_shipped_subset(monkeypatch, caplog, how):
  if how == "argument":
    monkeypatch.setenv("JAXDL_OFFLINE", "0")
    kwargs = {"allow_download": False}
  else:
    kwargs = {}
  with caplog.at_level(logging.WARNING, logger="jaxdl.data.mnist"):
    data = load_dataset("mnist", **kwargs)
  assert data.source["kind"] == "shipped_subset"
  assert data.source["num_train"] == len(data.train) == 10_000
  assert data.source["num_test"] == len(data.test) == 2_000
  assert data.train.image.shape == (10_000, 28, 28, 1) and data.train.image.dtype == np.uint8
  assert np.bincount(data.train.label).min() > 800  # Every class well represented.
  assert "SUBSET OF MNIST" in caplog.text and "10000 of 60000" in caplog.text
  assert "Accuracy will be lower" in caplog.text and "data.dir" in caplog.text
  assert ("data.download=false" if how == "argument" else "JAXDL_OFFLINE=1") in caplog.text


def test_bad_offline_value(monkeypatch):
  monkeypatch.setenv("JAXDL_OFFLINE", "maybe")
  with pytest.raises(DataError, match="JAXDL_OFFLINE is set to 'maybe'"):
    mnist.load_mnist()


def test_shipped_subset_is_small():
  subset = Path(mnist.__file__).parent / mnist.SUBSET_PACKAGE_DIR
  sizes = [(subset / f"{name}.gz").stat().st_size for name in NAMES]
  assert sum(sizes) <= 3 * 2**20


@needs_shared_mnist
def test_full_shared_set():
  data = load_dataset("mnist", str(SHARED_MNIST))
  assert data.source["kind"] == "data_dir"
  assert (data.source["num_train"], data.source["num_test"]) == (60_000, 10_000)
  assert data.train.image.shape == (60_000, 28, 28, 1)
  assert np.bincount(data.train.label).tolist() == [
    5923,
    6742,
    5958,
    6131,
    5842,
    5421,
    5918,
    6265,
    5851,
    5949,
  ]
  assert np.bincount(data.test.label).tolist() == [
    980,
    1135,
    1032,
    1010,
    982,
    892,
    958,
    1028,
    974,
    1009,
  ]


@needs_shared_mnist
def test_shipped_subset_is_the_head_of_the_full_set():
  subset = mnist.load_mnist(allow_download=False)
  for split, name, count in (("train", "train", 10_000), ("test", "t10k", 2_000)):
    full_image = read_idx(SHARED_MNIST / f"{name}-images-idx3-ubyte.gz")
    full_label = read_idx(SHARED_MNIST / f"{name}-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(getattr(subset, split).image[..., 0], full_image[:count])
    np.testing.assert_array_equal(getattr(subset, split).label, full_label[:count])
