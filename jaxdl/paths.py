"""Paths of a run's workdir, on the local disk or in a Cloud Storage bucket (gs://), as epath.Path.

Everything jaxdl writes into a workdir goes through `workdir_path`, so `--workdir gs://bucket/run`
works wherever gcsfs is installed (`pip install 'jaxdl[gcs]'`); Orbax reads and writes checkpoints
there itself. Local paths behave as they always have.

An object store is not a file system, in three ways that matter here:
- Renaming is a copy and a delete, not atomic; but an object appears whole once its upload ends,
  or not at all. `write_atomic` writes a local file beside its target and renames it, an object
  in place.
- Objects cannot be appended to. `Appender` rewrites the object whole, at most every so often.
- There is no O_EXCL; `create_exclusive` asks for a create-only write instead (GCS: the upload's
  precondition that no generation of the object exists).

Other schemes (s3://, ...) are refused: Orbax writes checkpoints only to local paths and gs://.
"""

import os
import re
import shutil
import time
from typing import IO

from etils import epath

from jaxdl.errors import UserError

REMOTE_SCHEMES = ("gs",)
# A URL whose "//" pathlib.Path collapsed ("gs://b/r" -> "gs:/b/r").
_COLLAPSED_URL = re.compile(r"^([a-z][a-z0-9+.-]*):/(?!/)")
_URL = re.compile(r"^([a-z][a-z0-9+.-]*)://")


def workdir_path(path: str | os.PathLike) -> epath.Path:
  """`path` (text, pathlib.Path or epath.Path) as an epath.Path; UserError for a scheme jaxdl
  cannot write to, or a gs:// path where gcsfs is not installed."""
  text = os.fspath(path)
  collapsed = _COLLAPSED_URL.match(text)
  if collapsed and collapsed.group(1) in REMOTE_SCHEMES + ("s3", "az", "hf"):
    scheme = collapsed.group(1)
    raise UserError(
      f"{text!r} looks like a {scheme}:// URL whose '//' became '/' (pathlib.Path does that); "
      f"pass it as a string: {scheme}://{text[len(scheme) + 2 :]}"
    )
  url = _URL.match(text)
  if url and url.group(1) not in REMOTE_SCHEMES:
    raise UserError(
      f"{text!r}: jaxdl keeps workdirs and checkpoints on local paths or gs:// only (Orbax "
      "writes to no other object store); give a local path or a gs://bucket/path."
    )
  if url:
    _require_storage(url.group(1), text)
  return epath.Path(text)


def _require_storage(scheme: str, text: str) -> None:
  import fsspec  # pylint: disable=g-import-not-at-top

  try:
    fsspec.get_filesystem_class(scheme)
  except ImportError:
    raise UserError(
      f"The path {text} needs the package 'gcsfs', which is not installed; run: pip install "
      "'jaxdl[gcs]'"
    ) from None


def is_local(path: epath.Path) -> bool:
  return not _URL.match(os.fspath(path))


def absolute(path: epath.Path) -> epath.Path:
  # epath's absolute() would make "gs://b/r" into "$PWD/gs:/b/r".
  return path.absolute() if is_local(path) else path


def write_atomic(path: epath.Path, text: str) -> None:
  """Writes `path` so that a reader (or a crash) sees the old text or the new, never a part."""
  if not is_local(path):
    path.write_text(text)  # An object appears whole when its upload ends.
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def append_text(path: epath.Path, text: str) -> None:
  if is_local(path):
    with path.open("a") as f:
      f.write(text)
  else:
    path.write_text((path.read_text() if path.exists() else "") + text)


def create_exclusive(path: epath.Path, text: str) -> None:
  """Creates `path` holding `text`; FileExistsError if it exists. One of several processes that
  try at once succeeds: locally by O_EXCL, on GCS by gcsfs's create-only upload."""
  if is_local(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
      os.write(fd, text.encode())
    finally:
      os.close(fd)
    return
  fs, object_path = _filesystem(path)
  fs.pipe_file(object_path, text.encode(), mode="create")


def mtime(path: epath.Path) -> float:
  """When `path` was last written, in seconds since the epoch (time.time()'s clock); objects
  carry the store's clock, to the second."""
  if is_local(path):
    return os.stat(path).st_mtime
  fs, object_path = _filesystem(path)
  fs.invalidate_cache(object_path)  # gcsfs answers from cached listings otherwise.
  modified = fs.info(object_path).get("mtime")
  if modified is None:
    raise FileNotFoundError(f"{path} has no modification time")
  return modified.timestamp() if hasattr(modified, "timestamp") else float(modified)


def _filesystem(path: epath.Path):
  import fsspec  # pylint: disable=g-import-not-at-top

  return fsspec.core.url_to_fs(os.fspath(path))


def copy_tree(source: str | os.PathLike, target: epath.Path) -> None:
  """Copies the local directory `source` into `target`, files and subdirectories."""
  for root, _, files in os.walk(source):
    directory = target / os.path.relpath(root, source) if root != source else target
    directory.mkdir(parents=True, exist_ok=True)
    for name in files:
      with open(os.path.join(root, name), "rb") as src, (directory / name).open("wb") as dst:
        shutil.copyfileobj(src, dst)


class Appender:
  """A text file appended to: locally a file opened for appending; on object storage the text
  held here and the object rewritten whole, by `flush` once `every_s` seconds have passed since
  the last upload, and by `sync` and `close` always."""

  def __init__(self, path: epath.Path, every_s: float):
    self._file: IO[str] | None = path.open("a") if is_local(path) else None
    self._path, self._every_s = path, every_s
    self._parts = [path.read_text()] if self._file is None and path.exists() else []
    self._uploaded_at, self._pending = time.monotonic(), False

  def write(self, text: str) -> None:
    if self._file is not None:
      self._file.write(text)
    else:
      self._parts.append(text)
      self._pending = True

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    elif self._pending and time.monotonic() - self._uploaded_at >= self._every_s:
      self.sync()

  def sync(self) -> None:
    """Everything written so far, in the file or the object."""
    if self._file is not None:
      self._file.flush()
    elif self._pending:
      self._parts = ["".join(self._parts)]
      self._path.write_text(self._parts[0])
      self._uploaded_at, self._pending = time.monotonic(), False

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    else:
      self.sync()
