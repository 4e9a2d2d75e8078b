"""Reading and writing IDX files, the format MNIST (and Fashion-MNIST, EMNIST, ...) ships in.

An IDX file is a 4-byte magic number `0x00 0x00 <type> <ndim>`, then `ndim` big-endian uint32
dimensions, then the array itself in big-endian, C order. The public mirrors serve the files
gzip-compressed; people also unpack them by hand, sometimes keeping the `.gz` name. So whether a
file is gzip is decided by its magic bytes, never by its name alone.

Every check names the file and says what to do, because the usual cause of a bad IDX file is an
interrupted download or a hand-edited data directory, and the fix is to fetch the file again.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from jaxdl.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type byte -> element type; the format stores every multi-byte type big-endian.
_DTYPE_BY_CODE = {
  0x08: np.dtype(np.uint8),
  0x09: np.dtype(np.int8),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND = {(dtype.kind, dtype.itemsize): code for code, dtype in _DTYPE_BY_CODE.items()}

_REFETCH_HINT = "Delete it and download it again (or restore it from a good copy)."


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file, raw or gzip-compressed, into a native-endian, writable numpy array.

  Raises:
    DataError: the file is missing or unreadable, its gzip stream is corrupt, its magic number is
      not IDX, or its payload is shorter or longer than its dimensions say.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      content = f.read()
  except FileNotFoundError:
    raise DataError(f"IDX file {path!r} does not exist.") from None
  except OSError as e:
    raise DataError(f"Cannot read IDX file {path!r}: {e}.") from e
  return parse_idx(content, name=path)


def parse_idx(content: bytes, *, name: str) -> np.ndarray:
  """Decodes the bytes of an IDX file (raw or gzip); `name` is only used in error messages.

  Exposed so that files shipped inside the package can be read without a filesystem path.
  """
  compressed = content[:2] == GZIP_MAGIC
  if compressed:
    content = _gunzip(content, name)
  where = " after decompression" if compressed else ""

  if len(content) < 4:
    raise DataError(
      f"IDX file {name!r} is only {len(content)} bytes long{where} (a header needs at least 4). "
      f"{_REFETCH_HINT}"
    )
  zero0, zero1, type_code, ndim = content[:4]
  if zero0 != 0 or zero1 != 0 or type_code not in _DTYPE_BY_CODE:
    raise DataError(
      f"{name!r} is not an IDX file: its magic number is 0x{content[:4].hex()}{where}, but IDX "
      f"files start with 0x0000 followed by a type byte in "
      f"{{{', '.join(f'0x{c:02x}' for c in _DTYPE_BY_CODE)}}} and the number of dimensions. "
      f"Check that the path points at the right file; if it does, the file is damaged. "
      f"{_REFETCH_HINT}"
    )
  header_size = 4 + 4 * ndim
  if len(content) < header_size:
    raise DataError(
      f"IDX file {name!r} is truncated{where} inside its header: {ndim} dimensions need "
      f"{header_size} header bytes, the file has {len(content)}. {_REFETCH_HINT}"
    )
  dims = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))

  dtype = _DTYPE_BY_CODE[type_code]
  expected = math.prod(dims) * dtype.itemsize
  actual = len(content) - header_size
  if actual != expected:
    problem = "truncated" if actual < expected else "longer than its header says"
    raise DataError(
      f"IDX file {name!r} is {problem}: its header declares shape {dims} of {dtype.name}, "
      f"which is {expected} bytes of data, but {actual} bytes follow the {header_size}-byte "
      f"header{where}. {_REFETCH_HINT}"
    )

  array = np.frombuffer(content, dtype=dtype, offset=header_size).reshape(dims)
  # astype copies: the result is writable, owns its memory and uses the machine's byte order.
  return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes `array` as an IDX file, gzip-compressed when `path` ends in ".gz".

  The gzip header carries no file name and mtime 0, so the same array always gives the same
  bytes; the shipped MNIST subset relies on that to be reproducible.

  Raises:
    DataError: the array's dtype or shape cannot be stored in IDX.
  """
  path = os.fspath(path)
  array = np.asarray(array)
  code = _CODE_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
  if code is None:
    raise DataError(
      f"Cannot write {path!r}: IDX stores uint8, int8, int16, int32, float32 and float64, "
      f"not {array.dtype}. Convert the array with .astype(...) first."
    )
  if not 1 <= array.ndim <= 255 or any(d >= 2**32 for d in array.shape):
    raise DataError(
      f"Cannot write {path!r}: IDX needs 1 to 255 dimensions each below 2**32, "
      f"got shape {array.shape}."
    )

  header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
  payload = np.ascontiguousarray(array, dtype=_DTYPE_BY_CODE[code]).tobytes()
  with open(path, "wb") as f:
    if path.endswith(".gz"):
      with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9, mtime=0) as gz:
        gz.write(header)
        gz.write(payload)
    else:
      f.write(header)
      f.write(payload)


def _gunzip(content: bytes, name: str) -> bytes:
  try:
    return gzip.decompress(content)
  except (OSError, EOFError, zlib.error) as e:
    # BadGzipFile (an OSError) for a bad header or CRC, EOFError for a cut-off stream.
    raise DataError(
      f"IDX file {name!r} starts like a gzip file but cannot be decompressed ({e}); it is "
      f"probably a partial or damaged download. {_REFETCH_HINT}"
    ) from e
