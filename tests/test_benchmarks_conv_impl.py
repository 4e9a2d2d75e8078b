"""Smoke test of benchmarks/conv_impl.py: both implementations run, train alike, and are tabled."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # Two worker processes that import jax and compile: ~25 s on 2 cores.
def test_quick_run_times_both_implementations_on_the_same_training(tmp_path):
  out = tmp_path / "conv.json"
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "conv_impl.py"), "--quick",
                         "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  row = next(line for line in proc.stdout.splitlines() if line.startswith("| 16 | 1 |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  xla_ms, im2col_ms, speedup = float(cells[2]), float(cells[3]), float(cells[6])
  # The table rounds times to 0.1 ms and the speedup to 0.01; at a few ms a step that rounding
  # alone moves xla_ms / im2col_ms by a few percent.
  low, high = (xla_ms - 0.05) / (im2col_ms + 0.05), (xla_ms + 0.05) / (im2col_ms - 0.05)
  assert low - 0.005 <= speedup <= high + 0.005
  runs = json.loads(out.read_text())["runs"]
  xla, im2col = runs["xla/1/16"][0], runs["im2col/1/16"][0]
  # The same model, batch and steps: the losses agree to float rounding.
  assert im2col["loss"] == pytest.approx(xla["loss"], rel=1e-4)
  assert 0 < xla["p10_ms"] <= xla["median_ms"] and im2col["cpu_ms"] > 0
