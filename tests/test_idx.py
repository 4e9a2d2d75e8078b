"""Tests for jaxdl.data.idx: round trips and every kind of damaged file."""

import gzip

import numpy as np
import pytest

from jaxdl.data.idx import read_idx, write_idx
from jaxdl.errors import DataError


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip(tmp_path, suffix, dtype):
  rng = np.random.default_rng(0)
  array = (rng.normal(size=(5, 3, 4)) * 100).astype(dtype)
  path = tmp_path / f"data-idx3{suffix}"
  write_idx(path, array)
  loaded = read_idx(path)
  assert loaded.dtype == np.dtype(dtype)
  assert loaded.dtype.isnative
  np.testing.assert_array_equal(loaded, array)
  assert loaded.flags.writeable


def test_multibyte_types_are_big_endian_on_disk(tmp_path):
  path = tmp_path / "labels-idx1"
  write_idx(path, np.array([1, 256], dtype=np.int32))
  assert path.read_bytes() == bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 1, 0])


def test_gzip_is_detected_by_content_not_name(tmp_path):
  array = np.arange(12, dtype=np.uint8).reshape(3, 4)
  gz_named_raw = tmp_path / "raw-but-named.gz"
  write_idx(tmp_path / "raw", array)
  gz_named_raw.write_bytes((tmp_path / "raw").read_bytes())
  raw_named_gz = tmp_path / "gzip-but-no-suffix"
  write_idx(tmp_path / "real.gz", array)
  raw_named_gz.write_bytes((tmp_path / "real.gz").read_bytes())
  np.testing.assert_array_equal(read_idx(gz_named_raw), array)
  np.testing.assert_array_equal(read_idx(raw_named_gz), array)


def test_gzip_output_is_reproducible(tmp_path):
  array = np.arange(100, dtype=np.uint8)
  write_idx(tmp_path / "a.gz", array)
  write_idx(tmp_path / "b.gz", array)
  assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def _raw_idx(tmp_path, array):
  write_idx(tmp_path / "tmp-raw", array)
  return (tmp_path / "tmp-raw").read_bytes()


def test_wrong_magic(tmp_path):
  path = tmp_path / "not-idx"
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
  with pytest.raises(DataError, match=r"not-idx.*not an IDX file.*0x89504e47"):
    read_idx(path)


def test_unknown_type_code(tmp_path):
  path = tmp_path / "bad-type"
  path.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
  with pytest.raises(DataError, match="bad-type.*not an IDX file"):
    read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_payload(tmp_path, suffix):
  content = _raw_idx(tmp_path, np.zeros((10, 28, 28), np.uint8))[:-100]
  path = tmp_path / f"train-images-idx3-ubyte{suffix}"
  path.write_bytes(gzip.compress(content) if suffix else content)
  with pytest.raises(DataError) as info:
    read_idx(path)
  message = str(info.value)
  assert str(path) in message
  assert "truncated" in message and "7840" in message and "7740" in message
  assert "download it again" in message


def test_truncated_header(tmp_path):
  path = tmp_path / "short-header"
  path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 10]))
  with pytest.raises(DataError, match="short-header.*truncated.*inside its header"):
    read_idx(path)


def test_tiny_file(tmp_path):
  path = tmp_path / "tiny"
  path.write_bytes(b"\x00\x00")
  with pytest.raises(DataError, match="tiny.*only 2 bytes"):
    read_idx(path)


def test_over_long_file(tmp_path):
  path = tmp_path / "labels-idx1"
  path.write_bytes(_raw_idx(tmp_path, np.arange(10, dtype=np.uint8)) + b"junk")
  with pytest.raises(DataError) as info:
    read_idx(path)
  message = str(info.value)
  assert str(path) in message
  assert "longer than its header says" in message
  assert "10 bytes" in message and "14 bytes" in message


def test_corrupt_gzip(tmp_path):
  compressed = bytearray(gzip.compress(_raw_idx(tmp_path, np.arange(1000, dtype=np.int32))))
  compressed[len(compressed) // 2] ^= 0xFF
  path = tmp_path / "data.gz"
  path.write_bytes(bytes(compressed))
  with pytest.raises(DataError, match=r"data\.gz.*cannot be decompressed"):
    read_idx(path)


def test_cut_off_gzip(tmp_path):
  compressed = gzip.compress(_raw_idx(tmp_path, np.arange(1000, dtype=np.int32)))
  path = tmp_path / "partial.gz"
  path.write_bytes(compressed[: len(compressed) // 2])
  with pytest.raises(DataError, match=r"partial\.gz.*cannot be decompressed"):
    read_idx(path)


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match="nowhere.*does not exist"):
    read_idx(tmp_path / "nowhere")


def test_write_rejects_unsupported_dtype(tmp_path):
  with pytest.raises(DataError, match="bad.*not int64"):
    write_idx(tmp_path / "bad", np.zeros(3, np.int64))
