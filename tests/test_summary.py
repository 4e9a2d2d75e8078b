"""`jaxdl summary`: parameter counts against known totals, FLOPs against formulas, memory."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxdl import cli
from jaxdl import summary as summary_lib
from jaxdl.config import base_config
from jaxdl.train import optim
from tests.conftest import REPO

EXPERIMENT = str(REPO / "experiments" / "mnist_cnn.py")


def _number(text: str, label: str) -> float:
  match = re.search(rf"^{re.escape(label)}: (\S+)", text, re.MULTILINE)
  assert match, f"no '{label}:' line in\n{text}"
  return float(match.group(1))


def _adam():
  return optim.make_optimizer(base_config().optimizer, 1)[0]


class Dense(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):  # No `train` argument: summarize must cope with plain modules.
    return nn.Dense(self.features)(x)


class ConvBN(nn.Module):
  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.Conv(4, (3, 3), name="conv")(x)
    return nn.BatchNorm(use_running_average=not train, name="bn")(x)


class ManyDense(nn.Module):
  """130 layers, 260 arrays: more than format_summary lists one by one."""

  @nn.compact
  def __call__(self, x):
    for i in range(130):
      x = nn.Dense(2, name=f"dense_{i}")(x)
    return x


def test_mnist_cnn_experiment(capsys):
  assert cli.main(["summary", EXPERIMENT]) == 0
  out = capsys.readouterr().out
  assert "total params: 93322 " in out  # The Keras tutorial's count.
  assert "conv2/kernel" in out and "(3, 3, 32, 64)" in out
  assert _number(out, "non-trainable variables") == 0
  assert _number(out, "params bytes") == 4 * 93322
  # Adam's two moments per parameter, plus int32 step counts of Adam and its schedule.
  assert _number(out, "optimizer state bytes") == 2 * 4 * 93322 + 2 * 4
  default_flops = _number(out, "forward FLOPs")
  # Multiply-adds of the convolutions and dense layers (one image); XLA adds ReLU, pool, biases.
  # conv2 runs fused with its pool (jaxdl.kernels.conv_pool), which skips the 11th row and column of
  # its 11x11 output that the 2x2 pool drops: 10 * 10 positions. These are the im2col op's.
  assert cli.main(["summary", EXPERIMENT, "runtime.kernels=fused", "--no-temporaries"]) == 0
  out = capsys.readouterr().out
  macs = 26 * 26 * 32 * 9 * 1 + 10 * 10 * 64 * 9 * 32 + 3 * 3 * 64 * 9 * 64 + 576 * 64 + 64 * 10
  assert _number(out, "forward FLOPs") == pytest.approx(2 * macs, rel=0.05)
  # The default runs conv2 by Winograd's F(2x2, 3x3): 16 products of 25 tiles x 32 x 64 instead
  # of 100 positions x 288 x 64, plus its transforms (the kernel's, 16 x 9 x 2048 multiply-adds,
  # counts fully for one image).
  winograd_macs = macs - 10 * 10 * 64 * 9 * 32 + 16 * 25 * 32 * 64 + 16 * 9 * 32 * 64
  assert winograd_macs < 0.8 * macs
  assert default_flops == pytest.approx(2 * winograd_macs, rel=0.15)


def test_resnet18_by_name_without_weights(capsys, monkeypatch):
  # Initialising or running the model only on tracers, never executing a compiled program, means
  # no weight is ever allocated.
  def only_traced(method):
    def wrapped(self, *args, **kwargs):
      arrays = [x for x in jax.tree.leaves(args[1:]) if hasattr(x, "shape")]
      assert arrays and all(isinstance(x, jax.core.Tracer) for x in arrays), method.__name__
      return method(self, *args, **kwargs)

    return wrapped

  monkeypatch.setattr(nn.Module, "init", only_traced(nn.Module.init))
  monkeypatch.setattr(nn.Module, "apply", only_traced(nn.Module.apply))
  monkeypatch.setattr(
    jax.stages.Compiled, "__call__", lambda *a, **k: pytest.fail("the forward pass ran")
  )
  assert cli.main(["summary", "--model", "resnet18", "--input-shape", "1,224,224,3"]) == 0
  out = capsys.readouterr().out
  assert "total params: 11689512 (11.7M)" in out  # torchvision's resnet18.
  # Running mean and variance of every BatchNorm: 2 * (64 + 2*2*(64+128+256+512) + 128+256+512).
  assert _number(out, "non-trainable variables") == 9600
  assert "batch_stats (non-trainable" in out and "layer4_1/bn2/var" in out
  assert 3e9 < _number(out, "forward FLOPs") < 4e9  # ~1.8 G multiply-adds at 224x224.


def test_gpt_tiny_token_input(capsys):
  assert (
    cli.main(
      [
        "summary",
        "--model",
        "gpt_tiny",
        "--input-shape",
        "1,16",
        "--input-dtype",
        "int32",
        "--optimizer",
        "sgd",
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  v, t, layers, d = 65, 128, 4, 128  # gpt_tiny; embeddings tied to the output layer.
  per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (8 * d * d + 5 * d)
  assert _number(out, "total params") == v * d + t * d + layers * per_layer + 2 * d
  assert "int32[1,16]" in out
  assert _number(out, "optimizer state bytes") == 4  # Plain SGD: only its schedule's step count.


def test_dense_flops_and_adam_bytes():
  batch, d_in, d_out = 8, 256, 128
  s = summary_lib.summarize(Dense(d_out), jnp.zeros((batch, d_in)), _adam())
  assert s.total_params == d_in * d_out + d_out
  assert s.flops == pytest.approx(2 * batch * d_in * d_out, rel=0.1)
  assert s.param_bytes == 4 * s.total_params
  assert s.opt_bytes == 2 * s.param_bytes + 2 * 4  # mu, nu; step counts of Adam and schedule.
  assert [(r.path, r.shape, r.count) for r in s.rows] == [
    ("Dense_0/bias", (d_out,), d_out),
    ("Dense_0/kernel", (d_in, d_out), d_in * d_out),
  ]


def test_batch_stats_are_not_parameters():
  s = summary_lib.summarize(ConvBN(), jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
  assert s.total_params == (3 * 3 * 3 * 4 + 4) + (4 + 4)  # conv kernel, bias; bn scale, bias.
  assert s.non_trainable == 8  # Running mean and variance.
  stats = [(r.path, r.trainable) for r in s.rows if r.collection == "batch_stats"]
  assert stats == [("bn/mean", False), ("bn/var", False)]
  assert s.opt_bytes is None
  text = summary_lib.format_summary(s)
  assert "batch_stats (non-trainable, not in total params)" in text
  assert "total params: 120 " in text and "non-trainable variables: 8" in text
  assert "optimizer state bytes: n/a" in text


def test_big_models_are_summed_per_module_unless_full():
  s = summary_lib.summarize(ManyDense(), jnp.zeros((1, 2)), flops=False)
  assert len(s.rows) == 260 and s.flops is None
  grouped, full = summary_lib.format_summary(s), summary_lib.format_summary(s, full=True)
  assert "dense_129/*" in grouped and "dense_129/kernel" not in grouped
  assert "dense_129/kernel" in full and "dense_2/kernel" in full
  # Natural order: dense_2 comes before dense_10.
  assert full.index("dense_2/kernel") < full.index("dense_10/kernel")
  for text in (grouped, full):
    assert "total params: 780 " in text and "forward FLOPs: n/a" in text


@pytest.mark.parametrize(
  "args, message",
  [
    (["--model", "resnet1000", "--input-shape", "1,32,32,3"], "Did you mean"),
    (["--model", "resnet18", "--input-shape", "1,x,3"], "--input-shape '1,x,3' is not a shape"),
    (["--model", "resnet18", "--input-shape", "1,0,3"], "is not a shape"),
    (["--model", "resnet18"], "needs --input-shape"),
    (["--model", "rnn_lm", "--input-shape", "1,16", "--input-dtype", "int32"], "--vocab-size"),
    (["--model", "gpt_tiny", "--input-shape", "1,16"], "--input-dtype int32"),
    (["--model", "gpt_tiny", "--input-shape", "1,999", "--input-dtype", "int32"], "block_size"),
    (["--model", "resnet18", "--input-shape", "1,32,32,3", "--vocab-size", "9"], "--vocab-size"),
    ([EXPERIMENT, "--input-shape", "1,28,28,1"], "applies with --model only"),
    ([], "Give an experiment file"),
  ],
)
def test_user_errors(args, message, capsys):
  assert cli.main(["summary", *args]) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxdl summary: error:") and message in err and "Traceback" not in err


# ------------------------------------------------------------------------------ Memory per device


def _memory_lines(text: str) -> dict[str, int | None]:
  """The "memory per device" block's byte counts, e.g. {"parameters": 373288}; None: unknown."""
  block = text[text.index("memory per device") :]
  return {
    label: None if value == "unknown" else int(value)
    for label, value in re.findall(r"^  ([a-z ]+): (\d+|unknown)", block, re.MULTILINE)
  }


def test_one_device_holds_the_totals(capsys):
  fast = ["train.batch_size=8", "runtime.steps_per_call=1", "--no-flops"]
  assert cli.main(["summary", EXPERIMENT, *fast]) == 0
  out = capsys.readouterr().out
  memory = _memory_lines(out)
  assert "memory per device (mesh data=1 fsdp=1 tensor=1, batch 8, 8 per device)" in out
  assert memory["parameters"] == _number(out, "params bytes") == 4 * 93322
  assert memory["optimizer state"] == _number(out, "optimizer state bytes")
  assert memory["batch"] == 8 * (28 * 28 + 1) * 4  # float32 images, int32 labels.
  assert memory["temporaries"] > 0
  state = memory["parameters"] + memory["optimizer state"] + memory["other loop state"]
  assert memory["total"] >= state + memory["batch"] + memory["temporaries"]


def test_memory_unknown_is_said_not_raised(capsys, monkeypatch):
  fast = ["train.batch_size=8", "runtime.steps_per_call=1", "--no-flops"]
  assert cli.main(["summary", EXPERIMENT, *fast, "--no-temporaries"]) == 0
  out = capsys.readouterr().out
  assert "temporaries: unknown (skipped: --no-temporaries)" in out
  assert _memory_lines(out)["parameters"] == 4 * 93322

  assert cli.main(["summary", EXPERIMENT, *fast, "parallel.strategy=pmap"]) == 0
  assert "unknown (parallel.strategy=pmap is not measured" in capsys.readouterr().out

  # A backend whose compiled programs give no memory analysis (XLA returns None).
  monkeypatch.setattr(jax.stages.Compiled, "memory_analysis", lambda self: None)
  assert cli.main(["summary", EXPERIMENT, *fast]) == 0
  out = capsys.readouterr().out
  assert "temporaries: unknown (XLA on cpu gives no memory analysis)" in out
  assert "total: unknown" in out


# Two batch sizes of a small GPT on 8 CPU devices with FSDP over 4 of them, in a fresh process:
# parallel.cpu_devices splits the host only before JAX starts.
EIGHT_DEVICES = """
import contextlib, io, json, sys
from jaxdl import cli
out = {}
for batch in (16, 64):
  text = io.StringIO()
  with contextlib.redirect_stdout(text):
    code = cli.main(["summary", sys.argv[1], "parallel.cpu_devices=8", "parallel.mesh.fsdp=4",
                     "model.num_layers=2", "model.embed_dim=64", "model.num_heads=2",
                     f"train.batch_size={batch}", "runtime.steps_per_call=1", "--no-flops"])
  assert code == 0, code
  out[batch] = text.getvalue()
print(json.dumps(out))
"""


def test_fsdp_splits_the_large_arrays_over_its_devices():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # conftest's 1 device.
  done = subprocess.run(
    [sys.executable, "-c", EIGHT_DEVICES, str(REPO / "experiments/shakespeare_char_gpt.py:cpu")],
    cwd=REPO,
    env={**env, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  small, large = json.loads(done.stdout).values()
  assert "memory per device (mesh data=2 fsdp=4 tensor=1, batch 16, 2 per device)" in small
  assert "batch 64, 8 per device" in large
  # The `cpu` variant's GPT, cut to 2 layers of width 64: context 64, no biases. Every array but
  # the LayerNorm scales (two a layer and the final one, 64 each: under jaxdl's 1024-element
  # floor) has a dimension that 4 divides, so FSDP gives each device a quarter of it.
  layers, d, context = 2, 64, 64
  vocab = int(re.search(r"wte/embedding\s+\((\d+), 64\)", small).group(1))
  scales = (2 * layers + 1) * d
  count = layers * 12 * d * d + (vocab + context) * d + scales
  assert _number(small, "total params") == count
  memory = _memory_lines(small)
  assert memory["parameters"] == 4 * ((count - scales) // 4 + scales)
  # AdamW's two moments lie like the parameters; its step counts are replicated.
  counts = _number(small, "optimizer state bytes") - 2 * 4 * count
  assert memory["optimizer state"] == 2 * memory["parameters"] + counts
  # XLA's temporaries of the step: a positive count of bytes, more for a bigger batch.
  assert 0 < memory["temporaries"] < _memory_lines(large)["temporaries"]
  assert memory["batch"] == 16 * (context + 1) * 4 // 8  # int32 tokens, split over 8 devices.
