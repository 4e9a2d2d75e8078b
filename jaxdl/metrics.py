"""Where metrics go: `metrics.jsonl` (exact, one JSON object per line), TensorBoard, and a tracker
such as W&B (jaxdl.wandb_tracker) when a run asks for one.

Floats are written by `json`, which uses Python's repr: the shortest string that reads back to the
same float, so two runs compare exactly. Only process 0 writes.

In a gs:// workdir, metrics.jsonl is rewritten whole (objects cannot be appended to) at most every
UPLOAD_EVERY_SECONDS, before each checkpoint and at the end; tensorboardX uploads its event file
every two minutes and at the end.
"""

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from etils import epath
import jax
from tensorboardX import SummaryWriter

from jaxdl import paths
from jaxdl.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# How often metrics.jsonl on gs:// (rewritten whole: objects cannot be appended to) is uploaded.
UPLOAD_EVERY_SECONDS = 30.0


def _json_number(value: float) -> float | str:
  # JSON has no NaN or Inf; write them as strings rather than emit invalid JSON.
  return value if math.isfinite(value) else repr(value)


class MetricWriter:
  """Appends `{"step": N, "train/loss": ..., ...}` lines and TensorBoard scalars, and hands the
  same `(step, {name: float})` to each of `sinks` (a tracker: jaxdl.wandb_tracker)."""

  def __init__(
    self, workdir: str | Path, *, enabled: bool | None = None, sinks: Sequence[Any] = ()
  ):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._sinks = list(sinks) if self.enabled else []
    workdir = paths.workdir_path(workdir)
    self.path = workdir / METRICS_FILE
    self._file = paths.Appender(self.path, UPLOAD_EVERY_SECONDS) if self.enabled else None
    self._tb = _tensorboard(workdir / TENSORBOARD_DIR) if self.enabled else None

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    record = {"step": int(step), **{k: _json_number(v) for k, v in values.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for k, v in values.items():
      self._tb.add_scalar(k, v, global_step=int(step))
    for sink in self._sinks:
      sink.write(int(step), values)

  def sync(self) -> None:
    """Puts every line written so far into metrics.jsonl (on gs://, uploads it): called before a
    checkpoint is saved, so that a run resumed from it finds every line up to its step."""
    if self.enabled:
      self._file.sync()

  def close(self, exit_code: int = 0) -> None:
    """`exit_code`, the one `jaxdl train` exits with, tells the sinks how the run ended."""
    if self.enabled:
      self._file.close()
      self._tb.close()
    for sink in self._sinks:
      sink.close(exit_code)


def _tensorboard(directory: epath.Path) -> SummaryWriter:
  try:  # tensorboardX writes gs:// itself, through google-cloud-storage.
    return SummaryWriter(os.fspath(directory))
  except ImportError:
    raise ConfigError(
      f"TensorBoard logs in {directory} need the package 'google-cloud-storage', which is not "
      "installed; run: pip install 'jaxdl[gcs]'"
    ) from None


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
  path = paths.workdir_path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_after(workdir: str | Path, step: int) -> int:
  """Drops lines past `step` (from a run that crashed after its last checkpoint); they will be
  logged again, identically, by the resumed run. The dropped lines are kept in a side file.

  Returns how many lines were dropped.
  """
  path = paths.workdir_path(workdir) / METRICS_FILE
  if not path.exists():
    return 0
  lines = path.read_text().splitlines(keepends=True)
  keep = [l for l in lines if l.strip() and json.loads(l)["step"] <= step]
  dropped = [l for l in lines if l.strip() and json.loads(l)["step"] > step]
  if dropped:
    paths.append_text(path.parent / f"{METRICS_FILE}.dropped", "".join(dropped))
    paths.write_atomic(path, "".join(keep))
  return len(dropped)
