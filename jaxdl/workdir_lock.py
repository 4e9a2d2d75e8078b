"""The lock that keeps two `jaxdl train` runs out of one workdir.

Two runs writing one workdir race each other's checkpoints and interleave their metrics, so a run
holds WORKDIR/lock.json from its first check of the workdir to its end, and a second run is refused
with one line naming the process and host that hold it.

- Taking it: the file is created with O_CREAT|O_EXCL (only one creator succeeds), holding who took
  it (host, pid, the process's start time, the machine's boot id and pid namespace, when it
  started, its command line) and a token of its own. Its modification time is the heartbeat: a
  daemon thread touches it every REFRESH_SECONDS while the run lives. The run removes it when it
  ends: normally, by an exception, or stopped by a signal (SIGTERM/SIGINT save and return).
- Stale: a run killed outright (SIGKILL, a crash of the machine) leaves the file behind. On the
  machine that took it (same host name, boot and pid namespace) it is stale once its process is
  gone, or its pid now names another process (a different start time); a live process keeps it
  however old its heartbeat, since a stopped (Ctrl-Z) run would otherwise lose its workdir on
  resuming. Elsewhere its process cannot be asked, so it is stale once its heartbeat is older
  than STALE_AFTER_SECONDS. A stale lock is taken over with a warning.
- Taking over safely: a run that judged the lock stale first creates lock.json.takeover
  (O_EXCL: one run at a time), reads the lock again, removes it only if it still holds what was
  judged stale (a run that judged it late would otherwise remove the fresh lock of the run that
  took it over), and removes the takeover file. Then the usual O_EXCL create, which only one run
  wins; the others find a live lock and are refused.
- Multi-host: process 0 takes the lock for the whole run; every process learns its outcome through
  one collective, so that all of them stop together with the same message (none waits for the
  others at a later collective), and they share the workdir as before.
- `jaxdl eval`, `export` and `generate` only read a workdir, and a run saves its checkpoints
  atomically: they take no lock and may read a workdir a run is training in.
- On gs:// (jaxdl.paths) the lock is best effort. It is created by an upload that GCS refuses if
  the object exists (as atomic as O_EXCL), its heartbeat rewrites it and its age is the object's
  update time, to the second. But a heartbeat written just after another run took the lock over
  would overwrite that run's lock (there is no conditional touch), so two runs one stale lock
  apart may both go on; keep one run per workdir by the way jobs are launched as well.
"""

import contextlib
import datetime
import json
import logging
import os
from pathlib import Path
import socket
import sys
import threading
import time
from typing import Any, Iterator
import uuid

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from jaxdl import paths
from jaxdl.errors import CheckpointError

logger = logging.getLogger("jaxdl")

LOCK_FILE = "lock.json"
REFRESH_SECONDS = 10.0  # How often a run touches its lock file.
# A lock of another machine whose heartbeat is this old is stale: its run is gone.
STALE_AFTER_SECONDS = 10 * REFRESH_SECONDS
_WAIT_SECONDS = 5.0  # How long to retry while other runs take, release or write the lock.
TAKEOVER_FILE = LOCK_FILE + ".takeover"  # Held by the one run removing a stale lock.
_ABANDONED_TAKEOVER_SECONDS = 30.0
_MESSAGE_BYTES = 1024  # The refusal process 0 sends the others.


def _read_text(path: str) -> str | None:
  try:
    return Path(path).read_text().strip()
  except OSError:
    return None


def _start_time(pid: int) -> int | None:
  """When the process started (clock ticks after boot, Linux), to tell a reused pid apart."""
  stat = _read_text(f"/proc/{pid}/stat")
  try:  # The command name, field 2, is in parentheses and may hold spaces.
    return int(stat.rpartition(")")[2].split()[19]) if stat else None
  except (IndexError, ValueError):
    return None


def _pid_namespace() -> int | None:
  try:
    return os.stat("/proc/self/ns/pid").st_ino
  except OSError:
    return None


def _machine() -> dict[str, Any]:
  """What makes a pid in a lock file one this process can ask about."""
  return {
    "host": socket.gethostname(),
    "boot_id": _read_text("/proc/sys/kernel/random/boot_id"),
    "pid_namespace": _pid_namespace(),
  }


def _alive(pid: int, start_time: int | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Another user's process: alive.
  now = _start_time(pid)
  return start_time is None or now is None or now == start_time


def _stale_reason(holder: dict[str, Any] | None, age_s: float) -> str | None:
  """Why the lock of `holder`, last touched `age_s` seconds ago, is stale; None while it is held.
  `holder` is None for a file that cannot be read."""
  if holder is None:
    stale = age_s > STALE_AFTER_SECONDS
    return f"it cannot be read and has not changed for {age_s:.0f} s" if stale else None
  machine = _machine()
  if all(holder.get(k) == v for k, v in machine.items()):
    if _alive(holder["pid"], holder.get("pid_start")):
      return None
    return f"process {holder.get('pid')} is no longer running"
  if age_s > STALE_AFTER_SECONDS:
    return f"its heartbeat stopped {age_s:.0f} s ago"
  return None


def _describe(holder: dict[str, Any], age_s: float) -> str:
  command = holder.get("command") or []
  shown = " ".join([Path(command[0]).name, *command[1:]]) if command else "?"
  shown = shown.replace("\n", " ")
  if len(shown) > 80:
    shown = shown[:77] + "..."
  return (
    f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}, "
    f"heartbeat {age_s:.0f} s ago: {shown}"
  )


def _read(path: epath.Path) -> tuple[str, float] | None:
  """(text, seconds since its heartbeat) of the lock file; None if there is none."""
  try:
    text = path.read_text()
    return text, time.time() - paths.mtime(path)
  except FileNotFoundError:
    return None


def _parse(text: str) -> dict[str, Any] | None:
  try:
    holder = json.loads(text)
  except ValueError:
    return None  # Being written, or corrupt.
  if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int) or holder["pid"] < 1:
    return None
  return holder


def _create(path: epath.Path, text: str) -> None:
  """Creates the lock file holding `text`; FileExistsError if another run holds it."""
  paths.create_exclusive(path, text)


def _remove_stale(path: epath.Path, stale_text: str) -> bool:
  """Removes the stale lock file if it still holds `stale_text`; False if it changed, or another
  run is taking it over at this moment (the caller looks again)."""
  takeover = path.with_name(TAKEOVER_FILE)
  try:
    _create(takeover, str(os.getpid()))  # Of several runs taking over at once, one goes ahead.
  except FileExistsError:
    _clear_abandoned(takeover)
    return False
  try:
    # Judged stale from an earlier read: a run that took it over since holds a fresh lock.
    current = _read(path)
    if current is None or current[0] != stale_text:
      return False
    path.unlink()
    return True
  finally:
    takeover.unlink(missing_ok=True)


def _clear_abandoned(takeover: epath.Path) -> None:
  """Removes a takeover file older than a takeover can take (its run died in those microseconds).
  Two runs clearing it at once, while a third starts a takeover, could let two takeovers overlap;
  that needs a run to die mid-takeover and three to race at once, and is left at that."""
  with contextlib.suppress(FileNotFoundError):
    if time.time() - paths.mtime(takeover) > _ABANDONED_TAKEOVER_SECONDS:
      takeover.unlink()
      logger.warning("Removed %s, left by a run that died while taking over a lock.", takeover)


def _topmost_missing(path: epath.Path) -> epath.Path | None:
  """The outermost directory of `path` that does not exist yet (None on gs://, where directories
  are only the names of objects, gone with them)."""
  if not paths.is_local(path):
    return None
  missing = None
  for directory in [path, *path.parents]:
    if directory.exists():
      return missing
    missing = directory
  return missing


class WorkdirLock:
  """A workdir's lock while this run holds it: a daemon thread keeps its heartbeat."""

  def __init__(self, workdir: epath.Path, text: str, created: epath.Path | None):
    self.path = workdir / LOCK_FILE
    self._text, self._created = text, created
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, name="jaxdl-workdir-lock", daemon=True)
    self._thread.start()

  def _ours(self) -> bool:
    current = _read(self.path)
    return current is not None and current[0] == self._text

  def _beat(self) -> None:
    while not self._stop.wait(REFRESH_SECONDS):
      if not self._ours():
        logger.error(
          "%s is no longer this run's: another run judged it stale and took the workdir over.",
          self.path,
        )
        return
      with contextlib.suppress(OSError):  # A missed beat is fine; many are what makes it stale.
        if paths.is_local(self.path):
          os.utime(self.path)
        else:  # An object's time changes only when it is written.
          self.path.write_text(self._text)

  def release(self) -> None:
    self._stop.set()
    self._thread.join()
    if self._ours():
      self.path.unlink(missing_ok=True)
    if self._created is not None:  # Leave no directory a run that did nothing created.
      for directory in [self.path.parent, *self.path.parent.parents]:
        try:
          os.rmdir(directory)  # Only if empty (epath's rmdir raises ValueError otherwise).
        except OSError:
          break
        if directory == self._created:
          break


def acquire(workdir: str | os.PathLike, command: list[str] | None = None) -> WorkdirLock:
  """Takes `workdir`'s lock, creating the directory if needed; CheckpointError if another run
  holds it."""
  workdir = paths.workdir_path(workdir)
  path = workdir / LOCK_FILE
  token = uuid.uuid4().hex
  text = json.dumps(
    {
      **_machine(),
      "pid": os.getpid(),
      "pid_start": _start_time(os.getpid()),
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": list(command if command is not None else sys.argv),
      "token": token,
    }
  )
  created = _topmost_missing(workdir)
  took_over = None
  deadline = time.monotonic() + _WAIT_SECONDS
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    while True:
      try:
        _create(path, text)
        break
      except FileExistsError:
        pass
      current = _read(path)
      if current is None:
        continue  # Released a moment ago.
      holder = _parse(current[0])
      reason = _stale_reason(holder, current[1])
      if reason is None and holder is not None:
        raise CheckpointError(
          f"Workdir {workdir} is in use by another jaxdl run ({_describe(holder, current[1])}): "
          "wait for it to finish, stop it, or pass another --workdir."
        )
      if reason is not None and _remove_stale(path, current[0]):
        took_over = (holder, current[1], reason)
      elif time.monotonic() > deadline:
        raise CheckpointError(
          f"Could not take the lock {path} within {_WAIT_SECONDS:.0f} s: other runs are "
          "starting in this workdir, or it holds an unreadable lock file. If no run uses the "
          "workdir, delete the file; otherwise pass another --workdir."
        )
      else:
        time.sleep(0.05)
  except OSError as e:
    raise CheckpointError(
      f"Cannot create the lock file {path}: {e}. Check the workdir's permissions, or pass "
      "another --workdir."
    ) from e
  if took_over:
    holder, age_s, reason = took_over
    logger.warning(
      "Took over the stale lock of workdir %s (%s): %s.",
      workdir,
      _describe(holder, age_s) if holder else "unreadable",
      reason,
    )
  return WorkdirLock(workdir, text, created)


def _from_process_0(message: str) -> str:
  """Process 0's `message`, on every process of the run (each must call this)."""
  if jax.process_count() == 1:
    return message
  data = np.zeros(_MESSAGE_BYTES, np.uint8)
  encoded = message.encode()[:_MESSAGE_BYTES]
  data[: len(encoded)] = np.frombuffer(encoded, np.uint8)
  data = np.asarray(multihost_utils.broadcast_one_to_all(data), np.uint8)
  return bytes(data).rstrip(b"\0").decode(errors="ignore")


@contextlib.contextmanager
def hold(workdir: epath.Path, command: list[str] | None = None) -> Iterator[WorkdirLock | None]:
  """Holds `workdir`'s lock for a run's processes (process 0 takes it); every process raises the
  same CheckpointError if another run holds it."""
  lock, refusal = None, ""
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir, command)
    except CheckpointError as e:
      refusal = str(e)
  refusal = _from_process_0(refusal)
  if refusal:
    if lock is not None:  # Only if the message did not arrive intact.
      lock.release()
    raise CheckpointError(refusal)
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
