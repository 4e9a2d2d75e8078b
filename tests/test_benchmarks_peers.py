"""Smoke tests of benchmarks/mnist_cnn_peers.py (its --quick mode runs, measures and reports) and
of benchmarks/sequence_peers.py's flax worker and table.

Runs in the project's venv, which has no torch, TensorFlow or Keras: a requested peer that is not
installed must be reported as skipped, not crash the run.
"""

import importlib.util
import json
import math
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, load_benchmark

SCRIPT = REPO / "benchmarks" / "mnist_cnn_peers.py"
MISSING = next(
  (
    p
    for p, m in [("torch", "torch"), ("tf_keras", "tensorflow"), ("keras_jax", "keras")]
    if importlib.util.find_spec(m) is None
  ),
  None,
)


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
    [
      sys.executable,
      str(SCRIPT),
      "--quick",
      "--peers",
      ",".join(peers),
      "--batch-sizes",
      "32",
      "--json",
      str(out),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
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
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 2
  assert "only jaxdl variants take" in proc.stderr


# ---------------------------------------------------------------- sequence_peers.py


@pytest.fixture(scope="module")
def peers():
  return load_benchmark("sequence_peers")


def param_count(model, tokens_BT) -> int:
  import jax

  init = lambda key: model.init(key, tokens_BT, train=False)["params"]
  return sum(x.size for x in jax.tree.leaves(jax.eval_shape(init, jax.random.key(0))))


def test_sequence_peers_flax_models_have_the_peers_param_counts(peers):
  import jax.numpy as jnp

  from jaxdl import models

  spec = peers.comparison_spec("gpt_char", quick=False)
  config = peers.experiment_config(spec)
  tokens_BT = jnp.zeros((spec["batch_size"], spec["seq_len"]), jnp.int32)
  jaxdl_gpt = models.build_model(config.model, {"vocab_size": peers.VOCAB})
  # The torch GPT's count too: V D + T D + L (2 D + 12 D^2) + D at V=65, T=64, L=4, D=128.
  assert param_count(peers.flax_model(config.model), tokens_BT) == 804_096
  assert param_count(jaxdl_gpt, tokens_BT) == 804_096

  for name, features in (("lstm_char", 256), ("lstm_big", 512)):
    spec = peers.comparison_spec(name, quick=False)
    config = peers.experiment_config(spec)
    # OptimizedLSTMCell: 4 gates, each an input kernel, a recurrent kernel and one bias.
    lstm = lambda d: 4 * (d * features + features * features + features)
    expected = 65 * 64 + lstm(64) + lstm(features) + features * 65 + 65
    tokens_BT = jnp.zeros((spec["batch_size"], spec["seq_len"]), jnp.int32)
    assert param_count(peers.flax_model(config.model), tokens_BT) == expected


# Slow: each run compiles a parameter init and a train step, 5-7 s on 2 quiet cores and twice
# that when they are shared. The fast suite checks the models' layouts by their parameter counts.
@pytest.mark.slow
@pytest.mark.parametrize("comparison", ["gpt_char", "lstm_big"])
def test_sequence_peers_flax_worker_starts_at_the_uniform_loss(peers, comparison):
  """The --quick flax step runs: random init predicts about uniformly over the 65 characters."""
  step, params, versions = peers.flax_step(peers.comparison_spec(comparison, quick=True))
  first, second = float(step()), float(step())
  assert params == (804_096 if comparison == "gpt_char" else 242_945)  # lstm_big: 2 x 128 wide.
  assert abs(first - math.log(65)) < 0.1, first
  assert math.isfinite(second)
  assert set(versions) == {"jax", "flax"}


def test_sequence_peers_table_has_a_ratio_column_per_peer(peers, capsys):
  tokens = {
    "jaxdl": [100.0, 120.0, 90.0],
    "torch": [50.0, 60.0, 90.0],
    "flax": [100.0, 100.0, 100.0],
  }
  rounds = {f: [{"tokens_per_sec": x} for x in xs] for f, xs in tokens.items()}
  ratios = peers.paired_ratios(rounds)
  assert ratios == {"torch": [2.0, 2.0, 1.0], "flax": [1.0, 1.2, 0.9]}
  rows = [
    {
      "title": "t",
      "framework": f,
      "params": 1,
      "tokens_per_sec": xs[0],
      "ms_per_step": 1.0,
      "cpu_ms_per_step": 1.0,
      "round_tokens_per_sec": xs,
      "ratios": {"torch": 2.0, "flax": 1.0} if f == "jaxdl" else {},
      "round_ratios": ratios if f == "jaxdl" else {},
    }
    for f, xs in tokens.items()
  ]
  peers.print_table(rows, rounds=3)
  lines = capsys.readouterr().out.splitlines()
  header = next(line for line in lines if line.startswith("| comparison"))
  assert "| jaxdl/torch | jaxdl/flax |" in header
  jaxdl_row = next(line for line in lines if "| jaxdl |" in line)
  assert "| 2.00 | 1.00 |" in jaxdl_row
  assert "(torch 2.00 2.00 1.00; flax 1.00 1.20 0.90)" in jaxdl_row
