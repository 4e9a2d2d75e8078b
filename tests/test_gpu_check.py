"""benchmarks/gpu_models.py on the CPU: the smoke run's table (GPT-2 small unrolled, GPT-2 medium
scanned with remat, ResNet), and the FLOP formulas it reports.

The real check needs a GPU (benchmarks/gpu_check.sh); here the same code runs at tiny sizes, and
the formulas are held to published counts: nanoGPT's 123.69M parameters for GPT-2 small with the
padded vocabulary, and torchvision's 4.09 GFLOPS (multiply-adds) for ResNet-50 at 224x224.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxdl import config as config_lib
from jaxdl import nn as nn_lib
from tests.conftest import REPO, load_benchmark

SCRIPT = REPO / "benchmarks" / "gpu_models.py"


@pytest.fixture(scope="module")
def gpu_models():
  return load_benchmark("gpu_models")


def table_rows(stdout: str) -> list[dict[str, str]]:
  """The markdown table at the end of the output, as {column: cell} per row."""
  lines = [l for l in stdout.splitlines() if l.startswith("|")]
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  return [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]


def percent(cell: str) -> float:
  return float(cell.rstrip("%")) / 100


@pytest.mark.slow  # ~35-50 s on 2 cores, nearly all of it XLA compiling on the CPU.
def test_smoke_run_reports_throughput_and_mfu(tmp_path):
  out = tmp_path / "gpu_check.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, str(SCRIPT), "--allow-cpu", "--smoke", "--json", str(out)],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
    timeout=240,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.startswith("jax.devices(): [CpuDevice")
  assert proc.stdout.rstrip().splitlines()[-1].startswith("| ResNet")  # The table comes last.

  rows = table_rows(proc.stdout)
  assert [r["model"] for r in rows] == ["GPT (smoke)", "GPT medium (smoke)", "ResNet (smoke)"]
  assert [(r["layers"], r["remat"]) for r in rows] == [
    ("unrolled", "none"),
    ("scan", "full"),
    ("-", "-"),
  ]
  for row in rows:
    assert float(row["throughput"].split()[0].replace(",", "")) > 0
    for column in ("MFU XLA", "MFU formula"):
      assert 0 < percent(row[column]) < 1.5, row  # Finite; CPU noise can pass 100% a little.
    assert float(row["args GiB"]) > 0 and float(row["temp GiB"]) > 0, row
    assert row["peak GiB"] == "n/a"  # The CPU gives no memory_stats().
  # XLA counts the scanned blocks' loop body once: a lower bound, and the table says so.
  assert rows[1]["TFLOP/s XLA"].endswith("(lower bound)")
  # "auto" tries cuDNN first; on the CPU it is refused and XLA's attention runs instead.
  assert rows[0]["attention"] == "jax"
  assert (
    "GPT (smoke): attention_impl='cudnn' failed: ValueError: implementation='cudnn' needs "
    "a GPU" in proc.stdout
  )

  results = json.loads(out.read_text())["results"]
  gpt, medium, resnet = results
  assert gpt["ok"] and medium["ok"] and resnet["ok"]
  assert (medium["layers"], medium["remat"], medium["batch"]) == ("scan", "full", 2)
  assert "L=4 H=4 D=64" in medium["config"]
  # Throughput is the step's tokens (2 rows x 32) or images (2) over the median step time.
  assert gpt["items_per_sec"] == pytest.approx(2 * 32 / (gpt["step_ms"] / 1e3))
  assert resnet["items_per_sec"] == pytest.approx(2 / (resnet["step_ms"] / 1e3))
  assert gpt["step_ms"] == pytest.approx(sorted(gpt["window_ms"])[1])  # Median of 3 windows.
  for r in results:
    assert r["mfu_formula"] == pytest.approx(
      r["formula_flops_per_step"] / (r["step_ms"] / 1e3) / (r["peak_tflops"] * 1e12), rel=1e-3
    )
    assert math.isfinite(r["last_loss"]) and r["compile_seconds"] > 0
    # The arguments hold the train state, float32: parameters and AdamW's two moments (GPT) or
    # SGD's momentum (ResNet).
    copies = 3 if r["unit"] == "tokens" else 2
    assert r["xla_argument_bytes"] >= copies * 4 * r["params"] and r["xla_temp_bytes"] > 0
    assert math.isnan(r["peak_memory_gb"])


def test_no_gpu_exits_with_the_fix(gpu_models, capsys):
  assert jax.default_backend() == "cpu"
  assert gpu_models.main(["--smoke"]) == 2
  err = capsys.readouterr().err
  assert "JAX sees no GPU" in err and "--allow-cpu" in err


def test_gpt2_small_formula_matches_nanogpt(gpu_models):
  config = gpu_models.GptConfig()
  model = nn_lib.GPT(
    vocab_size=config.vocab_size,
    block_size=config.block_size,
    num_layers=config.num_layers,
    num_heads=config.num_heads,
    embed_dim=config.embed_dim,
  )
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  n = gpu_models.gpt_non_embedding_params(params["params"], config)
  assert n == 123_689_472  # nanoGPT prints "number of parameters: 123.69M" for GPT-2 at 50304.
  # 6N + 12 L H Q T with L=12, H=12, Q=64, T=1024.
  assert gpu_models.gpt_flops_per_token(config, n) == 6 * n + 12 * 12 * 12 * 64 * 1024


def test_resnet50_macs_match_torchvision(gpu_models):
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  macs = gpu_models.matmul_macs(nn_lib.ResNet(depth=50), image, train=False)
  assert macs / 1e9 == pytest.approx(4.09, abs=0.005)  # torchvision's ResNet50 "GFLOPS 4.09".


def test_matmul_macs_of_single_layers(gpu_models):
  x = jax.ShapeDtypeStruct((2, 8, 8, 6), jnp.float32)
  # Strided 3x3 conv, 6 -> 4 channels in 2 groups: 2 x 4x4 x 4 outputs, 3 x 3 x 3 MACs each.
  conv = nn.Conv(4, (3, 3), strides=2, feature_group_count=2)
  assert gpu_models.matmul_macs(conv, x) == 2 * 4 * 4 * 4 * 3 * 3 * 3
  assert gpu_models.matmul_macs(nn.Dense(5), x) == 2 * 8 * 8 * 5 * 6


def test_optimizer_defaults_match_base_config(gpu_models):
  assert gpu_models.OPTIMIZER_DEFAULTS == config_lib.base_config().optimizer.to_dict()


def test_models_name_rows(gpu_models):
  rows = gpu_models.parse_rows("gpt, gpt:scan:full,gpt_medium:dots_saveable:scan,resnet,")
  Row = gpu_models.Row
  assert rows == [
    Row("gpt"),
    Row("gpt", scan=True, remat="full"),
    Row("gpt_medium", scan=True, remat="dots_saveable"),
    Row("resnet"),
  ]
  assert [str(r) for r in rows] == [
    "gpt",
    "gpt:scan:full",
    "gpt_medium:scan:dots_saveable",
    "resnet",
  ]
  assert gpu_models.parse_args([]).models == gpu_models.parse_rows(gpu_models.DEFAULT_MODELS)
  default = gpu_models.parse_rows(gpu_models.DEFAULT_MODELS)
  assert {r.model for r in default} == {"gpt", "gpt_medium", "resnet"}
  assert {r.remat for r in default} == {"none", "full"} and any(r.scan for r in default)


def test_rows_build_the_gpt_they_name(gpu_models):
  config = gpu_models.GPT_MODELS["gpt_medium"][1]
  row = dataclasses.replace(config, remat="full", scan_layers=True)
  model = gpu_models.gpt_model(row, "jax")
  assert (model.num_layers, model.num_heads, model.embed_dim) == (24, 16, 1024)
  assert (model.remat, model.scan_layers, model.dtype) == ("full", True, jnp.bfloat16)


def test_peak_cell_says_when_the_row_did_not_raise_the_peak(gpu_models):
  result = gpu_models.Result("GPT-2 small", "-", 16, "tokens", ok=True, step_ms=10.0)
  result.peak_memory_gb, result.peak_memory_own = 12.345, True
  assert gpu_models.peak_cell(result) == "12.3"
  result.peak_memory_own = False  # An earlier row's peak was higher: only a bound of this one's.
  assert gpu_models.peak_cell(result) == "<=12.3"
  assert "| <=12.3 |" in gpu_models.markdown_table([result])


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--models", "gpt,vit"], "unknown ['vit']"),
    (["--models", "resnet:scan"], "resnet takes no options"),
    (["--models", "gpt:scan:fulll"], "at most ':scan' and one remat policy"),
    (["--models", "gpt:full:none"], "at most ':scan' and one remat policy"),
    (["--gpt-batch", "0"], "must be at least 1"),
    (["--gpt-medium-batch", "0"], "must be at least 1"),
  ],
)
def test_bad_options_are_refused(gpu_models, capsys, argv, message):
  with pytest.raises(SystemExit):
    gpu_models.parse_args(argv)
  assert message in capsys.readouterr().err
