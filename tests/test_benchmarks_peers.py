"""Smoke test of benchmarks/mnist_cnn_peers.py: its --quick mode runs, measures and reports.

Runs in the project's venv, which has no torch, TensorFlow or Keras: a requested peer that is not
installed must be reported as skipped, not crash the run.
"""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "mnist_cnn_peers.py"
MISSING = next((p for p, m in [("torch", "torch"), ("tf_keras", "tensorflow"),
                               ("keras_jax", "keras")] if importlib.util.find_spec(m) is None),
               None)


def table_rows(stdout: str) -> dict[str, list[str]]:
  """{peer: cells} from the markdown table's body rows."""
  rows = {}
  for line in stdout.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("| ") and cells[0] not in ("peer",) and not cells[0].startswith(":"):
      rows[cells[0]] = cells
  return rows


@pytest.mark.slow  # Two subprocesses that each import jax and compile: 30-45 s on 2 cores.
def test_quick_run_reports_jaxdl_and_flax_and_skips_missing_peer(tmp_path):
  peers = ["jaxdl", "flax"] + ([MISSING] if MISSING else [])
  out = tmp_path / "peers.json"
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), "--quick", "--peers", ",".join(peers), "--batch-sizes", "32",
       "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr

  rows = table_rows(proc.stdout)
  assert set(rows) == {"jaxdl", "flax"}, proc.stdout
  for peer in ("jaxdl", "flax"):
    median, per_round, ratio = rows[peer][1:4]
    assert float(median) > 0 and float(per_round) == float(median)  # One round: the same run.
    assert float(ratio) > 0
  # flax is the only non-jaxdl peer, so it is the fastest peer and its own ratio is 1.
  assert float(rows["flax"][3]) == 1.0
  assert "93,322 in every peer's model" in proc.stdout

  report = json.loads(out.read_text())
  run = report["runs"]["32"]
  jaxdl_eps, flax_eps = run["jaxdl"][0]["examples_per_sec"], run["flax"][0]["examples_per_sec"]
  paired = report["summary"]["32"]["rows"]["jaxdl"]["paired_ratio"]
  assert paired == pytest.approx(jaxdl_eps / flax_eps)
  assert {r["param_count"] for r in (run["jaxdl"][0], run["flax"][0])} == {93_322}
  if MISSING:
    assert re.search(rf"skipped: {MISSING} \(module '\w+' is not installed", proc.stdout)
    assert any(s.startswith(MISSING) for s in report["skipped"])


def test_bad_variant_is_rejected_before_any_run():
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), "--peers", "flax", "--variant", "flax:x=train.batch_size=8"],
      cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2
  assert "only jaxdl variants take" in proc.stderr
