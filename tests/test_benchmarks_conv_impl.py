"""Smoke test of benchmarks/conv_impl.py: every implementation runs, trains alike, is tabled."""

import json
from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # Four worker processes that import jax and compile: ~45 s on 2 cores.
def test_quick_run_times_every_implementation_on_the_same_training(tmp_path):
  out = tmp_path / "conv.json"
  proc = subprocess.run(
    [sys.executable, str(REPO / "benchmarks" / "conv_impl.py"), "--quick", "--json", str(out)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = proc.stdout.splitlines()
  header = next(line for line in lines if line.startswith("| batch |"))
  row = next(line for line in lines if line.startswith("| 16 | 1 |"))
  cells = dict(
    zip(
      [c.strip() for c in header.strip("|").split("|")],
      [c.strip() for c in row.strip("|").split("|")],
    )
  )
  runs = json.loads(out.read_text())["runs"]
  xla_ms = float(cells["xla ms/step"])
  for impl in ("im2col", "fused", "winograd"):
    impl_ms, speedup = float(cells[f"{impl} ms/step"]), float(cells[f"{impl} speedup"])
    # The table rounds times to 0.1 ms and the speedup to 0.01; at a few ms a step that
    # rounding alone moves xla_ms / impl_ms by a few percent.
    low, high = (xla_ms - 0.05) / (impl_ms + 0.05), (xla_ms + 0.05) / (impl_ms - 0.05)
    assert low - 0.005 <= speedup <= high + 0.005, impl
    # The same model, batch and steps: the losses agree to float rounding.
    assert runs[f"{impl}/1/16"][0]["loss"] == pytest.approx(runs["xla/1/16"][0]["loss"], rel=1e-4)
  xla = runs["xla/1/16"][0]
  assert 0 < xla["p10_ms"] <= xla["median_ms"] and runs["fused/1/16"][0]["cpu_ms"] > 0
