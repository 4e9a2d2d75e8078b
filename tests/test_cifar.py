"""Tests for jaxdl.data.cifar: the binary record layout, every source, and damaged files."""

import functools
import hashlib
import http.server
import inspect
import io
import logging
import tarfile
import threading

import numpy as np
import pytest

from jaxdl import data as data_lib
from jaxdl.data import augment, cifar
from jaxdl.errors import DataError

NUM_PER_BATCH, NUM_TEST = 20, 10


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
  """Every test gets an empty cache and no network, unless it says otherwise."""
  monkeypatch.setenv("JAXDL_DATA_DIR", str(tmp_path / "cache_root"))
  monkeypatch.setenv("JAXDL_OFFLINE", "1")


def _fake_files(layout, seed=0):
  """{file name: (images uint8 [n, 32, 32, 3], labels uint8 [n, L])} in `layout`'s shape."""
  rng = np.random.default_rng(seed)
  files = {}
  for name in layout.files:
    count = (
      NUM_TEST
      if name in layout.test_files
      else NUM_PER_BATCH * (5 if layout is cifar.CIFAR100 else 1)
    )
    labels = np.stack([rng.integers(0, n, count) for n in layout.label_classes], axis=1)
    files[name] = (
      rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
      labels.astype(np.uint8),
    )
  return files


def _write_dir(directory, files):
  directory.mkdir(parents=True, exist_ok=True)
  for name, (image, labels) in files.items():
    cifar.write_records(directory / name, image, labels)


def _archive_bytes(layout, files, extra=()):
  """A .tar.gz holding `layout.folder/<name>` for every file, plus `extra` (name, bytes) members."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    members = [(f"{layout.folder}/readme.html", b"<html/>")]
    for name, (image, labels) in files.items():
      planes = image.transpose(0, 3, 1, 2).reshape(len(image), -1)
      members.append(
        (f"{layout.folder}/{name}", np.concatenate([labels, planes], axis=1).tobytes())
      )
    for member_name, content in [*members, *extra]:
      info = tarfile.TarInfo(member_name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return buffer.getvalue()


def _expected(layout, files, label_index=0):
  def split(names):
    return (
      np.concatenate([files[n][0] for n in names]),
      np.concatenate([files[n][1][:, label_index] for n in names]),
    )

  return split(layout.train_files), split(layout.test_files)


def _assert_matches(data, layout, files, label_index=0):
  (train_image, train_label), (test_image, test_label) = _expected(layout, files, label_index)
  np.testing.assert_array_equal(data.train.image, train_image)
  np.testing.assert_array_equal(data.train.label, train_label)
  np.testing.assert_array_equal(data.test.image, test_image)
  np.testing.assert_array_equal(data.test.label, test_label)
  assert data.train.image.dtype == np.uint8 and data.train.label.dtype == np.int32
  assert (data.source["num_train"], data.source["num_test"]) == (len(train_label), len(test_label))


def test_record_layout_is_label_then_red_green_blue_planes():
  # Pixel (row r, column c) of channel ch is byte label_bytes + ch * 1024 + r * 32 + c.
  content = bytearray(np.random.default_rng(0).integers(0, 256, 2 * 3073, dtype=np.uint8))
  content[0], content[3073] = 7, 2
  image, labels = cifar.parse_records(bytes(content), name="x", label_classes=(10,))
  assert image.shape == (2, 32, 32, 3) and labels.tolist() == [[7], [2]]
  for ch, r, c in [(0, 0, 0), (0, 5, 31), (1, 31, 0), (2, 17, 9), (2, 31, 31)]:
    assert image[0, r, c, ch] == content[1 + ch * 1024 + r * 32 + c]
    assert image[1, r, c, ch] == content[3073 + 1 + ch * 1024 + r * 32 + c]
  assert image.flags.c_contiguous


def test_write_records_round_trips(tmp_path):
  image, labels = _fake_files(cifar.CIFAR100)["test.bin"]
  cifar.write_records(tmp_path / "t.bin", image, labels)
  assert (tmp_path / "t.bin").stat().st_size == NUM_TEST * 3074
  got_image, got_labels = cifar.parse_records(
    (tmp_path / "t.bin").read_bytes(), name="t", label_classes=(20, 100)
  )
  np.testing.assert_array_equal(got_image, image)
  np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize(
  "where", ["bin_files", "extracted_folder", "archive_in_dir", "archive_path"]
)
def test_cifar10_from_data_dir(tmp_path, where):
  files = _fake_files(cifar.CIFAR10)
  root = tmp_path / "mine"
  if where == "bin_files":
    _write_dir(root, files)
  elif where == "extracted_folder":
    _write_dir(root / "cifar-10-batches-bin", files)
  else:
    root.mkdir()
    (root / "cifar-10-binary.tar.gz").write_bytes(_archive_bytes(cifar.CIFAR10, files))
  data_dir = root / "cifar-10-binary.tar.gz" if where == "archive_path" else root
  data = cifar.load_cifar10(str(data_dir))
  _assert_matches(data, cifar.CIFAR10, files)
  assert data.num_classes == 10 and data.model_hints == {"num_classes": 10}
  assert len(data.train) == 5 * NUM_PER_BATCH and len(data.test) == NUM_TEST
  assert data.source == {
    "kind": "data_dir",
    "path": str(data_dir.resolve()),
    "num_train": 100,
    "num_test": 10,
  }
  if where.startswith("archive"):
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-binary.tar.gz"]  # Not unpacked.


@pytest.mark.parametrize("label, label_index, num_classes", [("fine", 1, 100), ("coarse", 0, 20)])
def test_cifar100_fine_and_coarse_labels(tmp_path, label, label_index, num_classes):
  files = _fake_files(cifar.CIFAR100, seed=1)
  _write_dir(tmp_path / "mine" / "cifar-100-binary", files)
  data = cifar.load_cifar100(str(tmp_path / "mine"), label=label)
  _assert_matches(data, cifar.CIFAR100, files, label_index)
  assert data.num_classes == num_classes and len(data.train) == 100


def test_cifar100_from_archive(tmp_path):
  files = _fake_files(cifar.CIFAR100, seed=2)
  (tmp_path / "cifar-100-binary.tar.gz").write_bytes(_archive_bytes(cifar.CIFAR100, files))
  data = cifar.load_cifar100(str(tmp_path))
  _assert_matches(data, cifar.CIFAR100, files, label_index=1)


def test_default_options_are_the_standard_recipe(tmp_path):
  _write_dir(tmp_path / "mine", _fake_files(cifar.CIFAR10))
  data = cifar.load_cifar10(str(tmp_path / "mine"))
  assert data.augment == augment.ImageAugment(
    crop_padding=4,
    padding_mode="zero",
    flip=True,
    mean=augment.CIFAR10_MEAN,
    std=augment.CIFAR10_STD,
  )
  plain = cifar.load_cifar10(str(tmp_path / "mine"), augment="none", normalize=False)
  assert plain.augment is None
  batch = next(iter(data.train_batches(batch_size=8, seed=0)))
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["image"].min() < 0  # Normalised: no longer in [0, 1].
  assert cifar.CIFAR100_OPTIONS == {**cifar.CIFAR10_OPTIONS, "label": "fine"}


@pytest.mark.parametrize(
  "loader, options",
  [(cifar.load_cifar10, cifar.CIFAR10_OPTIONS), (cifar.load_cifar100, cifar.CIFAR100_OPTIONS)],
)
def test_options_are_the_loaders_keyword_defaults(loader, options):
  params = inspect.signature(loader).parameters
  assert {name: params[name].default for name in options} == options


def test_load_dataset_passes_options(tmp_path, monkeypatch):
  monkeypatch.setitem(
    data_lib.DATASETS, "cifar100", data_lib.DatasetSpec(cifar.load_cifar100, cifar.CIFAR100_OPTIONS)
  )
  _write_dir(tmp_path / "mine", _fake_files(cifar.CIFAR100))
  data = data_lib.load_dataset("cifar100", str(tmp_path / "mine"), label="coarse", augment="flip")
  assert data.num_classes == 20 and data.augment.flip and not data.augment.crop_padding
  with pytest.raises(DataError, match=r"data.label must be one of 'fine', 'coarse'"):
    data_lib.load_dataset("cifar100", str(tmp_path / "mine"), label="both")


def test_cache_is_used_and_lives_under_data_dir_env(tmp_path):
  files = _fake_files(cifar.CIFAR10, seed=3)
  assert cifar.cache_dir(cifar.CIFAR10) == tmp_path / "cache_root" / "cifar10"
  assert cifar.cache_dir(cifar.CIFAR100) == tmp_path / "cache_root" / "cifar100"
  _write_dir(cifar.cache_dir() / "cifar-10-batches-bin", files)
  data = cifar.load_cifar10()
  _assert_matches(data, cifar.CIFAR10, files)
  assert data.source["kind"] == "cache"
  assert data.source["path"] == str(cifar.cache_dir().resolve())


def test_no_data_and_no_downloads_says_where_to_put_files(tmp_path):
  with pytest.raises(DataError) as info:
    cifar.load_cifar10()
  message = str(info.value)
  assert "CIFAR-10 not found" in message and str(cifar.cache_dir()) in message
  assert "cifar-10-binary.tar.gz" in message and "JAXDL_OFFLINE=1" in message
  assert "data.dir" in message and "https://www.cs.toronto.edu/~kriz/" in message
  with pytest.raises(DataError, match="data.download=false"):
    cifar.load_cifar100(allow_download=False)


def test_data_dir_problems(tmp_path):
  with pytest.raises(DataError, match=r"nothing' does not exist\. Fix data\.dir"):
    cifar.load_cifar10(str(tmp_path / "nothing"))
  files = _fake_files(cifar.CIFAR10)
  del files["data_batch_4.bin"]
  _write_dir(tmp_path / "part" / "cifar-10-batches-bin", files)
  _write_dir(cifar.cache_dir(), _fake_files(cifar.CIFAR10))  # Must not be used instead.
  with pytest.raises(DataError, match=r"only some \.bin files: it lacks data_batch_4\.bin"):
    cifar.load_cifar10(str(tmp_path / "part"))
  (tmp_path / "py" / "cifar-10-batches-py").mkdir(parents=True)
  with pytest.raises(DataError, match=r"Python \(pickle\) version .* unpickling"):
    cifar.load_cifar10(str(tmp_path / "py"))


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda b: b[:-100], r"is 307200 bytes long: 99 whole records and 2973 bytes more"),
    (lambda b: b + b"\0" * 5, r"is 307305 bytes long: 100 whole records and 5 bytes more"),
    (lambda b: b"", r"is empty"),
  ],
)
def test_truncated_or_overlong_file(tmp_path, change, message):
  _write_dir(tmp_path, _fake_files(cifar.CIFAR10))
  path = tmp_path / "data_batch_3.bin"
  # Make this one file 100 records, so the sizes in the message are easy to check.
  image, labels = _fake_files(cifar.CIFAR10, seed=4)["data_batch_1.bin"]
  cifar.write_records(path, np.concatenate([image] * 5), np.concatenate([labels] * 5))
  path.write_bytes(change(path.read_bytes()))
  with pytest.raises(DataError) as info:
    cifar.load_cifar10(str(tmp_path))
  assert "data_batch_3.bin" in str(info.value) and "3073-byte records" in str(info.value)
  assert info.match(message)


def test_label_out_of_range(tmp_path):
  files = _fake_files(cifar.CIFAR100)
  files["test.bin"][1][4, 1] = 100  # Fine label of record 4.
  _write_dir(tmp_path, files)
  with pytest.raises(
    DataError,
    match=r"test\.bin' has label 100 in record 4 \(label byte 1\), "
    r"outside \[0, 100\)",
  ):
    cifar.load_cifar100(str(tmp_path))
  # A CIFAR-100 file read as CIFAR-10: its record size is wrong for the 1-byte layout.
  with pytest.raises(DataError, match="3073-byte records"):
    cifar.parse_records((tmp_path / "test.bin").read_bytes(), name="t", label_classes=(10,))


def test_short_official_file_is_announced(tmp_path, caplog):
  _write_dir(tmp_path, _fake_files(cifar.CIFAR10))
  with caplog.at_level(logging.WARNING, logger="jaxdl.data.cifar"):
    cifar.load_cifar10(str(tmp_path))
  assert "test_batch.bin holds 10 records; the official file has 10000" in caplog.text


def test_damaged_or_foreign_archive(tmp_path):
  archive = tmp_path / "cifar-10-binary.tar.gz"
  files = _fake_files(cifar.CIFAR10)
  content = _archive_bytes(cifar.CIFAR10, files)
  archive.write_bytes(content[: len(content) // 2])
  with pytest.raises(DataError, match="Cannot read the archive .* damaged"):
    cifar.load_cifar10(str(archive))
  del files["test_batch.bin"]
  archive.write_bytes(_archive_bytes(cifar.CIFAR10, files))
  with pytest.raises(
    DataError,
    match=r"lacks test_batch\.bin \(expected under "
    r"cifar-10-batches-bin/\)",
  ):
    cifar.load_cifar10(str(archive))


def test_archive_with_a_link_is_refused(tmp_path):
  files = _fake_files(cifar.CIFAR10)
  del files["test_batch.bin"]
  buffer = io.BytesIO(_archive_bytes(cifar.CIFAR10, files))
  # Re-open to append a symlink member named like a data file (tarfile cannot append to .gz).
  raw = io.BytesIO()
  with (
    tarfile.open(fileobj=buffer, mode="r:gz") as src,
    tarfile.open(fileobj=raw, mode="w:gz") as dst,
  ):
    for member in src:
      dst.addfile(member, src.extractfile(member))
    link = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    dst.addfile(link)
  (tmp_path / "cifar-10-binary.tar.gz").write_bytes(raw.getvalue())
  with pytest.raises(DataError, match="as a link or special file"):
    cifar.load_cifar10(str(tmp_path))


# Downloads from a local HTTP server.


@pytest.fixture
def server(tmp_path):
  """Serves tmp_path/www at the returned base URL."""
  root = tmp_path / "www"
  root.mkdir()
  handler = functools.partial(_QuietHandler, directory=str(root))
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
  httpd.shutdown()
  httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


def test_download_checks_md5_unpacks_into_cache_and_is_reused(server, monkeypatch):
  root, base = server
  files = _fake_files(cifar.CIFAR10, seed=5)
  # A hostile extra member must not land anywhere: only the known .bin names are written.
  content = _archive_bytes(cifar.CIFAR10, files, extra=[("../../escaped.bin", b"x" * 3073)])
  (root / "good").mkdir()
  (root / "good" / "cifar-10-binary.tar.gz").write_bytes(content)
  (root / "bad").mkdir()
  (root / "bad" / "cifar-10-binary.tar.gz").write_bytes(content + b"tampered")
  monkeypatch.setitem(cifar.MD5, "cifar-10-binary.tar.gz", hashlib.md5(content).hexdigest())

  data = cifar.load_cifar10(allow_download=True, mirrors=[base + "bad/", base + "good/"])
  _assert_matches(data, cifar.CIFAR10, files)
  assert data.source["kind"] == "download"
  assert data.source["url"] == base + "good/cifar-10-binary.tar.gz"
  cache = cifar.cache_dir()
  assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-bin"]  # Archive removed.
  assert sorted(p.name for p in (cache / "cifar-10-batches-bin").iterdir()) == sorted(
    cifar.CIFAR10.files
  )
  assert not list(cache.parent.parent.rglob("escaped.bin"))
  again = cifar.load_cifar10(allow_download=True, mirrors=[base + "gone/"])
  assert again.source["kind"] == "cache"
  _assert_matches(again, cifar.CIFAR10, files)


def test_failed_download_is_an_error_naming_each_mirror(server, monkeypatch):
  root, base = server
  (root / "cifar-100-binary.tar.gz").write_bytes(b"not the archive")
  with pytest.raises(DataError) as info:
    cifar.load_cifar100(allow_download=True, mirrors=[base, base + "missing/"])
  message = str(info.value)
  assert "Downloading CIFAR-100 failed" in message and "checksum mismatch: expected MD5" in message
  assert "HTTP 404" in message and "cifar-100-binary.tar.gz" in message
  assert not list(cifar.cache_dir(cifar.CIFAR100).iterdir())  # No partial file left behind.
