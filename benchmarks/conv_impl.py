"""XLA's convolutions against jaxdl's im2col ones, in jaxdl's own train step.

    python benchmarks/conv_impl.py          # seed CNN, batch 64 and 256, 1 and 8 devices
    python benchmarks/conv_impl.py --model vgg11 --batch-sizes 16 --devices 1
    python benchmarks/conv_impl.py --impls im2col,fused --devices 1   # the pool fusion alone
    python benchmarks/conv_impl.py --impls fused,winograd --devices 1  # Winograd in the fused op
    python benchmarks/conv_impl.py --quick  # smoke run, well under a minute

The implementations are the CNNs' kernel sets (`runtime.kernels`, jaxdl.nn.conv_layers): "xla" is
Flax's nn.Conv with the reshape max-pool, "im2col" matmuls over patches, then separate bias, ReLU
and pool, "fused" each convolution followed by a max-pool run with its bias, ReLU and pool as one
op, all im2col matmuls, and "winograd" that op by Winograd's F(2x2, 3x3) where it has 8 or more
input channels, as elementwise multiply-adds for a first layer's small patches ("plain", Flax's
layers throughout, can be timed too).

Every (implementation, device count, batch size) runs in its own worker process (the CPU device
count is fixed when JAX starts): the experiment's model and optimizer, `make_train_step` jitted
with the state donated and the batch split over the devices as the trainer splits it, random
images. A worker warms up, then times `--steps` steps one by one and reports the median, the 10th
percentile and the process CPU time per step. The configurations alternate for `--rounds` rounds;
the table gives the medians over rounds and each implementation's speedup over the first one in
`--impls` in the same setting.
"""

import argparse
import json
import os
from pathlib import Path
import statistics
import subprocess
import sys
import time

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (model config, image shape)
  "mnist_cnn": ({"name": "mnist_cnn"}, (28, 28, 1)),
  "vgg11": ({"name": "vgg", "depth": 11, "pool_size": 1, "hidden_dim": 512}, (32, 32, 3)),
}
IMPLS = {name: {"kernels": name} for name in ("plain", "xla", "im2col", "fused", "winograd")}


def worker(args) -> None:
  """Times one configuration; prints one JSON line."""
  from jaxdl import host_memory

  host_memory.configure("auto")
  import jax

  jax.config.update("jax_num_cpu_devices", args.devices)
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P
  import numpy as np

  from jaxdl import models
  from jaxdl.config import base_config
  from jaxdl.train import optim, tasks
  from jaxdl.train import step as step_lib

  model_config, image_shape = MODELS[args.model]
  config = base_config()
  config.model = dict(model_config, **IMPLS[args.impl], num_classes=10)
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  model = models.build_model(config.model, {"num_classes": 10, "input_shape": image_shape})
  task = tasks.Classification()
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps=1000)
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.random((args.batch_size,) + image_shape, np.float32),
    "label": rng.integers(0, 10, args.batch_size).astype(np.int32),
  }
  state = step_lib.create_train_state(model, tx, jax.random.key(0), *task.model_inputs(batch))
  mesh = Mesh(np.array(jax.devices()), ("data",))
  state = jax.device_put(state, NamedSharding(mesh, P()))
  batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
  train_step = jax.jit(step_lib.make_train_step(model, tx, schedule, task), donate_argnums=0)
  key = jax.random.key(1)
  for _ in range(max(3, args.steps // 4)):
    state, metrics = train_step(state, batch, key)
  jax.block_until_ready(metrics)
  times, cpu_start = [], time.process_time()
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = train_step(state, batch, key)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  cpu_ms = 1e3 * (time.process_time() - cpu_start) / args.steps
  times.sort()
  print(
    json.dumps(
      {
        "median_ms": 1e3 * times[len(times) // 2],
        "p10_ms": 1e3 * times[len(times) // 10],
        "cpu_ms": cpu_ms,
        "loss": float(metrics["train/loss"]),
      }
    )
  )


def run_worker(args, impl: str, devices: int, batch_size: int) -> dict:
  command = [
    sys.executable,
    __file__,
    "--worker",
    "--impl",
    impl,
    "--model",
    args.model,
    "--devices",
    str(devices),
    "--batch-size",
    str(batch_size),
    "--steps",
    str(args.steps),
  ]
  env = dict(
    os.environ,
    PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    TF_CPP_MIN_LOG_LEVEL="3",
  )
  done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
  if done.returncode != 0:
    raise SystemExit(
      f"worker {impl}/{devices} devices/batch {batch_size} failed:\n{done.stderr[-3000:]}"
    )
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", choices=sorted(MODELS), default="mnist_cnn")
  p.add_argument("--batch-sizes", default="64,256")
  p.add_argument("--devices", default="1,8", help="comma-separated CPU device counts")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=40, help="timed steps per worker run")
  p.add_argument(
    "--impls",
    default="xla,im2col,fused,winograd",
    help=f"comma-separated, from {', '.join(IMPLS)}; speedups are over the first",
  )
  p.add_argument("--json", metavar="OUT", help="also write every run to OUT")
  p.add_argument("--quick", action="store_true", help="1 round, 5 steps, batch 16, 1 device")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--impl", choices=sorted(IMPLS), help=argparse.SUPPRESS)
  p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    args.devices = int(args.devices)
    worker(args)
    return 0
  if args.quick:
    args.rounds, args.steps, args.batch_sizes, args.devices = 1, 5, "16", "1"
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  device_counts = [int(d) for d in args.devices.split(",")]
  impls = args.impls.split(",")
  unknown = [i for i in impls if i not in IMPLS]
  if unknown or not impls:
    p.error(f"--impls: unknown {unknown}; choose from {', '.join(IMPLS)}")
  settings = [(impl, d, b) for b in batch_sizes for d in device_counts for impl in impls]
  runs = {s: [] for s in settings}
  started = time.time()
  for round_index in range(args.rounds):
    for setting in settings:
      result = run_worker(args, *setting)
      runs[setting].append(result)
      impl, d, b = setting
      print(
        f"round {round_index + 1}  {impl:6s} {d} device(s) batch {b}: "
        f"{result['median_ms']:.1f} ms (CPU {result['cpu_ms']:.1f} ms)",
        flush=True,
      )
  print(
    f"\n{args.model}, {args.rounds} round(s) of {args.steps} steps, {time.time() - started:.0f} s\n"
  )
  base = impls[0]
  row = lambda cells: print("| " + " | ".join(cells) + " |")
  row(
    ["batch", "devices"]
    + [f"{i} ms/step" for i in impls]
    + [f"{i} speedup" for i in impls[1:]]
    + ["CPU ms/step " + " / ".join(impls)]
  )
  print("|--:|--:|" + "--:|" * (2 * len(impls)))
  summary = []
  for b in batch_sizes:
    for d in device_counts:
      ms = {i: statistics.median(r["median_ms"] for r in runs[(i, d, b)]) for i in impls}
      cpu = [statistics.median(r["cpu_ms"] for r in runs[(i, d, b)]) for i in impls]
      row(
        [str(b), str(d)]
        + [f"{ms[i]:.1f}" for i in impls]
        + [f"{ms[base] / ms[i]:.2f}" for i in impls[1:]]
        + [" / ".join(f"{c:.1f}" for c in cpu)]
      )
      summary.append({"batch_size": b, "devices": d, **{f"{i}_ms": ms[i] for i in impls}})
  if args.json:
    Path(args.json).write_text(
      json.dumps(
        {"summary": summary, "runs": {"/".join(map(str, s)): r for s, r in runs.items()}}, indent=1
      )
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
