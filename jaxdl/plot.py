"""Loss and accuracy curves of one or more runs, read from their metrics.jsonl."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Files only; never needs a display.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from jaxdl import metrics as metrics_lib
from jaxdl.errors import UserError

# (panel title, [(metric key, line style)]): train and eval curves of a quantity share a panel.
PANELS = (
  ("loss", (("train/loss", "--"), ("eval/loss", "-"))),
  ("accuracy", (("train/accuracy", "--"), ("eval/accuracy", "-"))),
)


def plot_runs(
  workdirs: list[str | Path], output: str | Path, *, labels: list[str] | None = None
) -> Path:
  """Draws one panel per quantity; each run keeps one colour, train dashed and eval solid."""
  labels = labels or [_label(w, workdirs) for w in workdirs]
  runs = []
  for workdir, label in zip(workdirs, labels):
    records = metrics_lib.read_metrics(workdir)
    if not records:
      raise UserError(
        f"{workdir} has no {metrics_lib.METRICS_FILE}, or it is empty: pass the "
        "workdir of a run that has logged at least once."
      )
    runs.append((label, records))

  fig, axes = plt.subplots(1, len(PANELS), figsize=(6 * len(PANELS), 4.2), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (title, keys) in zip(axes[0], PANELS):
    for i, (label, records) in enumerate(runs):
      for key, style in keys:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if points:
          steps, values = zip(*points)
          ax.plot(
            steps,
            values,
            style,
            color=colors[i % len(colors)],
            marker="." if len(points) < 30 else None,
            label=f"{label} {key.split('/')[0]}",
          )
    ax.set_title(title)
    if title == "loss":
      ax.set_yscale("log")  # Late training lives in the last decade of the loss.
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  fig.tight_layout()
  output = Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(output, dpi=120)
  plt.close(fig)
  return output


def _label(workdir: str | Path, workdirs: list[str | Path]) -> str:
  """The run's directory name, or its whole path where two runs share a name."""
  names = [Path(w).name for w in workdirs]
  name = Path(workdir).name
  return name if names.count(name) == 1 else str(workdir)
