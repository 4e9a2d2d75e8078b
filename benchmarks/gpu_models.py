"""Training throughput, MFU and memory on one GPU: GPT-2 small and medium, ResNet-50, bfloat16.

jaxdl's GPTs scanned over their layers and unrolled, with and without remat; all in one process.

Run (from the repository root; `benchmarks/gpu_check.sh` wraps this with the environment checks):
    python benchmarks/gpu_models.py                       # the six default rows on one GPU
    python benchmarks/gpu_models.py --models gpt,resnet   # the two rows of the first check
    python benchmarks/gpu_models.py --allow-cpu --smoke   # tiny configs on the CPU, 30-60 s
Options: --models MODELS --gpt-batch 16 --gpt-medium-batch 8 --resnet-batch 256 --attention auto
         --windows 3 --window-seconds 2 --warmup 3 --min-steps 5 --json OUT --allow-cpu --smoke
         --verbose

--models is a comma-separated list of rows, each `gpt`, `gpt_medium` or `resnet`, a GPT's
optionally followed by `:scan` (scan_layers=True: one block compiled and scanned over the layers)
and/or `:POLICY`, a remat policy of jaxdl.nn.remat.REMAT_POLICIES (none, full, dots_saveable,
dots_with_no_batch_dims_saveable; default none). The default,
    gpt:scan:full,gpt_medium:scan:full,gpt:scan,gpt,gpt_medium:scan,resnet
runs the remat rows first because a device's peak memory can only be read as "the most so far"
(see "Memory" below); --smoke's default is gpt,gpt_medium:scan:full,resnet, which runs every code
path at tiny sizes. Time on an H100 (estimated, not yet measured): ~20-30 s to compile each
scanned GPT, ~40-60 s for GPT-2 small unrolled and ResNet-50, ~10-15 s to time each row, ~10 s to
start: 5-6 minutes for the default, inside gpu_check.sh's 470 s limit; a run past the limit is
stopped and tables the rows that finished.

What it measures, each row on the first device of `jax.devices()`:
  1. GPT-2 small: jaxdl.nn.GPT(num_layers=12, num_heads=12, embed_dim=768, block_size=1024,
     vocab_size=50304), GPT-2's 50257 tokens padded to a multiple of 64 as nanoGPT does (the
     tokens drawn stay below 50257), bias and tied LM head as GPT-2, no dropout. Parameters
     float32, compute bfloat16 (dtype=bfloat16), logits and loss float32. Attention "cudnn" (cuDNN
     flash attention) where it compiles, else "jax" (XLA's fused attention), else "plain"; the
     table says which ran and why the others did not. (jaxdl's GPT passes a boolean causal mask,
     which cuDNN receives as a [1, 1, T, T] bias, not as its causal mode.) One step:
     jaxdl.train.step.make_train_step
     (LanguageModelling task) with AdamW from jaxdl.train.optim.make_optimizer (nanoGPT's
     settings: lr 6e-4, betas 0.9/0.95, weight decay 0.1 on matrices, clip at global norm 1.0),
     jitted with the state donated, on random tokens int32 [--gpt-batch, 1025] (1024 predicted
     tokens per row).
     GPT-2 medium (`gpt_medium`): the same with 24 layers, 16 heads, width 1024 (355M
     parameters), batch --gpt-medium-batch (default 8, half GPT-2 small's rows: its activations
     without remat, 24 layers of width 1024, are then of the order of GPT-2 small's at 16).
     `:scan` and a remat policy are the model's scan_layers and remat fields; remat recomputes
     the blocks' activations in the backward pass, which XLA's FLOP count includes and the
     formula does not.
  2. ResNet-50: jaxdl.nn.ResNet(depth=50) (torchvision v1.5, 25.6M parameters), float32
     parameters, bfloat16 compute, BatchNorm statistics updated every step (float32); SGD with
     momentum 0.9 (lr 0.1, weight decay 1e-4) from make_optimizer; Classification task on random
     images float32 [--resnet-batch, 224, 224, 3] and labels in [0, 1000).
Each step is compiled once (the compile seconds include tracing and lowering), run --warmup times,
then timed in --windows windows of the same number of steps, each about --window-seconds long and
ended by block_until_ready on the state and metrics; the table gives the median window's time per
step. The last loss must be finite, or the row says so.

FLOPs and MFU, two ways for each model, both against jaxdl.perf's peak for the device kind (dense
bfloat16 datasheet figure: 989.5 TFLOP/s for an H100/H200 SXM; on CPU a measured matmul rate):
  * "XLA": jaxdl.perf.Efficiency.for_step, XLA's cost analysis of the compiled step. It counts
    everything XLA sees (elementwise work, the optimizer), but may count a custom call such as
    cuDNN's attention kernel as zero, so on GPU it can be below the formula. It counts a while
    loop's body once, so a scanned GPT's figure is a lower bound (the table says so); it does
    count remat's recomputation, which the formula does not.
  * "formula": the model's matmul FLOPs by the usual closed form.
      GPT (nanoGPT's estimate_mfu, from the PaLM paper's appendix B): 6 N + 12 L H Q T per token,
      N = parameters less the position embeddings (nanoGPT's count: 123.69M here), L layers,
      H heads, Q head size, T context; causal attention is counted as if it were full, as there.
      ResNet: 3 x (2 x the multiply-adds of every convolution and dense layer in the forward
      pass), counted from the traced model (`matmul_macs`): 4.09 GMACs per 224x224 image for
      ResNet-50, torchvision's figure.
  The project's goal for GPT-2 small is a formula MFU of at least 45%.

Published reference for ResNet-50 (google/flax examples/imagenet/README.md, "Example runs" table,
with configs/v100_x8_mixed_precision.py): 8 x V100, mixed precision, batch 2048, 62,500 steps in
4.3 h wall time, i.e. 62,500 x 2048 / 15,480 s = 8,269 images/s, 1,034 images/s per V100; the full
precision run (v100_x8, batch 512, 250,200 steps in 13.2 h) is 337 images/s per V100. Those
wall times include the input pipeline and the evaluations, so they understate the step alone. The
same README gives TPU v3-8 4.4 h for 125,100 steps. It has no figure for an A100, H100 or H200,
and none was found in the other sources searched (the Flax and Haiku example READMEs).

Memory, per row, on the device: from XLA's memory analysis of the compiled step
(compiled.memory_analysis()), its arguments (the train state and the batch) and its temporaries
(activations, gradients and the optimizer's intermediates; the new state is written into the
donated old one); and the device's own peak_bytes_in_use (device.memory_stats(); n/a where the
backend gives none, as on CPU). That peak is the process's so far and cannot be reset: each row
frees its arrays before the next, and its cell is the peak after it when the row raised it, or
"<=" the earlier peak when it did not.

Exit status: 0 when every model ran (whatever the numbers), 1 when one failed, 2 when there is no
GPU and --allow-cpu was not given.
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdl import nn as nn_lib
from jaxdl import perf
from jaxdl.nn.remat import REMAT_POLICIES
from jaxdl.train import optim, tasks
from jaxdl.train import step as step_lib

GPT2_VOCAB = 50257  # GPT-2's BPE vocabulary; the model's is padded up to PADDED_VOCAB.
PADDED_VOCAB = 50304  # nanoGPT: "pad up to nearest multiple of 64 for efficiency".
GPT_TARGET_MFU = 0.45  # The project's goal for GPT-2 small (formula MFU, bfloat16).

# The Flax ImageNet example's fastest GPU run (see the module docstring): images/s per V100.
FLAX_RESNET50_REFERENCE = dict(
  images_per_sec_per_gpu=62_500 * 2048 / (4.3 * 3600) / 8,
  text=(
    "Flax examples/imagenet README: 8xV100 mixed precision, batch 2048, 62,500 steps in "
    "4.3 h = 1,034 img/s per V100 (wall time incl. input and eval)"
  ),
)

# make_optimizer reads a Mapping with jaxdl.config.base_config()'s optimizer keys. They are
# written out here because jaxdl.config imports ml_collections and Grain, which a GPU image may
# lack; tests/test_gpu_check.py keeps the keys equal to base_config()'s.
OPTIMIZER_DEFAULTS: dict[str, Any] = dict(
  name="adam",
  learning_rate=1e-3,
  schedule="constant",
  warmup_steps=0,
  decay_steps=0,
  end_learning_rate=0.0,
  decay_boundaries=[0.5, 0.75],
  decay_factor=0.1,
  b1=0.9,
  b2=0.999,
  eps=1e-8,
  weight_decay=0.0,
  weight_decay_mask="matrices",
  momentum=0.0,
  nesterov=False,
  grad_clip_norm=0.0,
  freeze=[],
  lr_multipliers=[],
  no_weight_decay=[],
)
GPT_OPTIMIZER = dict(
  OPTIMIZER_DEFAULTS,
  name="adamw",
  learning_rate=6e-4,
  b2=0.95,
  weight_decay=0.1,
  grad_clip_norm=1.0,
)
RESNET_OPTIMIZER = dict(
  OPTIMIZER_DEFAULTS, name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-4
)


@dataclasses.dataclass(frozen=True)
class GptConfig:
  num_layers: int = 12
  num_heads: int = 12
  embed_dim: int = 768
  block_size: int = 1024
  vocab_size: int = PADDED_VOCAB
  token_range: int = GPT2_VOCAB  # Tokens are drawn from [0, token_range).
  remat: str = "none"  # A policy of jaxdl.nn.remat.REMAT_POLICIES.
  scan_layers: bool = False

  def describe(self) -> str:
    return (
      f"L={self.num_layers} H={self.num_heads} D={self.embed_dim} T={self.block_size} "
      f"V={self.vocab_size}"
    )

  @property
  def layers(self) -> str:
    return "scan" if self.scan_layers else "unrolled"


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  depth: int = 50
  width: int = 64
  image_size: int = 224
  num_classes: int = 1000

  def describe(self) -> str:
    width = "" if self.width == 64 else f" width={self.width}"
    return f"ResNet-{self.depth}{width} {self.image_size}x{self.image_size}x3"


GPT2_MEDIUM = GptConfig(num_layers=24, num_heads=16, embed_dim=1024)
SMOKE_GPT = GptConfig(
  num_layers=2, num_heads=2, embed_dim=64, block_size=32, vocab_size=256, token_range=256
)
SMOKE_GPT_MEDIUM = dataclasses.replace(SMOKE_GPT, num_layers=4, num_heads=4)
# --models name -> (row title, config, smoke title, smoke config).
GPT_MODELS = {
  "gpt": ("GPT-2 small", GptConfig(), "GPT (smoke)", SMOKE_GPT),
  "gpt_medium": ("GPT-2 medium", GPT2_MEDIUM, "GPT medium (smoke)", SMOKE_GPT_MEDIUM),
}
MODELS = (*GPT_MODELS, "resnet")
DEFAULT_MODELS = "gpt:scan:full,gpt_medium:scan:full,gpt:scan,gpt,gpt_medium:scan,resnet"
SMOKE_MODELS = "gpt,gpt_medium:scan:full,resnet"
# ResNet-18: ResNet-50's bottlenecks take over 30 s to compile on 2 CPU cores.
SMOKE_RESNET = ResNetConfig(depth=18, width=8, image_size=32, num_classes=10)


# ---------------------------------------------------------------- FLOP formulas


def count_params(params: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def gpt_flops_per_token(config: GptConfig, non_embedding_params: int) -> float:
  """nanoGPT's estimate_mfu (PaLM, appendix B): 6 N + 12 L H Q T FLOPs per trained token."""
  head_dim = config.embed_dim // config.num_heads
  return (
    6 * non_embedding_params
    + 12 * config.num_layers * config.num_heads * head_dim * config.block_size
  )


def gpt_non_embedding_params(params: Any, config: GptConfig) -> int:
  """All parameters less the position embeddings, as nanoGPT's get_num_params(): the token
  embedding stays in, because the tied LM head multiplies by it."""
  return count_params(params) - config.block_size * config.embed_dim


def matmul_macs(model: nn.Module, *inputs: Any, **kwargs: Any) -> int:
  """Multiply-adds of every nn.Conv and nn.Dense in one forward pass of `model` on `inputs`
  (arrays or jax.ShapeDtypeStruct; `kwargs` go to the model, e.g. train=False).

  Traced with jax.eval_shape, so nothing is computed. A convolution's count is output elements x
  kernel area x input channels per group; a dense layer's is output elements x input features.
  """
  macs = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
      x = args[0]
      if isinstance(module, nn.Conv):
        per_output = math.prod(module.kernel_size) * x.shape[-1] // module.feature_group_count
      else:
        per_output = x.shape[-1]
      macs.append(math.prod(out.shape) * per_output)
    return out

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda *xs: model.init(jax.random.key(0), *xs, **kwargs), *inputs)
  return sum(macs)


# ---------------------------------------------------------------- Steps


@dataclasses.dataclass
class Step:
  """A compiled train step with its state and batch, ready to time."""

  compiled: Any
  state: Any
  batch: dict[str, jax.Array]
  rng: jax.Array
  compile_seconds: float
  formula_flops: float  # Per step.
  items: int  # Tokens or images per step.
  notes: list[str]
  params: int = 0  # The model's parameter count.


def compile_step(model, tx, schedule, task, batch, formula_flops, items, notes) -> Step:
  inputs = task.model_inputs(jax.tree.map(lambda x: x[:1], batch))
  # Jitted (op by op, initialising ResNet-50 takes longer than compiling it), from an "rbg" key:
  # XLA compiles the default threefry generator for every parameter into long straight-line code,
  # 30 s for a ResNet-18 on 2 CPU cores against 7 s with rbg. Initial values do not change the
  # step's speed.
  state = jax.jit(lambda key: step_lib.create_train_state(model, tx, key, *inputs))(
    jax.random.key(1, impl="rbg")
  )
  train_step = jax.jit(step_lib.make_train_step(model, tx, schedule, task), donate_argnums=0)
  rng = jax.random.key(2)
  start = time.perf_counter()
  compiled = train_step.lower(state, batch, rng).compile()
  seconds = time.perf_counter() - start
  params = count_params(state.params)
  return Step(compiled, state, batch, rng, seconds, formula_flops, items, notes, params)


def gpt_model(config: GptConfig, attention_impl: str) -> nn.Module:
  """jaxdl's GPT of `config`: float32 parameters, bfloat16 compute, GPT-2's bias and tied head."""
  return nn_lib.GPT(
    vocab_size=config.vocab_size,
    block_size=config.block_size,
    num_layers=config.num_layers,
    num_heads=config.num_heads,
    embed_dim=config.embed_dim,
    dtype=jnp.bfloat16,
    param_dtype=jnp.float32,
    attention_impl=attention_impl,
    remat=config.remat,
    scan_layers=config.scan_layers,
  )


def gpt_optimizer() -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with nanoGPT's settings (GPT_OPTIMIZER), through jaxdl's make_optimizer."""
  return optim.make_optimizer(GPT_OPTIMIZER, total_steps=10_000)


def gpt_step(config: GptConfig, batch_size: int, attention_impl: str) -> Step:
  model = gpt_model(config, attention_impl)
  tx, schedule = gpt_optimizer()
  tokens = jax.random.randint(
    jax.random.key(0), (batch_size, config.block_size + 1), 0, config.token_range, jnp.int32
  )
  params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens[:1, :-1]))["params"]
  n = gpt_non_embedding_params(params_shape, config)
  items = batch_size * config.block_size
  notes = [
    f"N={n / 1e6:.2f}M non-embedding params; formula 6N+12LHQT = "
    f"{gpt_flops_per_token(config, n) / 1e9:.3f} GFLOP/token"
  ]
  return compile_step(
    model,
    tx,
    schedule,
    tasks.LanguageModelling(),
    {"tokens": tokens},
    gpt_flops_per_token(config, n) * items,
    items,
    notes,
  )


def resnet_step(config: ResNetConfig, batch_size: int) -> Step:
  model = nn_lib.ResNet(
    depth=config.depth,
    width=config.width,
    num_classes=config.num_classes,
    dtype=jnp.bfloat16,
    param_dtype=jnp.float32,
  )
  tx, schedule = optim.make_optimizer(RESNET_OPTIMIZER, total_steps=10_000)
  key_x, key_y = jax.random.split(jax.random.key(0))
  shape = (batch_size, config.image_size, config.image_size, 3)
  batch = {
    "image": jax.random.normal(key_x, shape, jnp.float32),
    "label": jax.random.randint(key_y, (batch_size,), 0, config.num_classes, jnp.int32),
  }
  macs = matmul_macs(model, jax.ShapeDtypeStruct((1, *shape[1:]), jnp.float32), train=False)
  notes = [f"{macs / 1e9:.3f} GMACs per image forward (conv + dense); formula = 6 x MACs"]
  return compile_step(
    model, tx, schedule, tasks.Classification(), batch, 6.0 * macs * batch_size, batch_size, notes
  )


def attention_candidates(choice: str) -> list[str]:
  """Implementations to try in order. On a CPU "cudnn" fails at once (jaxdl refuses it while
  tracing), which exercises the fallback in the CPU smoke run at no cost."""
  return ["cudnn", "jax", "plain"] if choice == "auto" else [choice]


def first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:160] if text else ''}"


# ---------------------------------------------------------------- Timing


@dataclasses.dataclass
class Timing:
  window_seconds_per_step: list[float]
  steps_per_window: int
  last_loss: float

  @property
  def seconds_per_step(self) -> float:
    return statistics.median(self.window_seconds_per_step)


def time_step(
  step: Step, warmup: int, windows: int, window_seconds: float, min_steps: int
) -> Timing:
  """Runs the step (state threaded through, as in training) and times `windows` windows."""
  state, metrics = step.compiled(step.state, step.batch, step.rng)
  jax.block_until_ready((state, metrics))
  start = time.perf_counter()
  for _ in range(warmup):
    state, metrics = step.compiled(state, step.batch, step.rng)
  jax.block_until_ready((state, metrics))
  per_step = (time.perf_counter() - start) / max(warmup, 1)
  steps = max(min_steps, math.ceil(window_seconds / max(per_step, 1e-6)))
  seconds = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step.compiled(state, step.batch, step.rng)
    jax.block_until_ready((state, metrics))
    seconds.append((time.perf_counter() - start) / steps)
  step.state = state  # The old state was donated; keep the live one.
  return Timing(seconds, steps, float(metrics["train/loss"]))


# ---------------------------------------------------------------- Results


@dataclasses.dataclass
class Result:
  model: str
  config: str
  batch: int
  unit: str  # "tokens" or "images"
  layers: str = "-"  # A GPT's "scan" or "unrolled".
  remat: str = "-"  # A GPT's remat policy.
  params: int = 0  # The model's parameter count.
  ok: bool = False
  error: str = ""
  attention: str = ""
  compile_seconds: float = math.nan
  step_ms: float = math.nan
  window_ms: list[float] = dataclasses.field(default_factory=list)
  steps_per_window: int = 0
  items_per_sec: float = math.nan
  last_loss: float = math.nan
  xla_flops_per_step: float | None = None
  xla_flops_lower_bound: bool = False
  formula_flops_per_step: float = math.nan
  tflops_xla: float = math.nan
  tflops_formula: float = math.nan
  mfu_xla: float = math.nan
  mfu_formula: float = math.nan
  peak_tflops: float = math.nan
  peak_source: str = ""
  # XLA's memory analysis of the compiled step, per device (None where the backend has none).
  xla_argument_bytes: int | None = None
  xla_output_bytes: int | None = None
  xla_alias_bytes: int | None = None
  xla_temp_bytes: int | None = None
  # The device's peak_bytes_in_use after the row (GPU only): the row's own when it raised the
  # process's peak (peak_memory_own), else only an upper bound of the row's.
  peak_memory_gb: float = math.nan
  peak_memory_own: bool = False
  reference: str = ""
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def label(self) -> str:
    """The model, and its layers and remat where they are not the plain ones."""
    extra = ["scan"] * (self.layers == "scan") + [f"remat={self.remat}"] * (
      self.remat not in ("-", "none")
    )
    return ", ".join([self.model, *extra])


def memory_analysis(compiled) -> Any:
  """XLA's memory analysis of `compiled`, or None where the backend gives none."""
  try:
    return compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Backends without it raise various errors.
    return None


def peak_bytes(device) -> int | None:
  """The device's peak bytes in use so far in this process; None where it does not say (CPU)."""
  return (device.memory_stats() or {}).get("peak_bytes_in_use")


def measure(result: Result, build: Callable[[], Step], args, device) -> Result:
  peak_before = peak_bytes(device)
  step = build()
  result.compile_seconds = step.compile_seconds
  result.params = step.params
  result.notes += step.notes
  stats = memory_analysis(step.compiled)
  if stats is not None:
    result.xla_argument_bytes = stats.argument_size_in_bytes
    result.xla_output_bytes = stats.output_size_in_bytes
    result.xla_alias_bytes = stats.alias_size_in_bytes
    result.xla_temp_bytes = stats.temp_size_in_bytes
  efficiency = perf.Efficiency.for_step(step.compiled, [device], "bfloat16")
  timing = time_step(step, args.warmup, args.windows, args.window_seconds, args.min_steps)
  seconds = timing.seconds_per_step
  result.window_ms = [s * 1e3 for s in timing.window_seconds_per_step]
  result.steps_per_window = timing.steps_per_window
  result.step_ms = seconds * 1e3
  result.items_per_sec = step.items / seconds
  result.last_loss = timing.last_loss
  result.xla_flops_per_step = efficiency.flops_per_step
  result.xla_flops_lower_bound = efficiency.lower_bound
  result.formula_flops_per_step = step.formula_flops
  result.peak_source = efficiency.peak_source
  if efficiency.peak_flops_per_sec:
    result.peak_tflops = efficiency.peak_flops_per_sec / 1e12
  xla = efficiency.metrics(seconds)
  formula = perf.efficiency_metrics(step.formula_flops, seconds, efficiency.peak_flops_per_sec)
  result.tflops_xla = xla.get("perf/tflops_per_sec", math.nan)
  result.mfu_xla = xla.get("perf/mfu", math.nan)
  result.tflops_formula = formula.get("perf/tflops_per_sec", math.nan)
  result.mfu_formula = formula.get("perf/mfu", math.nan)
  peak_after = peak_bytes(device)
  if peak_after is not None:
    result.peak_memory_gb = peak_after / 2**30
    result.peak_memory_own = peak_before is None or peak_after > peak_before
  result.ok = math.isfinite(timing.last_loss)
  if not result.ok:
    result.error = f"the loss after {timing.steps_per_window * args.windows} steps is not finite"
  return result


def run_gpt(args, device, row: "Row") -> Result:
  title, config, smoke_title, smoke_config = GPT_MODELS[row.model]
  if args.smoke:
    title, config = smoke_title, smoke_config
  config = dataclasses.replace(config, remat=row.remat, scan_layers=row.scan)
  batch = args.gpt_medium_batch if row.model == "gpt_medium" else args.gpt_batch
  new_result = lambda: Result(
    title, config.describe(), batch, "tokens", layers=config.layers, remat=config.remat
  )
  failures = []
  for impl in attention_candidates(args.attention):
    result = new_result()  # Nothing of a failed attempt carries over.
    try:
      measure(result, lambda: gpt_step(config, batch, impl), args, device)
    except Exception as e:  # pylint: disable=broad-except  # cuDNN refusals come in many types.
      failures.append(f"attention_impl={impl!r} failed: {first_line(e)}")
      print(f"  {failures[-1]}", flush=True)
      if args.verbose:
        traceback.print_exc()
      continue
    result.attention = impl
    break
  else:
    result = new_result()
    result.error = "; ".join(failures)
  result.notes = failures + result.notes
  if args.smoke:
    result.reference = "n/a (smoke config)"
  elif row.model == "gpt":
    target = "met" if result.mfu_formula >= GPT_TARGET_MFU else "NOT met"
    result.reference = f"target formula MFU >= {GPT_TARGET_MFU:.0%}: {target}"
  else:
    result.reference = "no target"
  return result


def run_resnet(args, device, row: "Row") -> Result:
  del row  # ResNet rows have no options.
  config = SMOKE_RESNET if args.smoke else ResNetConfig()
  result = Result(
    "ResNet-50" if not args.smoke else "ResNet (smoke)",
    config.describe(),
    args.resnet_batch,
    "images",
  )
  try:
    measure(result, lambda: resnet_step(config, args.resnet_batch), args, device)
  except Exception as e:  # pylint: disable=broad-except  # Reported in the table, not raised.
    result.error = first_line(e)
    print(f"  ResNet failed: {result.error}", flush=True)
    traceback.print_exc()
  ref = FLAX_RESNET50_REFERENCE
  ratio = fmt(result.items_per_sec / ref["images_per_sec_per_gpu"], ".2f")
  result.reference = (
    "n/a (smoke config)"
    if args.smoke
    else (
      f"{ratio}x of {ref['images_per_sec_per_gpu']:,.0f} img/s per V100 "
      "(Flax ImageNet example, 8xV100 fp16)"
    )
  )
  return result


def fmt(x: float | None, spec: str) -> str:
  return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def fmt_tflops(x: float) -> str:
  """One decimal on a GPU (hundreds of TFLOP/s), three significant digits on a CPU."""
  return fmt(x, ".1f" if abs(x) >= 10 else ".3g")


def fmt_gib(n: int | None) -> str:
  return fmt(None if n is None else n / 2**30, ".3g")


def peak_cell(r: Result) -> str:
  """The row's device peak in GiB; "<=" when the row did not raise the process's peak."""
  return fmt(r.peak_memory_gb, ".3g") if r.peak_memory_own else "<=" + fmt(r.peak_memory_gb, ".3g")


def markdown_table(results: list[Result]) -> str:
  header = (
    "| model | config | layers | remat | batch | attention | compile s | "
    "step ms (median of windows) | throughput | TFLOP/s XLA | MFU XLA | TFLOP/s formula | "
    "MFU formula | args GiB | temp GiB | peak GiB | reference |"
  )
  columns = header.count(" | ") + 1
  lines = [header, "|" + "---|" * columns]
  for r in results:
    first = f"| {r.model} | {r.config} | {r.layers} | {r.remat} | {r.batch} |"
    if not r.ok and not math.isfinite(r.step_ms):
      lines.append(f"{first} - | FAILED: {r.error} |" + " |" * (columns - 7))
      continue
    throughput = f"{fmt(r.items_per_sec, ',.0f')} {r.unit}/s"
    bound = " (lower bound)" if r.xla_flops_lower_bound else ""
    peak = "n/a" if not math.isfinite(r.peak_memory_gb) else peak_cell(r)
    lines.append(
      f"{first} {r.attention or '-'} | "
      f"{fmt(r.compile_seconds, '.1f')} | {fmt(r.step_ms, '.2f')} | {throughput} | "
      f"{fmt_tflops(r.tflops_xla)}{bound} | {fmt(r.mfu_xla, '.1%')} | "
      f"{fmt_tflops(r.tflops_formula)} | {fmt(r.mfu_formula, '.1%')} | "
      f"{fmt_gib(r.xla_argument_bytes)} | {fmt_gib(r.xla_temp_bytes)} | {peak} | {r.reference} |"
    )
  return "\n".join(lines)


def environment(device) -> dict[str, Any]:
  import jaxlib  # pylint: disable=g-import-not-at-top

  return {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "python": platform.python_version(),
    "platform": platform.platform(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "devices": [str(d) for d in jax.devices()],
    "device_kind": device.device_kind,
    "backend": jax.default_backend(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "cpu_count": os.cpu_count(),
  }


# ---------------------------------------------------------------- Driver


@dataclasses.dataclass(frozen=True)
class Row:
  """One entry of --models: `gpt_medium:scan:full` is Row("gpt_medium", scan=True, remat="full")."""

  model: str
  scan: bool = False
  remat: str = "none"

  def __str__(self) -> str:
    return ":".join([self.model] + ["scan"] * self.scan + [self.remat] * (self.remat != "none"))


def parse_rows(text: str) -> list[Row]:
  """--models' rows; a ValueError says what is wrong with which entry."""
  rows = []
  for entry in (e.strip() for e in text.split(",")):
    if not entry:
      continue
    model, *options = entry.split(":")
    if model not in MODELS:
      raise ValueError(
        f"unknown [{model!r}] in {entry!r}; give a comma-separated list of {', '.join(MODELS)}"
      )
    scan = "scan" in options
    remats = [o for o in options if o != "scan"]
    bad = [o for o in remats if o not in REMAT_POLICIES]
    if model not in GPT_MODELS and options:
      raise ValueError(f"{entry!r}: {model} takes no options (scan and remat are for GPTs)")
    if bad or len(remats) > 1 or options.count("scan") > 1:
      raise ValueError(
        f"{entry!r}: after the model come at most ':scan' and one remat policy of "
        f"{', '.join(REMAT_POLICIES)}, e.g. gpt_medium:scan:full"
      )
    rows.append(Row(model, scan, remats[0] if remats else "none"))
  if not rows:
    raise ValueError(f"no rows; give a comma-separated list of {', '.join(MODELS)}")
  return rows


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument(
    "--models",
    default=None,
    help=f"comma-separated rows, e.g. gpt,gpt:scan:full,gpt_medium:scan,resnet ({DEFAULT_MODELS})",
  )
  p.add_argument("--gpt-batch", type=int, default=None, help="GPT rows of 1024 tokens (16)")
  p.add_argument(
    "--gpt-medium-batch", type=int, default=None, help="GPT-2 medium rows of 1024 tokens (8)"
  )
  p.add_argument("--resnet-batch", type=int, default=None, help="ResNet-50 images (256)")
  p.add_argument(
    "--attention",
    default="auto",
    choices=["auto", "cudnn", "jax", "plain"],
    help="GPT attention_impl; auto: cudnn, else jax, else plain",
  )
  p.add_argument("--warmup", type=int, default=None, help="untimed steps after the first (3)")
  p.add_argument("--windows", type=int, default=3, help="timed windows; the median counts (3)")
  p.add_argument(
    "--window-seconds", type=float, default=None, help="about how long each window runs (2)"
  )
  p.add_argument("--min-steps", type=int, default=None, help="fewest steps per window (5)")
  p.add_argument(
    "--smoke",
    action="store_true",
    help="tiny configs (GPT 2x64 and 4x64, T=32, V=256; ResNet-18 width 8 at 32x32), batch 2",
  )
  p.add_argument("--allow-cpu", action="store_true", help="run even if JAX sees no GPU")
  p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
  p.add_argument("--verbose", action="store_true", help="tracebacks of attention fallbacks")
  args = p.parse_args(argv)
  defaults = (
    dict(
      models=SMOKE_MODELS,
      gpt_batch=2,
      gpt_medium_batch=2,
      resnet_batch=2,
      warmup=1,
      window_seconds=0.05,
      min_steps=2,
    )
    if args.smoke
    else dict(
      models=DEFAULT_MODELS,
      gpt_batch=16,
      gpt_medium_batch=8,
      resnet_batch=256,
      warmup=3,
      window_seconds=2.0,
      min_steps=5,
    )
  )
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  try:
    args.models = parse_rows(args.models)
  except ValueError as e:
    p.error(f"--models: {e}")
  batches = (args.gpt_batch, args.gpt_medium_batch, args.resnet_batch)
  if min(*batches, args.windows, args.min_steps) < 1:
    p.error(
      "--gpt-batch, --gpt-medium-batch, --resnet-batch, --windows and --min-steps must be at "
      "least 1"
    )
  if args.warmup < 0 or args.window_seconds <= 0:
    p.error("--warmup must be >= 0 and --window-seconds > 0")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  devices = jax.devices()
  print(f"jax.devices(): {devices}", flush=True)
  device = devices[0]
  if device.platform != "gpu" and not args.allow_cpu:
    print(
      f"ERROR: JAX sees no GPU (backend {jax.default_backend()!r}, devices {devices}). "
      "Install a CUDA build of JAX (e.g. pip install -U 'jax[cuda12]', or the image's "
      "jax-cuda13-plugin), check nvidia-smi, or pass --allow-cpu to measure the CPU.",
      file=sys.stderr,
    )
    return 2
  env = environment(device)
  print(
    f"jax {env['jax']} (jaxlib {env['jaxlib']}), flax {env['flax']}, optax {env['optax']}, "
    f"backend {env['backend']}, device kind {env['device_kind']!r}, "
    f"XLA_FLAGS={env['xla_flags']!r}",
    flush=True,
  )
  start = time.perf_counter()
  results = []
  for row in args.models:
    print(
      f"\n== {row}: compiling and timing ({time.perf_counter() - start:.0f} s so far)", flush=True
    )
    run = run_resnet if row.model == "resnet" else run_gpt
    try:
      result = run(args, device, row)
    except KeyboardInterrupt:  # gpu_check.sh's time limit: still print what finished.
      print(f"  interrupted during {row}", flush=True)
      results.append(Result(str(row), "-", 0, "-", error="interrupted (time limit)"))
      break
    results.append(result)
    print(
      f"  {result.model}: compile {fmt(result.compile_seconds, '.1f')} s, step "
      f"{fmt(result.step_ms, '.2f')} ms (windows: "
      f"{', '.join(fmt(w, '.2f') for w in result.window_ms)} ms x {result.steps_per_window}"
      f" steps), loss {fmt(result.last_loss, '.3f')}",
      flush=True,
    )

  total = time.perf_counter() - start
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(
        {
          "environment": env,
          "args": vars(args),
          "seconds": total,
          "results": [dataclasses.asdict(r) for r in results],
        },
        f,
        indent=1,
        default=str,
      )
    print(f"\nwrote {args.json}")

  # The notes, then the table: the table is the last thing printed.
  print()
  peak = next((r for r in results if r.peak_source), None)
  if peak:
    print(f"Peak: {fmt_tflops(peak.peak_tflops)} TFLOP/s bfloat16 ({peak.peak_source}).")
  print(
    "MFU XLA = FLOPs of the compiled step by XLA's cost analysis (jaxdl.perf.compiled_flops) "
    "/ step time / peak; custom calls such as cuDNN attention may count as zero."
  )
  print(
    "MFU formula = GPT: (6N + 12LHQT) x tokens (nanoGPT/PaLM); ResNet: 6 x conv+dense "
    "multiply-adds x images; / step time / peak. The GPT target applies to this one."
  )
  print(
    "args, temp = XLA's memory analysis of the compiled step (arguments: state and batch; "
    "temporaries); peak = the device's peak_bytes_in_use after the row, '<=' where the row did "
    "not raise the process's peak (n/a on CPU)."
  )
  for r in results:
    for note in r.notes:
      print(f"{r.label}: {note}")
  if any(r.model.startswith("ResNet") for r in results):
    print(f"ResNet reference: {FLAX_RESNET50_REFERENCE['text']}.")
  print(f"\n## jaxdl GPU check: {env['device_kind']}, jax {env['jax']}, {total:.0f} s\n")
  print(markdown_table(results))
  return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
