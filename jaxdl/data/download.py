"""Downloading a data file from a list of mirrors into a cache, checksummed and atomically.

Mirrors serve the same data with different compression (or none), so a file is identified by the
SHA-256 of its *uncompressed* content: any mirror's bytes are accepted if they decode to the right
data. Where a dataset publishes only the MD5 of its archive (CIFAR, Fashion-MNIST), the MD5 of the
downloaded bytes is checked instead. A download goes to a temporary file next to its final name
and is renamed with `os.replace` only after the checksum matched, so an interrupted or corrupt
download never sits under the final name where the next run would trust it.

Also here: where the cache is (`cache_root`) and whether downloads are allowed
(`download_refusal`), the same for every dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
import gzip
import hashlib
import http.client
import logging
import os
from pathlib import Path
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib

from jaxdl.errors import DataError

logger = logging.getLogger(__name__)

# Seconds a connection attempt or a single read may stall before the mirror counts as failed.
# Short on purpose: an unreachable mirror (no network on a cluster node) should cost seconds.
DEFAULT_TIMEOUT_S = 10.0

_CHUNK_BYTES = 1 << 20

_OFFLINE_VALUES = {"1", "true", "yes", "on"}
_ONLINE_VALUES = {"", "0", "false", "no", "off"}


def cache_root() -> Path:
  """The folder that holds each dataset's cache: $JAXDL_DATA_DIR, else ~/.cache/jaxdl."""
  root = os.environ.get("JAXDL_DATA_DIR")
  return Path(root).expanduser() if root else Path.home() / ".cache" / "jaxdl"


def download_refusal(allow_download: bool | None) -> str | None:
  """Why downloading is not allowed, or None if it is.

  `allow_download` decides when it is not None; otherwise the environment variable JAXDL_OFFLINE
  does (1/true/yes/on forbid downloads).

  Raises:
    DataError: JAXDL_OFFLINE holds a value that is neither on nor off.
  """
  if allow_download is not None:
    return None if allow_download else "downloads are disabled (data.download=false)"
  value = os.environ.get("JAXDL_OFFLINE", "")
  if value.strip().lower() in _OFFLINE_VALUES:
    return f"downloads are disabled (JAXDL_OFFLINE={value})"
  if value.strip().lower() in _ONLINE_VALUES:
    return None
  raise DataError(
    f"JAXDL_OFFLINE is set to {value!r}; set it to 1 to forbid downloads or 0 (or unset it) "
    f"to allow them."
  )


def content_sha256(path: str | os.PathLike) -> str:
  """SHA-256 hex digest of a file's content, decompressed first if the file is gzip.

  Raises:
    OSError, EOFError, zlib.error: the file cannot be read or its gzip stream is corrupt.
  """
  digest = hashlib.sha256()
  with open(path, "rb") as raw:
    compressed = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
    with stream:
      while chunk := stream.read(_CHUNK_BYTES):
        digest.update(chunk)
  return digest.hexdigest()


def file_md5(path: str | os.PathLike) -> str:
  """MD5 hex digest of a file's bytes as stored (not decompressed)."""
  digest = hashlib.md5(usedforsecurity=False)
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK_BYTES):
      digest.update(chunk)
  return digest.hexdigest()


def download_verified(
  urls: Sequence[str],
  dest: str | os.PathLike,
  sha256: str | None = None,
  *,
  md5: str | None = None,
  timeout_s: float = DEFAULT_TIMEOUT_S,
) -> str:
  """Fetches the first of `urls` whose bytes pass the given checksums and stores it at `dest`.

  `sha256` is of the file's content after gzip decompression (see `content_sha256`), `md5` of the
  bytes as downloaded; at least one must be given, and every one given must match. The URLs are
  alternatives for the same file (mirrors), tried in order; a failed connection, HTTP error,
  timeout or checksum mismatch moves on to the next one. `dest`'s directory is created if needed.
  Returns the URL that was used.

  Raises:
    DataError: no URL produced the expected content (the message lists each URL and why), or the
      destination directory cannot be written.
  """
  dest = Path(dest)
  if sha256 is None and md5 is None:
    raise ValueError(
      "download_verified needs a sha256 or an md5 checksum; never trust a download unchecked."
    )
  if not urls:
    raise DataError(f"No URL to download {dest.name!r} from.")
  try:
    dest.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(
      f"Cannot create the download directory {str(dest.parent)!r}: {e}. Point the cache "
      f"somewhere writable (for example with the JAXDL_DATA_DIR environment variable)."
    ) from e

  failures = []
  for url in urls:
    logger.info("Downloading %s to %s", url, dest)
    try:
      _fetch_one(url, dest, sha256, md5, timeout_s)
      return url
    except _MirrorFailed as e:
      logger.warning("Download of %s failed: %s", url, e)
      failures.append(f"  {url}: {e}")
  raise DataError(
    f"Could not download {dest.name!r} from any mirror; check the network connection, or fetch "
    f"the file by hand and put it at {str(dest)!r}. What each mirror gave:\n" + "\n".join(failures)
  )


class _MirrorFailed(Exception):
  """One URL did not deliver the file; the next mirror may."""


def _fetch_one(url: str, dest: Path, sha256: str | None, md5: str | None, timeout_s: float) -> None:
  """Downloads `url` into a temporary file beside `dest`, checks it, renames it to `dest`."""
  try:
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
  except OSError as e:
    raise DataError(
      f"Cannot write into the download directory {str(dest.parent)!r}: {e}. Point the cache "
      f"somewhere writable (for example with the JAXDL_DATA_DIR environment variable)."
    ) from e
  try:
    with os.fdopen(fd, "wb") as tmp:
      try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
          shutil.copyfileobj(response, tmp, _CHUNK_BYTES)
          promised = response.headers.get("Content-Length")
      except (OSError, http.client.HTTPException, ValueError) as e:
        # URLError, HTTPError and socket timeouts are OSErrors; a cut chunked response raises
        # http.client.IncompleteRead; a malformed URL is a ValueError.
        raise _MirrorFailed(_describe(e)) from e
      # http.client does not raise when a connection closes early; it just stops reading.
      received = tmp.tell()
      if promised is not None and promised.isdigit() and received != int(promised):
        raise _MirrorFailed(f"the connection closed after {received} of {promised} bytes")
    if md5 is not None:
      actual = file_md5(tmp_name)
      if actual != md5:
        raise _MirrorFailed(f"checksum mismatch: expected MD5 {md5}, got {actual}")
    if sha256 is not None:
      try:
        actual = content_sha256(tmp_name)
      except (OSError, EOFError, zlib.error) as e:
        raise _MirrorFailed(f"the downloaded file is a damaged gzip stream ({e})") from e
      if actual != sha256:
        raise _MirrorFailed(f"checksum mismatch: expected SHA-256 {sha256}, got {actual}")
    # mkstemp creates the file readable by its owner only; a cache may be shared.
    os.chmod(tmp_name, 0o644)
    os.replace(tmp_name, dest)
  finally:
    # Whatever happened (including KeyboardInterrupt), no partial file survives. After a
    # successful os.replace the temporary name no longer exists.
    if os.path.exists(tmp_name):
      os.remove(tmp_name)


def _describe(error: BaseException) -> str:
  if isinstance(error, urllib.error.HTTPError):
    return f"HTTP {error.code} {error.reason}"
  if isinstance(error, urllib.error.URLError):
    return f"cannot connect ({error.reason})"
  if isinstance(error, TimeoutError):
    return "timed out"
  return f"{type(error).__name__}: {error}"
