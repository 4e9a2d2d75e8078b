"""Where metrics go: `metrics.jsonl` (exact, one JSON object per line) and TensorBoard.

Floats are written by `json`, which uses Python's repr: the shortest string that reads back to the
same float, so two runs compare exactly. Only process 0 writes.
"""

import json
import math
from pathlib import Path
from typing import Any, Mapping

import jax
from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _json_number(value: float) -> float | str:
  # JSON has no NaN or Inf; write them as strings rather than emit invalid JSON.
  return value if math.isfinite(value) else repr(value)


class MetricWriter:
  """Appends `{"step": N, "train/loss": ..., ...}` lines and TensorBoard scalars."""

  def __init__(self, workdir: str | Path, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = Path(workdir) / METRICS_FILE
    self._file = self.path.open("a") if self.enabled else None
    self._tb = SummaryWriter(str(Path(workdir) / TENSORBOARD_DIR)) if self.enabled else None

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    record = {"step": int(step), **{k: _json_number(v) for k, v in values.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for k, v in values.items():
      self._tb.add_scalar(k, v, global_step=int(step))

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_after(workdir: str | Path, step: int) -> int:
  """Drops lines past `step` (from a run that crashed after its last checkpoint); they will be
  logged again, identically, by the resumed run. The dropped lines are kept in a side file.

  Returns how many lines were dropped.
  """
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return 0
  lines = path.read_text().splitlines(keepends=True)
  keep = [l for l in lines if l.strip() and json.loads(l)["step"] <= step]
  dropped = [l for l in lines if l.strip() and json.loads(l)["step"] > step]
  if dropped:
    with (path.parent / f"{METRICS_FILE}.dropped").open("a") as f:
      f.writelines(dropped)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(keep))
    tmp.replace(path)
  return len(dropped)
