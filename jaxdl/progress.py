"""Progress reporting: a tqdm bar on a terminal, plain log lines otherwise (CI, files, pipes)."""

import logging
import sys
from typing import Mapping

from tqdm import tqdm

logger = logging.getLogger("jaxdl")


class Progress:
  """Shows step, loss, examples/s and ETA. Updated only when metrics reach the host.

  `enabled=False` silences the per-step report; `message` (evals, stops) still speaks, on the main
  process only.
  """

  def __init__(
    self, *, total_steps: int, initial_step: int, enabled: bool = True, is_main_process: bool = True
  ):
    self.total_steps = total_steps
    self._bar = None
    self._enabled = enabled and is_main_process
    self._speaks = is_main_process
    if self._enabled and sys.stderr.isatty():
      self._bar = tqdm(
        total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True, file=sys.stderr
      )
    self._step = initial_step

  def update(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    loss = metrics.get("train/loss", float("nan"))
    rate = metrics.get("perf/examples_per_sec", float("nan"))
    if self._bar is not None:
      self._bar.update(step - self._step)
      self._bar.set_postfix(loss=f"{loss:.4f}", ex_per_s=f"{rate:,.0f}", refresh=False)
    else:
      eta_s = (self.total_steps - step) * metrics.get("perf/step_time_ms", float("nan")) / 1e3
      logger.info(
        "step %d/%d  loss %.4f  %.0f examples/s  ETA %s",
        step,
        self.total_steps,
        loss,
        rate,
        _format_seconds(eta_s),
      )
    self._step = step

  def message(self, text: str) -> None:
    if self._bar is not None:
      self._bar.write(text, file=sys.stderr)
    elif self._speaks:
      logger.info("%s", text)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def _format_seconds(seconds: float) -> str:
  if seconds != seconds:  # NaN
    return "?"
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
