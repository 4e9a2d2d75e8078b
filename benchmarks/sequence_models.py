"""CPU throughput of jaxdl's sequence layers: LSTM scan vs unrolled, GPT's train step, attention.

Run (from the repository root):
    python benchmarks/sequence_models.py
Options: --rounds 3 --seconds 2 --unrolls 1,8,T --lstm-length 128 --quick --json OUT

What it measures, all in one process on the CPU, each variant compiled once and then timed in
`--rounds` rounds that alternate the variants of a comparison (a, b, a, b, ...) so that drifting
machine load hits them alike. Every timed call runs to block_until_ready; a variant makes as many
calls per round as fill about `--seconds` (at least 2), the same number every round.
  1. LSTM layer: jax.grad of sum(outputs) w.r.t. the params of
     jaxdl.nn.StackedRNN(cell_type="lstm", features=256, num_layers=1, unroll=u), jitted, on x
     [B=32, T=128, D=64], for each u in --unrolls: 1 (lax.scan one step per iteration, the default
     and the baseline), 8, and T (the scan fully unrolled by XLA: straight-line code, no loop).
     The same layers forward only (outputs [B, T, H], no gradient), to tell the two passes apart.
  2. GPT train step: one jaxdl.train.step.make_train_step step (LanguageModelling task, AdamW
     from jaxdl.train.optim.make_optimizer with base_config()'s optimizer and name="adamw"),
     jitted with the state donated, on GPT(vocab_size=65, block_size=64, num_layers=4,
     num_heads=4, embed_dim=128, use_bias=False), tokens int32 [12, 65] (12 x 64 predicted tokens).
     attention_impl "plain" (the baseline) vs "jax" (jax.nn.dot_product_attention).
  3. Attention: jaxdl.nn.dot_product_attention forward and backward (the VJP of a fixed random
     cotangent), causal mask, q/k/v [B=8, T=256, N=8, H=64] float32, implementation "plain" (the
     baseline) vs "jax".
Reported per variant: compile seconds (trace + lower + XLA compile, measured once), ms per call and
tokens/s (batch x time per call; medians over rounds), each round's ratio to the comparison's
baseline in that round and their median, and the max abs difference from the baseline's outputs
(gradients; the GPT's first-step loss), also relative to the largest output, as a check that the
variants compute the same thing. FLOPs come from XLA's cost analysis, only for programs without
loops: it counts a while loop's body once whatever the trip count, so it undercounts a scan. It
exits 0 whatever the numbers; nothing here is a test.

Noise: the figures come from a VM whose 2 cores are shared with other jobs; one run's throughput
can move by 10-20% from the next. Read the per-round ratios; trust differences of a few percent
only from more rounds (--rounds 7) on a quiet machine. Compile times are single measurements.

Runtime: 4-7 minutes on 2 x86 CPU cores (jax 0.10, defaults; the longer with other jobs on the
cores), of which 2-4 are XLA compiling the gradient of the fully unrolled LSTM (128 steps forward
and backward; XLA prints a "Very slow compile?" banner meanwhile). `--unrolls 1,8` takes about 2
minutes. `--quick` (1 round, 0.5 s per variant, T=16 for the LSTM) is a 35-75 s smoke run.
"""

import os

# Before jax is imported: these are CPU figures (JAX_PLATFORMS=... on the command line overrides).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import dataclasses
import datetime
import json
import math
from pathlib import Path
import platform
import statistics
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import jaxlib
import optax

from jaxdl import config as config_lib
from jaxdl import nn as nn_lib
from jaxdl import perf
from jaxdl.train import optim, tasks
from jaxdl.train import step as step_lib

MIN_CALLS = 2  # Timed calls per variant per round, however slow the variant.
LSTM_SHAPE = dict(batch=32, features_in=64, features=256)  # T is --lstm-length.
GPT_KWARGS = dict(
  vocab_size=65, block_size=64, num_layers=4, num_heads=4, embed_dim=128, use_bias=False
)
GPT_BATCH, GPT_TOKENS = 12, 64  # Batches of tokens [12, 65]: 64 predicted tokens per example.
ATTN_SHAPE = dict(batch=8, length=256, heads=8, head_dim=64)


# ---------------------------------------------------------------- Environment


def environment() -> dict:
  return {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "python": platform.python_version(),
    "platform": platform.platform(),
    "processor": platform.machine(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "devices": [str(d) for d in jax.devices()],
    "cpu_count": os.cpu_count(),
    "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "load_average": os.getloadavg(),
  }


def print_environment(env: dict) -> None:
  print(f"date      {env['date']}")
  print(f"python    {env['python']} on {env['platform']} ({env['processor']})")
  print(
    f"jax       {env['jax']} (jaxlib {env['jaxlib']}), flax {env['flax']}, optax {env['optax']}"
  )
  print(f"devices   {', '.join(env['devices'])}")
  print(f"cpus      {env['cpu_count']} ({env['cpus_usable']} usable by this process)")
  # Other processes share the cores; a high load average means noisy numbers.
  print(f"load avg  {' '.join(f'{x:.2f}' for x in env['load_average'])} (1, 5, 15 min)")
  print()


# ---------------------------------------------------------------- Variants


@dataclasses.dataclass
class Variant:
  """One compiled program and how to call it.

  `call()` runs it once and returns what to block on; `reference` is what its first call computed
  (compared with the baseline's); `flops` is XLA's count per call, None where it would be wrong.
  """

  name: str
  tokens: int  # Tokens (batch x time) per call.
  call: Callable[[], Any]
  compile_seconds: float
  flops: float | None
  reference: Any = None


def compile_timed(jitted, *args):
  """(compiled, seconds): trace, lower and XLA-compile `jitted` for `args`."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def lstm_variant(unroll: int, length: int, backward: bool = True) -> Variant:
  """jax.grad of sum(outputs) w.r.t. the params (backward=True), or just the outputs [B, T, H]."""
  b, d, h = LSTM_SHAPE["batch"], LSTM_SHAPE["features_in"], LSTM_SHAPE["features"]
  x_BTD = jax.random.normal(jax.random.key(0), (b, length, d), jnp.float32)
  model = nn_lib.StackedRNN(features=h, cell_type="lstm", num_layers=1, unroll=unroll)
  params = model.init(jax.random.key(1), x_BTD)["params"]  # Same key: same params for every unroll.
  if backward and unroll >= 32:
    # Compile time grows faster than linearly in the unrolled steps: 128 take minutes on 2 cores.
    print(
      f"compiling the LSTM's gradient with unroll={unroll}: this takes a while (XLA may warn "
      "of a 'Very slow compile'; expected)",
      flush=True,
    )

  def forward(params, x_BTD):
    y_BTH, _ = model.apply({"params": params}, x_BTD)
    return y_BTH

  fn = jax.grad(lambda params, x_BTD: jnp.sum(forward(params, x_BTD))) if backward else forward
  compiled, seconds = compile_timed(jax.jit(fn), params, x_BTD)
  if unroll >= length:
    name = f"unroll={length} (full)"
  else:
    name = "scan (unroll=1)" if unroll == 1 else f"unroll={unroll}"
  # Only the fully unrolled program is loop-free, so only its FLOP count is complete.
  return Variant(
    name,
    b * length,
    lambda: compiled(params, x_BTD),
    seconds,
    perf.compiled_flops(compiled) if unroll >= length else None,
  )


def gpt_variant(attention_impl: str) -> Variant:
  config = config_lib.base_config()
  config.optimizer.name = "adamw"
  # The schedule is constant by default, so total_steps does not matter.
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps=10_000)
  model = nn_lib.GPT(**GPT_KWARGS, attention_impl=attention_impl)
  task = tasks.LanguageModelling()
  batch = {
    "tokens": jax.random.randint(
      jax.random.key(0), (GPT_BATCH, GPT_TOKENS + 1), 0, GPT_KWARGS["vocab_size"], jnp.int32
    )
  }
  state = step_lib.create_train_state(model, tx, jax.random.key(1), *task.model_inputs(batch))
  rng = jax.random.key(2)
  train_step = jax.jit(step_lib.make_train_step(model, tx, schedule, task), donate_argnums=0)
  compiled, seconds = compile_timed(train_step, state, batch, rng)
  holder = {"state": state}  # The donated state threads from call to call, as in a training loop.

  def call():
    holder["state"], metrics = compiled(holder["state"], batch, rng)
    return metrics["train/loss"]

  return Variant(
    f"attention_impl={attention_impl!r}",
    GPT_BATCH * GPT_TOKENS,
    call,
    seconds,
    perf.compiled_flops(compiled),
  )


def attention_variant(implementation: str) -> Variant:
  b, t, n, h = (ATTN_SHAPE[k] for k in ("batch", "length", "heads", "head_dim"))
  q_BTNH, k_BTNH, v_BTNH, cotangent_BTNH = (
    jax.random.normal(key, (b, t, n, h), jnp.float32)
    for key in jax.random.split(jax.random.key(0), 4)
  )
  mask = nn_lib.causal_mask(t)

  def forward_backward(q_BTNH, k_BTNH, v_BTNH):
    attend = lambda q, k, v: nn_lib.dot_product_attention(
      q, k, v, mask=mask, implementation=implementation
    )
    out_BTNH, vjp = jax.vjp(attend, q_BTNH, k_BTNH, v_BTNH)
    return out_BTNH, vjp(cotangent_BTNH)

  compiled, seconds = compile_timed(jax.jit(forward_backward), q_BTNH, k_BTNH, v_BTNH)
  return Variant(
    f"implementation={implementation!r}",
    b * t,
    lambda: compiled(q_BTNH, k_BTNH, v_BTNH),
    seconds,
    perf.compiled_flops(compiled),
  )


def max_abs_diff(a, b) -> float:
  diffs = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)
  return max(jax.tree.leaves(diffs))


def max_abs(a) -> float:
  return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a))


# ---------------------------------------------------------------- Driver


def parse_unrolls(text: str, length: int) -> list[int]:
  unrolls = []
  for item in text.split(","):
    item = item.strip()
    value = length if item.upper() in ("T", "FULL") else int(item)
    if value < 1:
      raise ValueError(f"--unrolls: {item!r} is not a positive number of steps (or T).")
    unrolls.append(min(value, length))
  return list(dict.fromkeys(unrolls))  # Without repeats, first one (the baseline) first.


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
  p.add_argument(
    "--seconds", type=float, default=None, help="timed seconds per variant per round (default 2)"
  )
  p.add_argument(
    "--unrolls",
    default="1,8,T",
    help="LSTM scan unroll factors, the first is the baseline; T = fully unrolled",
  )
  p.add_argument("--lstm-length", type=int, default=None, help="LSTM sequence length T (128)")
  p.add_argument(
    "--quick",
    action="store_true",
    help="smoke run: 1 round, 0.5 s per variant, T=16 (explicit options win)",
  )
  p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
  args = p.parse_args(argv)
  defaults = (
    dict(rounds=1, seconds=0.5, lstm_length=16)
    if args.quick
    else dict(rounds=3, seconds=2.0, lstm_length=128)
  )
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.rounds < 1 or args.seconds <= 0 or args.lstm_length < 1:
    p.error("--rounds, --seconds and --lstm-length must be positive")
  try:
    args.unrolls = parse_unrolls(args.unrolls, args.lstm_length)
  except ValueError as e:
    p.error(str(e))
  return args


def build(args) -> dict[str, list[Variant]]:
  """{comparison: [baseline, other variants]}, each compiled and called once (the warmup)."""
  builders = {
    f"LSTM fwd+bwd, T={args.lstm_length}": [
      (lambda u=u: lstm_variant(u, args.lstm_length)) for u in args.unrolls
    ],
    f"LSTM fwd only, T={args.lstm_length}": [
      (lambda u=u: lstm_variant(u, args.lstm_length, backward=False)) for u in args.unrolls
    ],
    "GPT train step": [lambda: gpt_variant("plain"), lambda: gpt_variant("jax")],
    "attention fwd+bwd": [lambda: attention_variant("plain"), lambda: attention_variant("jax")],
  }
  comparisons = {}
  for comparison, makers in builders.items():
    variants = []
    for make in makers:
      variant = make()
      variant.reference = jax.block_until_ready(variant.call())  # Warmup: the first run.
      print(
        f"compiled  {comparison:22s} {variant.name:24s} {variant.compile_seconds:7.1f} s",
        flush=True,
      )
      variants.append(variant)
    comparisons[comparison] = variants
  return comparisons


def calls_per_round(variant: Variant, seconds: float) -> int:
  start = time.perf_counter()
  jax.block_until_ready(variant.call())
  return max(MIN_CALLS, math.ceil(seconds / (time.perf_counter() - start)))


def timed(variant: Variant, calls: int) -> float:
  """Tokens/s over `calls` calls, each run to completion before the next is dispatched."""
  start = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(variant.call())
  return variant.tokens * calls / (time.perf_counter() - start)


def run_rounds(comparisons: dict[str, list[Variant]], args) -> tuple[dict, dict]:
  """(calls per variant, {comparison: {variant: [tokens/s per round]}}), alternating variants.

  Round r starts with variant r (mod their number), so that none always runs first after another
  comparison, and a load change halfway through a comparison does not always hit the same variant.
  """
  calls = {
    c: {v.name: calls_per_round(v, args.seconds) for v in vs} for c, vs in comparisons.items()
  }
  results = {c: {v.name: [] for v in vs} for c, vs in comparisons.items()}
  for r in range(1, args.rounds + 1):
    for comparison, variants in comparisons.items():
      first = (r - 1) % len(variants)
      for v in variants[first:] + variants[:first]:
        results[comparison][v.name].append(timed(v, calls[comparison][v.name]))
      line = [f"{v.name} {results[comparison][v.name][-1]:8.0f}" for v in variants]
      print(
        f"round {r}  {comparison:22s} tokens/s: {'  '.join(line)}  load {os.getloadavg()[0]:.2f}",
        flush=True,
      )
  return calls, results


def summarize(comparisons, calls, results) -> list[dict]:
  rows = []
  for comparison, variants in comparisons.items():
    base = variants[0]
    base_tps = results[comparison][base.name]
    for v in variants:
      tps = results[comparison][v.name]
      median = statistics.median(tps)
      # Each round's own ratio: their scatter shows how far the machine's noise reaches.
      round_ratios = [a / b for a, b in zip(tps, base_tps)]
      rows.append(
        {
          "comparison": comparison,
          "variant": v.name,
          "baseline": v is base,
          "calls_per_round": calls[comparison][v.name],
          "compile_seconds": v.compile_seconds,
          "ms_per_call": 1e3 * v.tokens / median,
          "tokens_per_sec": median,
          # The median of the paired ratios, not the ratio of the medians: each pair ran back to
          # back under the same load, while the two medians may come from different rounds.
          "ratio": statistics.median(round_ratios),
          "round_ratios": round_ratios,
          "max_abs_diff": max_abs_diff(v.reference, base.reference),
          # The same over the largest |value| in the baseline's outputs: rounding, or a bug?
          "relative_diff": max_abs_diff(v.reference, base.reference)
          / max(max_abs(base.reference), 1e-30),
          "gflop_per_call": None if v.flops is None else v.flops / 1e9,
          "gflop_per_sec": None if v.flops is None else v.flops * median / v.tokens / 1e9,
        }
      )
  return rows


def print_table(rows: list[dict], rounds: int) -> None:
  print(
    f"\nmedians over {rounds} round(s); ratio = median over rounds of tokens/s over the "
    "comparison's first variant in the same round;\ndiff = max |output - first variant's "
    "output|, rel = diff / max |first variant's output|"
  )
  header = (
    f"{'comparison':22s}  {'variant':24s}  {'compile s':>9}  {'ms/call':>8}  "
    f"{'tokens/s':>8}  {'ratio':>5}  {'GFLOP/call':>10}  {'GFLOP/s':>7}  {'diff':>7}  "
    f"{'rel':>7}  per-round ratios"
  )
  print(header)
  previous = None
  for row in rows:
    flops = "-" if row["gflop_per_call"] is None else f"{row['gflop_per_call']:.2f}"
    rate = "-" if row["gflop_per_sec"] is None else f"{row['gflop_per_sec']:.1f}"
    name = "" if row["comparison"] == previous else row["comparison"]
    previous = row["comparison"]
    print(
      f"{name:22s}  {row['variant']:24s}  {row['compile_seconds']:9.1f}  "
      f"{row['ms_per_call']:8.1f}  {row['tokens_per_sec']:8.0f}  {row['ratio']:5.2f}  "
      f"{flops:>10}  {rate:>7}  {row['max_abs_diff']:7.1e}  {row['relative_diff']:7.1e}  "
      f"{' '.join(f'{r:.2f}' for r in row['round_ratios'])}"
    )
  print("GFLOP: XLA's cost analysis, for loop-free programs only (it counts a scan's body once).")


def main(argv=None) -> int:
  args = parse_args(argv)
  env = environment()
  print_environment(env)
  start = time.perf_counter()
  comparisons = build(args)
  calls, results = run_rounds(comparisons, args)
  rows = summarize(comparisons, calls, results)
  print_table(rows, args.rounds)
  total = time.perf_counter() - start
  print(f"\ntotal {total:.0f} s; load avg at the end {os.getloadavg()[0]:.2f}")
  if args.json:
    settings = {
      "rounds": args.rounds,
      "seconds": args.seconds,
      "unrolls": args.unrolls,
      "lstm_length": args.lstm_length,
      "quick": args.quick,
      "lstm": LSTM_SHAPE,
      "gpt": {**GPT_KWARGS, "batch": GPT_BATCH, "tokens": GPT_TOKENS},
      "attention": ATTN_SHAPE,
    }
    report = {
      "environment": env,
      "settings": settings,
      "summary": rows,
      "runs": results,
      "total_seconds": total,
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
