"""Training throughput of the seed MNIST CNN: jaxdl's training loop vs a plain Flax + Optax loop.

Run (from the repository root, offline, on the MNIST subset shipped with jaxdl):
    python benchmarks/throughput_mnist_cnn.py
Options: --rounds 3 --batch-sizes 64,256 --steps 100,40 --data-dir DIR --json OUT --check

What it measures, per batch size, alternating jaxdl and plain runs (a, b, a, b, ...) `--rounds`
times so that drifting machine load hits both alike:
  (a) jaxdl: `jaxdl.trainer.train` on experiments/mnist_cnn.py (Adam 1e-3) with train.batch_size=B,
      for warmup + `--steps` steps, logging every `steps/4` steps. Throughput is B over the mean of
      `perf/step_time_ms` of the logged intervals after the first (the first holds
      compilation). Eval and the checkpoint happen only at the last step, after the last interval
      is timed; the wall time of the whole train() call is reported apart, for context.
  (b) plain: the loop one writes by hand: same model (jaxdl.nn.MnistCNN), optax.adam(1e-3), a
      jitted step donating the state, numpy batches from the same in-memory arrays (a fresh
      permutation per epoch, scaled to float32 on the host, then jax.device_put), warmed up for
      the same number of steps, then `--steps` steps timed up to block_until_ready.
It prints the medians over rounds and jaxdl/plain per batch size, PASS if that ratio is at least
0.97 (jaxdl's loop costs no more than the plain loop, give or take noise), FAIL otherwise. It exits
0 whatever the result, unless --check is given: then 1 on any FAIL.

Noise: on a shared 2-core VM one run's throughput can move by 10-20% from the next (the plain loop
alone, run 10 times back to back, ranged over 44-67 ms/step), which is more than the 3% margin.
Read the per-round ratios the table prints; when they straddle 0.97, give a verdict only from more
rounds (--rounds 7 or more) on a quiet machine.

Runtime: about 2.5 minutes on 2 x86 CPU cores (jax 0.10, defaults: 3 rounds, batch 64 and 256).
"""

import os

# Set before jaxdl is imported: the benchmark must never reach for the network.
os.environ.setdefault("JAXDL_OFFLINE", "1")

import argparse
import datetime
import json
import logging
from pathlib import Path
import platform
import statistics
import sys
import tempfile
import time

import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

from jaxdl import config as config_lib
from jaxdl import data as data_lib
from jaxdl import metrics as metrics_lib
from jaxdl import nn as nn_lib
from jaxdl import trainer
from jaxdl.train.step import cross_entropy

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = REPO / "experiments" / "mnist_cnn.py"
REQUIRED_RATIO = 0.97  # jaxdl examples/s over plain examples/s, from the project's requirements.
INTERVALS = 4  # Logged intervals jaxdl's measured steps are cut into; the warmup is one more.
# Measured steps per run: ~5 s and ~9 s on 2 cores, long enough to average over scheduler noise,
# short enough for 3 rounds of both sizes in a few minutes.
DEFAULT_STEPS = {64: 100, 256: 40}


def default_steps(batch_size: int) -> int:
  # Other sizes: about as many examples as batch 64 sees, in whole log intervals.
  fallback = max(2 * INTERVALS, 6400 // batch_size // INTERVALS * INTERVALS)
  return DEFAULT_STEPS.get(batch_size, fallback)


# ---------------------------------------------------------------- Environment


def environment(data: data_lib.LoadedData) -> dict:
  return {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "python": platform.python_version(),
    "platform": platform.platform(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "devices": [str(d) for d in jax.devices()],
    "cpu_count": os.cpu_count(),
    "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "load_average": os.getloadavg(),
    "data": data.source,
  }


def print_environment(env: dict) -> None:
  print(f"date      {env['date']}")
  print(f"python    {env['python']} on {env['platform']}")
  print(
    f"jax       {env['jax']} (jaxlib {env['jaxlib']}), flax {env['flax']}, optax {env['optax']}"
  )
  print(f"devices   {', '.join(env['devices'])}")
  print(f"cpus      {env['cpu_count']} ({env['cpus_usable']} usable by this process)")
  # Other processes share the cores; a high load average means noisy numbers.
  print(f"load avg  {' '.join(f'{x:.2f}' for x in env['load_average'])} (1, 5, 15 min)")
  print(f"data      {env['data'].get('kind')}: {env['data'].get('num_train')} train examples")
  print()


# ---------------------------------------------------------------- (a) jaxdl's loop


def jaxdl_config(batch_size: int, steps: int, data_dir: str):
  """The experiment, shortened so that eval and checkpointing fall after the last timed interval."""
  interval = steps // INTERVALS
  num_steps = interval + steps  # The first interval is the warmup (compilation).
  config = config_lib.load_experiment(EXPERIMENT)
  config_lib.apply_overrides(
    config,
    [
      f"train.num_steps={num_steps}",
      f"train.batch_size={batch_size}",
      f"train.log_every_steps={interval}",
      f"train.eval_every_steps={num_steps + 1}",
      "train.checkpoint_every_steps=0",
      f"data.dir={data_dir}",
      "data.download=False",
    ],
  )
  return config


def run_jaxdl(batch_size: int, steps: int, data_dir: str) -> dict:
  config = jaxdl_config(batch_size, steps, data_dir)
  with tempfile.TemporaryDirectory(prefix="jaxdl_bench_") as workdir:
    start = time.perf_counter()
    trainer.train(config, workdir, show_progress=False)
    wall = time.perf_counter() - start
    records = metrics_lib.read_metrics(workdir)
  seconds = [r["perf/step_time_ms"] / 1e3 for r in records if "perf/step_time_ms" in r]
  measured = seconds[1:]  # Drop the first interval: it holds compilation and the first batches.
  if len(measured) != INTERVALS:
    raise RuntimeError(f"Expected {INTERVALS + 1} logged intervals from jaxdl, got {len(seconds)}.")
  # All intervals have the same length, so the plain mean is the mean over steps.
  return {
    "examples_per_sec": batch_size / statistics.fmean(measured),
    "wall_seconds": wall,
    "interval_seconds_per_step": measured,
  }


# ---------------------------------------------------------------- (b) A plain Flax + Optax loop


def plain_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int):
  """Endless shuffled batches, a fresh permutation per epoch, scaled on the host like jaxdl's."""
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(labels))
    for start in range(0, len(order) - batch_size + 1, batch_size):
      idx = order[start : start + batch_size]
      yield images[idx].astype(np.float32) / np.float32(255), labels[idx]


def make_plain_step():
  # A fresh jitted function per run, so each run compiles in its warmup, as each train() call does.
  def train_step(state, image, label):
    def loss_fn(params):
      logits = state.apply_fn({"params": params}, image)
      return cross_entropy(logits, label).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  return jax.jit(train_step, donate_argnums=0)


def run_plain(data: data_lib.LoadedData, batch_size: int, steps: int) -> dict:
  model = nn_lib.MnistCNN()
  params = model.init(jax.random.key(0), jnp.zeros((1, *data.train.image.shape[1:])))["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-3))
  train_step = make_plain_step()
  batches = plain_batches(data.train.image, data.train.label, batch_size, seed=0)

  def run(state, num_steps):
    for _ in range(num_steps):
      image, label = next(batches)
      state, _ = train_step(state, jax.device_put(image), jax.device_put(label))
    return state

  # Same warmup length as jaxdl's first (discarded) interval.
  state = jax.block_until_ready(run(state, steps // INTERVALS))
  start = time.perf_counter()
  state = jax.block_until_ready(run(state, steps))
  seconds = time.perf_counter() - start
  return {"examples_per_sec": batch_size * steps / seconds}


# ---------------------------------------------------------------- Driver


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=3, help="jaxdl/plain pairs per batch size")
  p.add_argument("--batch-sizes", default="64,256", help="comma-separated global batch sizes")
  p.add_argument(
    "--steps",
    default="",
    help="measured steps per run, one value or one per batch size, each a multiple "
    f"of {INTERVALS} (default: {DEFAULT_STEPS}, else ~6400 examples)",
  )
  p.add_argument("--data-dir", default="", help='MNIST directory; "" = the shipped subset')
  p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
  p.add_argument(
    "--check", action="store_true", help=f"exit 1 if a ratio is below {REQUIRED_RATIO}"
  )
  args = p.parse_args(argv)
  if args.rounds < 1:
    p.error("--rounds must be at least 1")
  args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  steps = (
    [int(s) for s in args.steps.split(",")]
    if args.steps
    else [default_steps(b) for b in args.batch_sizes]
  )
  if len(steps) == 1:
    steps *= len(args.batch_sizes)
  if len(steps) != len(args.batch_sizes):
    p.error("--steps needs one value, or one per batch size")
  if any(s < INTERVALS or s % INTERVALS for s in steps):
    p.error(f"--steps must be multiples of {INTERVALS} (jaxdl's measured log intervals)")
  args.steps = dict(zip(args.batch_sizes, steps))
  return args


def run_rounds(args, data) -> dict:
  """{batch size: {"jaxdl": [per-round results], "plain": [...]}}, alternating a, b, a, b."""
  results = {b: {"jaxdl": [], "plain": []} for b in args.batch_sizes}
  for r in range(1, args.rounds + 1):
    for b in args.batch_sizes:
      a_res = run_jaxdl(b, args.steps[b], args.data_dir)
      b_res = run_plain(data, b, args.steps[b])
      results[b]["jaxdl"].append(a_res)
      results[b]["plain"].append(b_res)
      print(
        f"round {r}  batch {b:4d}  jaxdl {a_res['examples_per_sec']:8.0f} ex/s "
        f"(train() {a_res['wall_seconds']:5.1f} s)  "
        f"plain {b_res['examples_per_sec']:8.0f} ex/s  load {os.getloadavg()[0]:.2f}",
        flush=True,
      )
  return results


def summarize(results: dict, steps: dict) -> list[dict]:
  rows = []
  for b, res in results.items():
    jaxdl_eps = [r["examples_per_sec"] for r in res["jaxdl"]]
    plain_eps = [r["examples_per_sec"] for r in res["plain"]]
    ratio = statistics.median(jaxdl_eps) / statistics.median(plain_eps)
    rows.append(
      {
        "batch_size": b,
        "measured_steps": steps[b],
        "jaxdl_examples_per_sec": statistics.median(jaxdl_eps),
        "plain_examples_per_sec": statistics.median(plain_eps),
        "ratio": ratio,
        # Each round's own ratio: their scatter shows how far the machine's noise reaches.
        "round_ratios": [j / p for j, p in zip(jaxdl_eps, plain_eps)],
        "jaxdl_train_wall_seconds": statistics.median(r["wall_seconds"] for r in res["jaxdl"]),
        "pass": ratio >= REQUIRED_RATIO,
      }
    )
  return rows


def print_table(rows: list[dict], rounds: int) -> None:
  print(f"\nmedians over {rounds} round(s), examples/s; PASS if jaxdl/plain >= {REQUIRED_RATIO}")
  print(
    f"{'batch':>5}  {'steps':>5}  {'jaxdl':>7}  {'plain':>7}  {'jaxdl/plain':>11}  "
    f"{'result':>6}  {'train() s':>9}  per-round jaxdl/plain"
  )
  for row in rows:
    print(
      f"{row['batch_size']:5d}  {row['measured_steps']:5d}  "
      f"{row['jaxdl_examples_per_sec']:7.0f}  {row['plain_examples_per_sec']:7.0f}  "
      f"{row['ratio']:11.3f}  {'PASS' if row['pass'] else 'FAIL':>6}  "
      f"{row['jaxdl_train_wall_seconds']:9.1f}  "
      f"{' '.join(f'{r:.2f}' for r in row['round_ratios'])}"
    )


def main(argv=None) -> int:
  args = parse_args(argv)
  data = data_lib.load_dataset("mnist", args.data_dir, allow_download=False)
  # Every train() call loads the data again; its subset warning was shown once above, and the
  # header names the data source, so the repeats would only bury the results.
  logging.getLogger("jaxdl.data.mnist").setLevel(logging.ERROR)
  env = environment(data)
  print_environment(env)
  start = time.perf_counter()
  results = run_rounds(args, data)
  rows = summarize(results, args.steps)
  print_table(rows, args.rounds)
  total = time.perf_counter() - start
  print(f"\ntotal {total:.0f} s; load avg at the end {os.getloadavg()[0]:.2f}")
  if args.json:
    report = {
      "environment": env,
      "rounds": args.rounds,
      "required_ratio": REQUIRED_RATIO,
      "summary": rows,
      "runs": {str(b): r for b, r in results.items()},
      "total_seconds": total,
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
  return 1 if args.check and not all(row["pass"] for row in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
