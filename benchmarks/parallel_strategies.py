"""Per-step cost of each parallel strategy on 8 forced CPU devices against one device running the
same global batch.

Run (from the repository root, offline, on the MNIST subset shipped with jaxdl):
    python benchmarks/parallel_strategies.py
Options: --rounds 3 --steps 60 --batch-size 64 --experiment experiments/mnist_cnn.py

Each layout is a `jaxdl train` process (the device count is fixed when JAX starts) training the
experiment for `--steps` steps, logging every steps/4; its time per step is the median of
`perf/step_time_ms` over the logged intervals after the first (which holds compilation).
Layouts run in turn, round after round, so drifting load hits them alike. The table gives the
median over rounds and the ratio to the one-device run.

What it shows: on one CPU, 8 "devices" are 8 slices of the same 2 cores, so a multi-device step
cannot be faster; the ratio is the overhead of splitting the batch, the collectives and the
per-device dispatch, which is what a strategy costs before real accelerators pay it back.
"""

import argparse
import json
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = {
  "1 device (jit)": (1, []),
  "8 devices, jit (data)": (8, []),
  "8 devices, pmap": (8, ["parallel.strategy=pmap"]),
  "8 devices, jit fsdp=8": (8, ["parallel.mesh.fsdp=8"]),
  "8 devices, jit data=2 fsdp=4": (8, ["parallel.mesh.data=2", "parallel.mesh.fsdp=4"]),
}


def seconds_per_step(experiment, devices, extra, steps, batch_size, workdir):
  env = {
    **os.environ,
    "JAXDL_OFFLINE": "1",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
  }
  log_every = max(1, steps // 4)
  subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxdl.cli",
      "train",
      experiment,
      f"train.num_steps={steps}",
      f"train.batch_size={batch_size}",
      f"train.log_every_steps={log_every}",
      f"train.eval_every_steps={steps}",
      "train.checkpoint_every_steps=0",
      "data.eval_batch_size=400",
      *extra,
      "--workdir",
      str(workdir),
      "--no-progress",
    ],
    cwd=REPO,
    env=env,
    check=True,
    capture_output=True,
    text=True,
  )
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  times = [r["perf/step_time_ms"] / 1e3 for r in records if "perf/step_time_ms" in r][1:]
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--experiment", default=str(REPO / "experiments" / "mnist_cnn.py"))
  args = parser.parse_args()

  times = {name: [] for name in LAYOUTS}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for i, (name, (devices, extra)) in enumerate(LAYOUTS.items()):
        workdir = Path(tmp) / f"r{r}_{i}"
        times[name].append(
          seconds_per_step(args.experiment, devices, extra, args.steps, args.batch_size, workdir)
        )
  base = statistics.median(times["1 device (jit)"])
  print(
    f"{Path(args.experiment).name}, global batch {args.batch_size}, {args.steps} steps, "
    f"{args.rounds} rounds, CPU ({os.cpu_count()} cores), forced host devices"
  )
  print(f"{'layout':<30} {'ms/step':>8} {'vs 1 device':>12}  rounds (ms)")
  for name, values in times.items():
    median = statistics.median(values)
    rounds = ", ".join(f"{v * 1e3:.1f}" for v in values)
    print(f"{name:<30} {median * 1e3:8.1f} {median / base:11.2f}x  {rounds}")


if __name__ == "__main__":
  main()
