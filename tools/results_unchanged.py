"""Checks that a change leaves training results unchanged, to the bit.

    python tools/results_unchanged.py record   # before a change: writes tools/golden/metrics.json
    python tools/results_unchanged.py check    # after it: the same runs must log the same values
    python tools/results_unchanged.py check --only seed_cnn,char_gpt

Each run is a `jaxdl train` command in its own process (the CLI path users take), on a fresh
workdir; what is compared is every record of its `metrics.jsonl` without the `perf/` timings.
Refactors that must not change any number (the architecture issue: kernels layer, trainer, layout
interface, config) are checked with it. Floats are compared as JSON writes them (full precision),
so equal means bit-identical.

The recorded values hold for the machine they were recorded on (XLA:CPU picks kernels by CPU
features); the file names that machine. Record again on another kind before a change there.
Needs ../shared/data (full MNIST).
"""

import argparse
import json
import os
from pathlib import Path
import platform
import subprocess
import sys
import tempfile
import time

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
GOLDEN = REPO / "tools" / "golden" / "metrics.json"

# name -> (experiment, overrides, forced CPU device count).
RUNS: dict[str, tuple[str, list[str], int]] = {
  "seed_cnn": (
    "mnist_cnn.py",
    [
      f"data.dir={MNIST}",
      "train.num_steps=200",
      "train.log_every_steps=50",
      "train.eval_every_steps=100",
    ],
    1,
  ),
  "char_gpt": (
    "shakespeare_char_gpt.py:cpu",
    [
      "train.num_steps=50",
      "train.log_every_steps=10",
      "train.eval_every_steps=50",
      "model.dropout_rate=0.1",
      "optimizer.warmup_steps=10",
    ],
    1,
  ),
  "char_lstm": (
    "shakespeare_char_lstm.py",
    [
      "train.num_steps=50",
      "train.log_every_steps=10",
      "train.eval_every_steps=50",
      "optimizer.warmup_steps=10",
    ],
    1,
  ),
  "vit": (
    "mnist_vit.py",
    [
      f"data.dir={MNIST}",
      "train.num_steps=30",
      "train.log_every_steps=10",
      "train.eval_every_steps=30",
      "model.num_layers=2",
      "data.eval_batch_size=1000",
      "optimizer.warmup_steps=10",
    ],
    1,
  ),
  "resnet_bn": (
    "mnist_cnn.py",
    [
      f"data.dir={MNIST}",
      "model.name=resnet20",
      "model.width=8",
      "model.depth=8",
      "optimizer.name=sgd",
      "optimizer.learning_rate=0.05",
      "optimizer.momentum=0.9",
      "train.num_steps=30",
      "train.log_every_steps=10",
      "train.eval_every_steps=30",
    ],
    1,
  ),
  "sweep": (
    "mnist_cnn.py",
    [
      f"data.dir={MNIST}",
      "train.num_steps=30",
      "train.log_every_steps=10",
      "train.eval_every_steps=30",
      "sweep.seeds=2",
      "sweep.optimizer.learning_rate=[1e-3,3e-4]",
    ],
    1,
  ),
  "pmap_8": (
    "mnist_cnn.py",
    [
      f"data.dir={MNIST}",
      "train.num_steps=30",
      "train.log_every_steps=10",
      "train.eval_every_steps=30",
      "parallel.strategy=pmap",
      "parallel.cpu_devices=8",
    ],
    8,
  ),
  "fsdp_8": (
    "shakespeare_char_gpt.py:cpu",
    [
      "train.num_steps=20",
      "train.log_every_steps=10",
      "train.eval_every_steps=20",
      "train.batch_size=16",
      "parallel.mesh.fsdp=4",
      "parallel.mesh.data=2",
      "parallel.cpu_devices=8",
      "optimizer.warmup_steps=10",
    ],
    8,
  ),
}


def run(name: str, root: Path) -> list[dict]:
  experiment, overrides, devices = RUNS[name]
  workdir = root / name
  env = dict(
    os.environ, JAXDL_OFFLINE="1", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"
  )
  command = [
    sys.executable,
    "-m",
    "jaxdl.cli",
    "train",
    str(REPO / "experiments" / experiment),
    *overrides,
    "--workdir",
    str(workdir),
    "--no-progress",
  ]
  proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
  if proc.returncode != 0:
    raise SystemExit(f"{name}: `{' '.join(command)}` failed:\n{proc.stderr[-4000:]}")
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("mode", choices=("record", "check"))
  parser.add_argument("--only", help="comma-separated run names (default: all)")
  args = parser.parse_args()
  if not (MNIST / "train-images-idx3-ubyte.gz").exists():
    raise SystemExit(f"full MNIST not found at {MNIST}; this check needs ../shared/data.")
  names = args.only.split(",") if args.only else list(RUNS)
  unknown = sorted(set(names) - set(RUNS))
  if unknown:
    raise SystemExit(f"unknown run(s) {unknown}; choose from {sorted(RUNS)}.")
  golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"runs": {}}
  failed = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in names:
      start = time.time()
      records = run(name, Path(tmp))
      seconds = time.time() - start
      if args.mode == "record":
        golden["runs"][name] = records
        print(f"{name}: recorded {len(records)} records ({seconds:.0f} s)", flush=True)
      elif name not in golden["runs"]:
        failed.append(name)
        print(f"{name}: nothing recorded; run `record` first", flush=True)
      elif records != golden["runs"][name]:
        failed.append(name)
        expected = golden["runs"][name]
        diffs = [
          (i, k, e.get(k), r.get(k))
          for i, (e, r) in enumerate(zip(expected, records))
          for k in sorted(set(e) | set(r))
          if e.get(k) != r.get(k)
        ]
        print(
          f"{name}: DIFFERS ({len(expected)} records recorded, {len(records)} now); first "
          f"differences (record, key, recorded, now): {diffs[:5]}",
          flush=True,
        )
      else:
        print(f"{name}: identical ({len(records)} records, {seconds:.0f} s)", flush=True)
  if args.mode == "record":
    golden["machine"] = {
      "processor": platform.processor() or platform.machine(),
      "cpu": _cpu_model(),
      "python": platform.python_version(),
    }
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
  return 1 if failed else 0


def _cpu_model() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return ""


if __name__ == "__main__":
  sys.exit(main())
