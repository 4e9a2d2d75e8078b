"""N seeds in one program (`sweep.seeds=N`, vmapped or mapped) against N separate single-seed steps.

Run (from the repository root, offline, on the MNIST subset shipped with jaxdl):
    python benchmarks/sweep_vmap.py
Options: --members 4 --batch-size 64 --steps 30 --rounds 3 --experiment experiments/mnist_cnn.py

Both sides use the trainer's own jitted update (`jaxdl.trainer.build(...).update`, buffers donated)
on the experiment's model and optimizer, with the same batches already on the device:
  (a) vmapped: one step of the sweep's stacked state advances all N members (sweep.method=vmap);
  (b) mapped: the same, members one after another in one compiled loop (sweep.method=map);
  (c) sequential: N single-run states, each stepped in turn, the way N separate runs share one
      machine one after the other (or at once, fighting for the same cores).
Each is warmed up (compiled), then `--steps` steps are timed to block_until_ready; rounds
alternate a, b, c, a, b, c. It prints the medians of examples/s (N * B * steps / seconds) and the
ratios to sequential.
Data loading is left out: it is the same work for both.

Runtime: about a minute on 2 x86 CPU cores with the defaults.
"""

import os

os.environ.setdefault("JAXDL_OFFLINE", "1")

import argparse
import statistics
import time

import jax
import numpy as np

from jaxdl import config as config_lib
from jaxdl import trainer


def _setup(experiment: str, overrides: list[str]):
  config = config_lib.load_experiment(experiment)
  config_lib.apply_overrides(config, ["data.download=false", *overrides])
  data = trainer.load_data(config)
  return config, data, trainer.build(config, data)


def _time(step, loop, batch, steps: int) -> float:
  state, sums = loop["state"], loop["metric_sums"]
  rng = jax.random.wrap_key_data(loop["rng"])
  start = time.perf_counter()
  for _ in range(steps):
    state, sums, loss = step(state, sums, batch, rng)
  loss.block_until_ready()
  loop.update(state=state, metric_sums=sums)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--members", type=int, default=4)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--experiment", default="experiments/mnist_cnn.py")
  args = parser.parse_args()
  n, b = args.members, args.batch_size

  common = [f"train.batch_size={b}", "train.num_steps=1000"]
  _, data, single = _setup(args.experiment, common)
  _, _, swept = _setup(args.experiment, [*common, f"sweep.seeds={n}"])
  _, _, mapped = _setup(args.experiment, [*common, f"sweep.seeds={n}", "sweep.method=map"])
  batch = next(iter(data.train_batches(batch_size=b, seed=0)))
  single_batch = jax.device_put(batch)
  stacked_batch = jax.device_put({k: np.stack([v] * n) for k, v in batch.items()})
  single_step = jax.jit(single.update, donate_argnums=(0, 1))
  swept_step = jax.jit(swept.update, donate_argnums=(0, 1))
  mapped_step = jax.jit(mapped.update, donate_argnums=(0, 1))
  single_loops = [single.init_loop() for _ in range(n)]
  swept_loop, mapped_loop = swept.init_loop(), mapped.init_loop()

  def run_vmapped(steps):
    return _time(swept_step, swept_loop, stacked_batch, steps)

  def run_mapped(steps):
    return _time(mapped_step, mapped_loop, stacked_batch, steps)

  def run_sequential(steps):
    return sum(_time(single_step, loop, single_batch, steps) for loop in single_loops)

  runs = {"vmapped": run_vmapped, "mapped": run_mapped, "sequential": run_sequential}
  for run in runs.values():
    run(2)  # Compile.
  rates = {name: [] for name in runs}
  for _ in range(args.rounds):
    for name, run in runs.items():
      rates[name].append(n * b * args.steps / run(args.steps))
  medians = {name: statistics.median(r) for name, r in rates.items()}
  print(
    f"{args.experiment}: {n} members, batch {b} each, {args.steps} steps, "
    f"{args.rounds} rounds; {jax.device_count()} {jax.devices()[0].platform} device(s)"
  )
  print(f"{'':>12}  examples/s (median)  vs sequential  rounds")
  for name, median in medians.items():
    print(
      f"{name:>12}  {median:19,.0f}  {median / medians['sequential']:11.2f}x  "
      f"{', '.join(f'{r:,.0f}' for r in rates[name])}"
    )


if __name__ == "__main__":
  main()
