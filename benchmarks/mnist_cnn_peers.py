"""Training throughput of the seed MNIST CNN on CPU: jaxdl against the frameworks users would pick.

Run (from the repository root, offline, on the MNIST subset shipped with jaxdl):
    python benchmarks/mnist_cnn_peers.py                 # every peer whose packages are installed
    python benchmarks/mnist_cnn_peers.py --quick         # smoke run: 1 round, 8 steps
    python benchmarks/mnist_cnn_peers.py --rounds 5 --batch-sizes 64 --json out.json --check 0.9 \\
        --jaxdl 'default=' --jaxdl 'xnn=XLA_FLAGS=--xla_cpu_use_xnnpack=true'
A peer whose packages are not installed is skipped with a note; `pip install -e ".[bench]"`
installs them all (torch, TensorFlow, Keras 3).

The model is the seed's Keras CNN (experiments/mnist_cnn.py; 93,322 parameters): Conv(32, 3x3,
relu, valid) -> MaxPool(2) -> Conv(64) -> MaxPool(2) -> Conv(64) -> Flatten -> Dense(64, relu) ->
Dense(10), sparse softmax cross-entropy on the logits, Adam(lr 1e-3, eps 1e-7), 28x28x1 float32
inputs in [0, 1]. Peers, each written the way that framework's documentation writes it:
  jaxdl      `jaxdl.trainer.train` on experiments/mnist_cnn.py with train.batch_size=B; throughput
             from the `perf/step_time_ms` logged intervals after the first (which holds
             compilation), as benchmarks/throughput_mnist_cnn.py does. Several variants may be
             given with --jaxdl NAME='TOKENS': each token either a config override `a.b=c`
             (applied as `jaxdl train exp.py a.b=c` applies it) or an environment variable
             `UPPER_CASE=value` set for that variant's process only, before jax is imported.
  flax       Flax Linen + Optax: a TrainState, a jitted train step donating it.
  nnx        Flax NNX: nnx.Optimizer(model, optax.adam, wrt=nnx.Param), an nnx.jit train step.
  keras_jax  Keras 3, KERAS_BACKEND=jax: Sequential, compile(Adam, sparse CE from logits,
             metrics=["accuracy"] as the seed's TF tutorial does), model.fit(verbose=0) on numpy.
  tf_keras   The same Keras code on KERAS_BACKEND=tensorflow: the seed document's own setup.
  torch      PyTorch eager, NCHW, torch.optim.Adam, default thread count, batches made with
             torch.from_numpy (no DataLoader).
Every peer but jaxdl (which runs its own Grain pipeline over the same files) trains on the same
batches: a fresh permutation of the same arrays per epoch (seed 0), scaled to float32 on the host.

Timing: each peer runs in its own subprocess (frameworks never share a process; the Keras backend
is an environment variable), warms up for steps/4 steps (compilation), then `--steps` steps are
timed: examples/s = B * steps / seconds. jaxdl's intervals end when a logged step has finished;
flax/nnx time to block_until_ready; torch eager is synchronous. Keras warms up in one fit() call
and is timed in a second, from its first batch (after fit's setup) until it returns (after the
last step; fit syncs the state at the end), with fit's default asynchronous dispatch.
`--variant PEER:NAME=TOKENS` runs a peer with environment variables of its own (for jaxdl also
config overrides; --jaxdl NAME=TOKENS is short for --variant jaxdl:NAME=TOKENS), e.g. torch with
OMP_NUM_THREADS=1; a peer given variants runs only those, so add PEER:default= to keep it as is.
Per round every peer runs once per batch size, in an order that rotates with the round (A B C,
B C A, ...), so that drifting load hits all alike. The table gives medians over rounds, each
round's figure, the ratio to the fastest non-jaxdl entry (peer or peer variant), and for jaxdl
variants the median of the per-round ratios to that round's fastest peer (each round's peers ran
back to back). --check R
exits 1 unless the best jaxdl variant's per-round-paired ratio is at least R at every batch size.

Noise: on a shared 2-core VM one run's throughput moves 10-20% from the next; read the per-round
figures, and use more rounds on a quiet machine before trusting small differences.
Runtime: about 4 minutes per round for the six peers at batch 64 and 256 on 2 busy x86 cores (12
minutes for the default 3 rounds; --quick: under a minute); most of it is process start, imports
and compilation.
"""

import os

# Set before jaxdl (driver, jaxdl worker) is imported: the benchmark must never reach the network.
os.environ.setdefault("JAXDL_OFFLINE", "1")

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import math
from pathlib import Path
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = REPO / "experiments" / "mnist_cnn.py"
PARAM_COUNT = 93_322  # The seed model's parameters; every peer's model must have exactly these.
INTERVALS = 4  # jaxdl's measured steps are cut into this many logged intervals; warmup is steps/4.
DEFAULT_STEPS = {64: 100, 256: 40}  # ~5 s and ~9 s per run on 2 cores, as throughput_mnist_cnn.py.
QUICK_STEPS = 8
PEERS = ("jaxdl", "flax", "nnx", "keras_jax", "torch", "tf_keras")
# Modules each peer imports (jaxdl's own dependencies: jax, flax, optax, grain).
REQUIRES = {
  "jaxdl": ("jax", "flax", "optax", "grain"),
  "flax": ("jax", "flax", "optax"),
  "nnx": ("jax", "flax", "optax"),
  "keras_jax": ("keras", "jax"),
  "torch": ("torch",),
  "tf_keras": ("keras", "tensorflow"),
}
KERAS_BACKENDS = {"keras_jax": "jax", "tf_keras": "tensorflow"}
RESULT_PREFIX = "PEER_RESULT "  # Marks the worker's one JSON line among the frameworks' output.
ENV_KEY = re.compile(r"[A-Z_][A-Z0-9_]*")


def default_steps(batch_size: int) -> int:
  # Other sizes: about as many examples as batch 64 sees, in whole intervals.
  fallback = max(2 * INTERVALS, 6400 // batch_size // INTERVALS * INTERVALS)
  return DEFAULT_STEPS.get(batch_size, fallback)


# ================================================================ Workers (one per subprocess)


def load_arrays(args) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [N, 28, 28, 1] and int32 labels [N]: the driver's .npz, else jaxdl's loader."""
  if args.data:
    with np.load(args.data) as f:
      return f["image"], f["label"]
  from jaxdl import data as data_lib  # pylint: disable=g-import-not-at-top

  data = data_lib.load_dataset("mnist", args.data_dir, allow_download=False)
  return data.train.image, data.train.label


def batch_indices(num_examples: int, batch_size: int, seed: int = 0):
  """Endless batches of indices, a fresh permutation per epoch, the remainder dropped."""
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(num_examples)
    for start in range(0, num_examples - batch_size + 1, batch_size):
      yield order[start : start + batch_size]


def host_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
  """Endless (float32 images in [0, 1], labels) numpy batches, scaled on the host per step."""
  for idx in batch_indices(len(labels), batch_size):
    yield images[idx].astype(np.float32) / np.float32(255), labels[idx]


def timed_loop(run_steps, warmup: int, steps: int) -> dict:
  """Runs `run_steps(warmup)` untimed, then times `run_steps(steps)`; each must return synced."""
  start = time.perf_counter()
  run_steps(warmup)
  warmup_seconds = time.perf_counter() - start
  start = time.perf_counter()
  run_steps(steps)
  return {"seconds": time.perf_counter() - start, "warmup_seconds": warmup_seconds}


def jax_context() -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  return {"devices": [str(d) for d in jax.devices()], "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}


# ---------------------------------------------------------------- jaxdl


def worker_jaxdl(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from jaxdl import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxdl import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from jaxdl import nn as nn_lib  # pylint: disable=g-import-not-at-top
  from jaxdl import trainer  # pylint: disable=g-import-not-at-top
  from jaxdl.train import steps_per_call  # pylint: disable=g-import-not-at-top

  config = config_lib.load_experiment(EXPERIMENT)
  config_lib.apply_overrides(config, args.override)
  # Several steps a call (runtime.steps_per_call; 0: auto, up to 16 on a CPU) end at each log step:
  # intervals of whole calls, as in a run logging every 100 steps, measure their steady state.
  per_call = config.runtime.steps_per_call or steps_per_call.CPU_STEPS_PER_CALL
  interval = math.ceil(args.steps / INTERVALS / per_call) * per_call
  num_steps = interval * (INTERVALS + 1)  # The first interval is the warmup (compilation).
  # Eval only after the last timed interval, no checkpoints; the user's overrides come last
  # except for these, which the measurement needs.
  config_lib.apply_overrides(
    config,
    [
      f"train.batch_size={args.batch_size}",
      f"train.num_steps={num_steps}",
      f"train.log_every_steps={interval}",
      f"train.eval_every_steps={num_steps + 1}",
      "train.checkpoint_every_steps=0",
      f"data.dir={args.data_dir}",
      "data.download=False",
    ],
  )
  with tempfile.TemporaryDirectory(prefix="jaxdl_peers_") as workdir:
    start = time.perf_counter()
    trainer.train(config, workdir, show_progress=False)
    wall = time.perf_counter() - start
    records = [r for r in metrics_lib.read_metrics(workdir) if "perf/step_time_ms" in r]
  if len(records) != INTERVALS + 1:
    raise RuntimeError(
      f"Expected {INTERVALS + 1} logged intervals from jaxdl, got "
      f"{len(records)} (steps {[r['step'] for r in records]})."
    )
  # Weight each interval by its steps, in case an option makes them unequal.
  steps = [b["step"] - a["step"] for a, b in zip(records, records[1:])]
  seconds = sum(n * r["perf/step_time_ms"] / 1e3 for n, r in zip(steps, records[1:]))
  variables = jax.eval_shape(
    nn_lib.MnistCNN().init, jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.float32)
  )
  return {
    "seconds": seconds,
    "measured_steps": sum(steps),
    "train_wall_seconds": wall,
    "compile_seconds": records[0].get("perf/compile_seconds"),
    "param_count": sum(x.size for x in jax.tree.leaves(variables)),
    "overrides": args.override,
    **jax_context(),
  }


# ---------------------------------------------------------------- flax (Linen + Optax)


def worker_flax(args, images, labels) -> dict:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from flax.training import train_state  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      for features in (32, 64):
        x = nn.max_pool(nn.relu(nn.Conv(features, (3, 3), padding="VALID")(x)), (2, 2), (2, 2))
      x = nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x))
      x = nn.relu(nn.Dense(64)(x.reshape((x.shape[0], -1))))
      return nn.Dense(10)(x)

  model = CNN()
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
  state = train_state.TrainState.create(
    apply_fn=model.apply, params=params, tx=optax.adam(1e-3, eps=1e-7)
  )

  def train_step(state, image, label):
    def loss_fn(params):
      logits = state.apply_fn({"params": params}, image)
      return optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  train_step = jax.jit(train_step, donate_argnums=0)
  batches = host_batches(images, labels, args.batch_size)

  def run(num_steps):
    nonlocal state
    for _ in range(num_steps):
      image, label = next(batches)
      state, _ = train_step(state, jax.device_put(image), jax.device_put(label))
    jax.block_until_ready(state)

  return {
    **timed_loop(run, args.warmup, args.steps),
    "param_count": sum(x.size for x in jax.tree.leaves(params)),
    **jax_context(),
  }


# ---------------------------------------------------------------- nnx (Flax NNX)


def worker_nnx(args, images, labels) -> dict:
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
      conv = lambda i, o: nnx.Conv(i, o, (3, 3), padding="VALID", rngs=rngs)
      self.conv1, self.conv2, self.conv3 = conv(1, 32), conv(32, 64), conv(64, 64)
      self.dense1, self.logits = nnx.Linear(576, 64, rngs=rngs), nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
      x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
      x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
      x = nnx.relu(self.conv3(x))
      return self.logits(nnx.relu(self.dense1(x.reshape((x.shape[0], -1)))))

  model = CNN(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-3, eps=1e-7), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, image, label):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(image), label).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  batches = host_batches(images, labels, args.batch_size)

  def run(num_steps):
    for _ in range(num_steps):
      image, label = next(batches)
      train_step(model, optimizer, jax.device_put(image), jax.device_put(label))
    jax.block_until_ready(nnx.state(model))

  param_count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  return {**timed_loop(run, args.warmup, args.steps), "param_count": param_count, **jax_context()}


# ---------------------------------------------------------------- keras_jax, tf_keras (Keras 3)


def worker_keras(args, images, labels) -> dict:
  import keras  # pylint: disable=g-import-not-at-top
  from keras import layers  # pylint: disable=g-import-not-at-top

  # The seed's TF tutorial model, written as the tutorial writes it.
  model = keras.Sequential(
    [
      keras.Input((28, 28, 1)),
      layers.Conv2D(32, (3, 3), activation="relu"),
      layers.MaxPooling2D((2, 2)),
      layers.Conv2D(64, (3, 3), activation="relu"),
      layers.MaxPooling2D((2, 2)),
      layers.Conv2D(64, (3, 3), activation="relu"),
      layers.Flatten(),
      layers.Dense(64, activation="relu"),
      layers.Dense(10),
    ]
  )
  model.compile(
    optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-7),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
  )
  total = args.warmup + args.steps
  # fit() takes arrays, so the same batch sequence is laid out in order and fed unshuffled.
  idx = np.concatenate(
    [i for i, _ in zip(batch_indices(len(labels), args.batch_size), range(total))]
  )
  x, y = images[idx].astype(np.float32) / np.float32(255), labels[idx]

  class FirstBatchStart(keras.callbacks.Callback):
    """Notes when fit() starts its first batch: after its setup, on the main thread."""

    def on_train_batch_begin(self, batch, logs=None):
      if batch == 0:
        self.start = time.perf_counter()

  # Two fit() calls: the first compiles and ends with the model's state synced; the second is
  # timed from its first batch to its return, which waits for the last step. (A batch-end
  # callback would either force a sync after every step or, being async-safe, run on Keras'
  # callback threads at times that need not be the steps' end times.)
  warmup_rows = args.warmup * args.batch_size
  start = time.perf_counter()
  model.fit(
    x[:warmup_rows], y[:warmup_rows], batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0
  )
  warmup_seconds = time.perf_counter() - start
  timer = FirstBatchStart()
  model.fit(
    x[warmup_rows:],
    y[warmup_rows:],
    batch_size=args.batch_size,
    epochs=1,
    shuffle=False,
    verbose=0,
    callbacks=[timer],
  )
  end = time.perf_counter()
  if keras.backend.backend() != os.environ["KERAS_BACKEND"]:
    raise RuntimeError(
      f"Keras runs on {keras.backend.backend()!r}, not on "
      f"{os.environ['KERAS_BACKEND']!r}: was keras imported before the worker?"
    )
  context = {
    "backend": keras.backend.backend(),
    "keras": keras.__version__,
    "steps_per_execution": model.steps_per_execution,
    "jit_compile": model.jit_compile,
  }  # "auto" resolves to False for TF on a CPU.
  if context["backend"] == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    context.update(
      tf_intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
      tf_inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
    )
  elif context["backend"] == "jax":
    context.update(jax_context())
  return {
    "seconds": end - timer.start,
    "warmup_seconds": warmup_seconds,
    "fit_setup_seconds": timer.start - start - warmup_seconds,
    "param_count": model.count_params(),
    **context,
  }


# ---------------------------------------------------------------- torch


def worker_torch(args, images, labels) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = nn.Sequential(
    nn.Conv2d(1, 32, 3),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(64, 64, 3),
    nn.ReLU(),
    nn.Flatten(),
    nn.Linear(576, 64),
    nn.ReLU(),
    nn.Linear(64, 10),
  )
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
  loss_fn = nn.CrossEntropyLoss()
  # NCHW and int64 labels, as torch wants them; converted once, outside the timed steps.
  batches = host_batches(
    np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.int64), args.batch_size
  )
  model.train()

  def run(num_steps):
    for _ in range(num_steps):
      image, label = next(batches)
      optimizer.zero_grad()
      loss = loss_fn(model(torch.from_numpy(image)), torch.from_numpy(label))
      loss.backward()
      optimizer.step()

  return {
    **timed_loop(run, args.warmup, args.steps),
    "param_count": sum(p.numel() for p in model.parameters()),
    "torch_threads": torch.get_num_threads(),
    "torch_interop_threads": torch.get_num_interop_threads(),
  }


def run_worker(args) -> int:
  peer = args.worker
  if args.steps < 1 or args.batch_size < 1:
    raise SystemExit("--steps and --batch-size must be positive.")
  if args.warmup is None:
    args.warmup = max(1, args.steps // INTERVALS)
  if peer in KERAS_BACKENDS:
    # Keras reads its backend once, at import; the peer decides it, not the caller's environment.
    os.environ["KERAS_BACKEND"] = KERAS_BACKENDS[peer]
  if peer == "jaxdl":
    result = worker_jaxdl(args)
  else:
    images, labels = load_arrays(args)
    fn = {
      "flax": worker_flax,
      "nnx": worker_nnx,
      "keras_jax": worker_keras,
      "tf_keras": worker_keras,
      "torch": worker_torch,
    }[peer]
    result = fn(args, images, labels)
  result.setdefault("measured_steps", args.steps)
  result.update(
    peer=peer,
    batch_size=args.batch_size,
    examples_per_sec=args.batch_size * result["measured_steps"] / result["seconds"],
  )
  print(RESULT_PREFIX + json.dumps(result), flush=True)
  return 0


# ================================================================ Driver


def parse_variant(text: str) -> tuple[str, str, list[str], dict[str, str]]:
  """'PEER:NAME=tok tok' -> (PEER, NAME, config overrides, environment variables)."""
  head, sep, rest = text.partition("=")
  peer, _, name = head.rpartition(":")
  if not sep or peer not in PEERS or not re.fullmatch(r"[\w.-]+", name):
    raise ValueError(
      f"--variant {text!r} is not PEER:NAME=TOKENS with PEER one of "
      f"{','.join(PEERS)} (e.g. --variant 'torch:1thread=OMP_NUM_THREADS=1', "
      "--jaxdl 'fast=train.x=1 XLA_FLAGS=--flag', --jaxdl 'default=')."
    )
  overrides, env = [], {}
  for token in shlex.split(rest):
    key, sep, value = token.partition("=")
    if not sep:
      raise ValueError(
        f"--variant {peer}:{name}: token {token!r} is neither a config override "
        "a.b=c nor an environment variable UPPER_CASE=value."
      )
    if ENV_KEY.fullmatch(key):
      env[key] = value
    elif peer == "jaxdl":
      overrides.append(token)
    else:
      raise ValueError(
        f"--variant {peer}:{name}: {token!r} is a config override, which only "
        "jaxdl variants take; other peers take environment variables UPPER=value."
      )
  return peer, name, overrides, env


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch-sizes", default="64,256", help="comma-separated batch sizes")
  p.add_argument("--rounds", type=int, default=3, help="runs of every peer per batch size")
  p.add_argument(
    "--peers",
    default=",".join(PEERS),
    help=f"comma-separated subset of {','.join(PEERS)} (default: all installed)",
  )
  p.add_argument(
    "--jaxdl",
    action="append",
    default=[],
    metavar="NAME=TOKENS",
    help="a jaxdl variant: config overrides a.b=c and env vars UPPER=value, "
    "space-separated; repeat for several (default: one, unchanged)",
  )
  p.add_argument(
    "--variant",
    action="append",
    default=[],
    metavar="PEER:NAME=TOKENS",
    help="a variant of any peer (env vars UPPER=value; for jaxdl also overrides); "
    "a peer given variants runs only those (add PEER:default= to keep it)",
  )
  p.add_argument(
    "--steps",
    default="",
    help=f"timed steps per run, one value or one per batch size, multiples of "
    f"{INTERVALS} (default {DEFAULT_STEPS}, else ~6400 examples)",
  )
  p.add_argument("--data-dir", default="", help='MNIST directory; "" = the shipped subset')
  p.add_argument("--json", metavar="OUT", help="also write every run and the summary to OUT")
  p.add_argument(
    "--quick",
    action="store_true",
    help=f"smoke run: 1 round, {QUICK_STEPS} steps unless --steps/--rounds given",
  )
  p.add_argument(
    "--check",
    type=float,
    metavar="RATIO",
    help="exit 1 unless the best jaxdl variant reaches RATIO of the fastest peer "
    "(median of per-round ratios) at every batch size",
  )
  p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per worker run")
  # Worker mode: run one peer once and print one JSON line.
  p.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
  p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
  p.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
  p.add_argument("--data", help=argparse.SUPPRESS)
  p.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    if args.batch_size is None:
      p.error("--worker needs --batch-size")
    args.steps = int(args.steps) if args.steps else default_steps(args.batch_size)
    return args

  if args.quick and "--rounds" not in (argv if argv is not None else sys.argv):
    args.rounds = 1
  if args.rounds < 1:
    p.error("--rounds must be at least 1")
  try:
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  except ValueError:
    p.error(f"--batch-sizes {args.batch_sizes!r} is not a comma-separated list of integers")
  if args.steps:
    steps = [int(s) for s in args.steps.split(",")]
  else:
    steps = [QUICK_STEPS if args.quick else default_steps(b) for b in args.batch_sizes]
  if len(steps) == 1:
    steps *= len(args.batch_sizes)
  if len(steps) != len(args.batch_sizes):
    p.error("--steps needs one value, or one per batch size")
  if any(s < INTERVALS or s % INTERVALS for s in steps):
    p.error(f"--steps must be multiples of {INTERVALS} (jaxdl's measured log intervals)")
  args.steps = dict(zip(args.batch_sizes, steps))
  args.peers = [x.strip() for x in args.peers.split(",") if x.strip()]
  unknown = sorted(set(args.peers) - set(PEERS))
  if unknown:
    p.error(f"unknown peer(s) {unknown}; choose from {','.join(PEERS)}")
  try:
    variants = [parse_variant(v) for v in args.variant + [f"jaxdl:{v}" for v in args.jaxdl]]
  except ValueError as e:
    p.error(str(e))
  args.variants = {}  # {peer: [(name, overrides, env)]}; a peer without variants runs as is.
  for peer, name, overrides, env in variants:
    if name in [v[0] for v in args.variants.get(peer, [])]:
      p.error(f"two variants of {peer} are named {name!r}; give them different names")
    args.variants.setdefault(peer, []).append((name, overrides, env))
  if "jaxdl" in args.peers:
    check_overrides(p, args.variants.get("jaxdl", []))
  return args


def check_overrides(p: argparse.ArgumentParser, variants) -> None:
  """Rejects a bad override before any run, with the message `jaxdl train` would give."""
  from jaxdl import config as config_lib  # pylint: disable=g-import-not-at-top

  for name, overrides, _ in variants:
    try:
      config_lib.apply_overrides(config_lib.load_experiment(EXPERIMENT), overrides)
    except Exception as e:  # pylint: disable=broad-except
      p.error(f"--jaxdl {name}: {e}")


def missing_module(peer: str) -> str | None:
  for module in REQUIRES[peer]:
    if importlib.util.find_spec(module) is None:
      return module
  return None


def package_versions() -> dict:
  versions = {}
  for dist in (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "grain",
    "keras",
    "tensorflow",
    "tensorflow-cpu",
    "torch",
    "numpy",
  ):
    try:
      versions[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def cpu_model() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def environment(data_source: dict) -> dict:
  return {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "cpu": cpu_model(),
    "cpu_count": os.cpu_count(),
    "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "load_average": os.getloadavg(),
    "python": platform.python_version(),
    "python_executable": sys.executable,
    "platform": platform.platform(),
    "versions": package_versions(),
    "data": data_source,
  }


class Runner:
  """One benchmark entry (a peer, or a jaxdl variant) and how to start its worker."""

  def __init__(self, peer: str, variant=("", [], {})):
    self.peer = peer
    name, self.overrides, self.env = variant
    self.label = f"{peer}:{name}" if name else peer

  def run(self, args, batch_size: int, data_path: str) -> dict:
    cmd = [
      sys.executable,
      str(Path(__file__).resolve()),
      "--worker",
      self.peer,
      "--batch-size",
      str(batch_size),
      "--steps",
      str(args.steps[batch_size]),
      "--data",
      data_path,
      "--data-dir",
      args.data_dir,
    ]
    cmd += [f"--override={o}" for o in self.overrides]
    env = {**os.environ, **self.env}
    start = time.perf_counter()
    try:
      proc = subprocess.run(
        cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=args.timeout
      )
    except subprocess.TimeoutExpired:
      return {"error": f"timed out after {args.timeout:.0f} s"}
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
    if proc.returncode or not lines:
      tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
      return {"error": f"exit code {proc.returncode}:\n{tail}"}
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result["process_seconds"] = time.perf_counter() - start
    if self.env:
      result["env"] = self.env
    return result


def make_runners(args) -> tuple[list[Runner], list[str]]:
  runners, skipped = [], []
  for peer in args.peers:
    module = missing_module(peer)
    if module:
      skipped.append(f"{peer} (module {module!r} is not installed for {sys.executable})")
    else:
      runners += [Runner(peer, v) for v in args.variants.get(peer, [("", [], {})])]
  return runners, skipped


def run_rounds(args, runners: list[Runner], data_path: str) -> dict:
  """{batch size: {label: [result per round]}}; per round the order rotates by one."""
  results = {b: {r.label: [] for r in runners} for b in args.batch_sizes}
  for rnd in range(args.rounds):
    shift = rnd % len(runners)
    order = runners[shift:] + runners[:shift]
    for b in args.batch_sizes:
      for runner in order:
        res = runner.run(args, b, data_path)
        res["load_average_1min"] = os.getloadavg()[0]
        results[b][runner.label].append(res)
        if "error" in res:
          print(
            f"round {rnd + 1}  batch {b:4d}  {runner.label:16s} FAILED: {res['error']}", flush=True
          )
        else:
          print(
            f"round {rnd + 1}  batch {b:4d}  {runner.label:16s} "
            f"{res['examples_per_sec']:8.0f} ex/s  (process {res['process_seconds']:5.1f} s, "
            f"load {res['load_average_1min']:.2f})",
            flush=True,
          )
  return results


def summarize(results: dict) -> dict:
  """Per batch size, per label: medians, per-round figures, ratios to the fastest peer."""
  summary = {}
  for b, by_label in results.items():
    eps = {label: [r.get("examples_per_sec") for r in runs] for label, runs in by_label.items()}
    peers = [l for l in eps if not l.startswith("jaxdl")]
    medians = {
      l: statistics.median(v for v in xs if v) if any(xs) else None for l, xs in eps.items()
    }
    ok_peers = [l for l in peers if medians[l]]
    fastest = max(ok_peers, key=lambda l: medians[l]) if ok_peers else None
    rows = {}
    for label, xs in eps.items():
      row = {
        "median": medians[label],
        "rounds": xs,
        "ratio": medians[label] / medians[fastest] if fastest and medians[label] else None,
      }
      if label.startswith("jaxdl"):
        # Paired: each round against that round's fastest peer, which ran in the same round.
        paired = []
        for i, x in enumerate(xs):
          best = max((eps[l][i] for l in peers if eps[l][i]), default=None)
          if x and best:
            paired.append(x / best)
        row["round_ratios"] = paired
        row["paired_ratio"] = statistics.median(paired) if paired else None
      rows[label] = row
    summary[b] = {"fastest_peer": fastest, "rows": rows}
  return summary


def fmt(x, spec: str) -> str:
  return "-" if x is None else format(x, spec)


def param_counts(results: dict) -> dict:
  counts = {}
  for by_label in results.values():
    for label, runs in by_label.items():
      for r in runs:
        if "param_count" in r:
          counts[label] = r["param_count"]
  return counts


def print_report(
  env: dict, args, runners: list[Runner], results: dict, summary: dict, skipped: list[str]
) -> None:
  counts = param_counts(results)
  v = env["versions"]
  print("\n## MNIST CNN training throughput, CPU\n")
  print(
    f"- machine: {env['cpu']}, {env['cpu_count']} cores ({env['cpus_usable']} usable), "
    f"{env['platform']}; load average at start {env['load_average'][0]:.2f}"
  )
  print(f"- date: {env['date']}; python {env['python']} ({env['python_executable']})")
  print("- versions: " + ", ".join(f"{k} {x}" for k, x in v.items()))
  odd = {l: c for l, c in counts.items() if c != PARAM_COUNT}
  print(
    f"- parameters: {PARAM_COUNT:,} in every peer's model"
    if not odd
    else f"- parameters: expected {PARAM_COUNT:,}, but {odd}"
  )
  print(
    f"- data: {env['data'].get('kind')}, {env['data'].get('num_train')} train examples; "
    f"{args.rounds} round(s); timed steps per run {args.steps}; warmup steps/{INTERVALS}"
  )
  threads = {}
  for by_label in results.values():
    for label, runs in by_label.items():
      for r in runs:
        t = {k: r[k] for k in r if k.endswith("_threads")}
        if t:
          threads[label] = t
  if threads:
    print("- threads: " + "; ".join(f"{l} {t}" for l, t in threads.items()))
  for runner in runners:
    if runner.overrides or runner.env:
      print(
        f"- {runner.label}: overrides {' '.join(runner.overrides) or 'none'}; "
        f"environment {' '.join(f'{k}={x}' for k, x in runner.env.items()) or 'unchanged'}"
      )
  for note in skipped:
    print(f"- skipped: {note}")
  for b, s in summary.items():
    print(f"\n### batch {b} ({args.steps[b]} timed steps); fastest peer: {s['fastest_peer']}\n")
    print("| peer | median ex/s | per-round ex/s | vs fastest peer | paired ratio (per round) |")
    print("|:-----|------------:|:---------------|----------------:|:-------------------------|")
    for label, row in s["rows"].items():
      per_round = " ".join(fmt(x, ".0f") for x in row["rounds"])
      paired = ""
      if "paired_ratio" in row:
        paired = (
          f"{fmt(row['paired_ratio'], '.3f')} ({' '.join(f'{x:.2f}' for x in row['round_ratios'])})"
        )
      print(
        f"| {label} | {fmt(row['median'], '.0f')} | {per_round} | "
        f"{fmt(row['ratio'], '.3f')} | {paired} |"
      )
  failures = [
    (b, l, r["error"])
    for b, by in results.items()
    for l, runs in by.items()
    for r in runs
    if "error" in r
  ]
  for b, label, error in failures:
    print(f"\nFAILED run: {label} at batch {b}: {error}")


def check(summary: dict, ratio: float) -> bool:
  ok = True
  for b, s in summary.items():
    paired = [
      row["paired_ratio"]
      for l, row in s["rows"].items()
      if l.startswith("jaxdl") and row.get("paired_ratio") is not None
    ]
    if not paired:
      print(f"check: batch {b}: no jaxdl/peer pair measured, cannot check; FAIL")
      ok = False
    elif max(paired) < ratio:
      print(f"check: batch {b}: best jaxdl ratio {max(paired):.3f} < {ratio}; FAIL")
      ok = False
    else:
      print(f"check: batch {b}: best jaxdl ratio {max(paired):.3f} >= {ratio}; PASS")
  return ok


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    return run_worker(args)
  runners, skipped = make_runners(args)
  for note in skipped:
    print(f"skipped: {note}")
  if not runners:
    print("Nothing to run: none of the requested peers is installed.")
    return 1
  import logging  # pylint: disable=g-import-not-at-top

  from jaxdl import data as data_lib  # pylint: disable=g-import-not-at-top

  data = data_lib.load_dataset("mnist", args.data_dir, allow_download=False)
  # Every jaxdl run loads the data again; the subset warning was shown once here.
  logging.getLogger("jaxdl.data.mnist").setLevel(logging.ERROR)
  env = environment(data.source)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="mnist_cnn_peers_") as tmp:
    # The peers read the same arrays from a file, so that their processes import no jaxdl or jax.
    data_path = str(Path(tmp) / "mnist_train.npz")
    np.savez(data_path, image=data.train.image, label=data.train.label)
    results = run_rounds(args, runners, data_path)
  summary = summarize(results)
  print_report(env, args, runners, results, summary, skipped)
  total = time.perf_counter() - start
  print(f"\ntotal {total:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")
  if args.json:
    report = {
      "environment": env,
      "rounds": args.rounds,
      "steps": args.steps,
      "skipped": skipped,
      "summary": summary,
      "runs": results,
      "total_seconds": total,
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
  if args.check is not None:
    return 0 if check(summary, args.check) else 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
