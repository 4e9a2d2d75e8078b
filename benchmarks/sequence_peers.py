"""CPU training throughput of jaxdl's char LSTM and char GPT against the same models in PyTorch.

Run (from the repository root, with a Python that has both jaxdl and torch):
    /work/benchvenv/bin/python benchmarks/sequence_peers.py
Options: --rounds 3 --seconds 3 --only lstm_char,gpt_char --quick --json OUT
         --omp-wait-policy passive|active|default --xla-flags "..." --env KEY=VALUE (repeatable)

Each comparison is one full training step (forward, loss, backward, gradient clipping, optimizer
update) of the same model at the same shapes with the same optimizer, in tokens/s (batch x time
predicted per second):
  lstm_char  experiments/shakespeare_char_lstm.py: embedding 64 -> 2 LSTM layers of 256 (dropout
             0.1 on the embeddings, between the layers and before the head) -> Dense(65), batch
             32 x 64 tokens; Adam 2e-3 (warmup + cosine), gradient clipping at 1.0.
  lstm_big   the same model 512 wide on batch 32 x 128 tokens: more arithmetic per step, the
             same number of ops per timestep.
  gpt_char   experiments/shakespeare_char_gpt.py:cpu: 4 pre-LN blocks, 4 heads, width 128,
             vocab 65, context 64, no biases, tied LM head, no dropout, batch 12 x 64 tokens;
             AdamW 1e-3 (b2 0.99, weight decay 0.1 on matrices), warmup + cosine, clipping at 1.0.
  jaxdl: the experiment's config -> jaxdl.models.build_model, jaxdl.train.optim.make_optimizer,
         jaxdl.train.step.make_train_step(LanguageModelling()), jitted with the state donated;
         every step runs to block_until_ready. (jaxdl's step also computes the accuracy and the
         norms of the gradients, parameters and updates for its logs.)
  torch: eager PyTorch at its default thread count: nn.Embedding -> nn.LSTM(batch_first=True,
         dropout) -> nn.Linear, or a nanoGPT-style GPT written below (F.scaled_dot_product_attention
         with is_causal=True, GELU(tanh), LayerNorm(bias=False), tied head); F.cross_entropy,
         clip_grad_norm_, torch.optim.Adam / AdamW (decay on >= 2-d parameters, as nanoGPT) and a
         LambdaLR warmup + cosine schedule. PyTorch's LSTM has two bias vectors per layer
         (b_ih, b_hh) where jaxdl's has one, hence 2 x 4H more parameters per layer; the GPTs
         have equal counts. Both print them.
Both train on one fixed batch of random tokens (the same numpy draw). Each framework runs in its
own worker process (`--worker NAME --comparison C`), which builds and warms up its step (compile,
first steps), fixes how many steps fill about `--seconds` (at least 2), prints a JSON line, and
then times that many steps each time the driver writes "run" on its stdin, answering with one JSON
line. The driver alternates the workers of a comparison for `--rounds` rounds, round r starting
with worker r (mod 2), so that load drifting on the machine hits both alike; only one worker
computes at a time. The table gives medians over rounds of tokens/s, ms/step and CPU ms/step (the
CPU time of all the worker's threads per step: near ms/step x cores used; it does not count time
other jobs took), jaxdl/torch as the median of the per-round ratios (each pair ran back to back),
and each round's figures. It exits 0 whatever the numbers; a framework that is not installed is
skipped with a note.

Environment of the workers: the driver's, plus
  --omp-wait-policy (torch; default passive): OMP_WAIT_POLICY for PyTorch's OpenMP threads. With
      the default (active: threads spin at each barrier) and another job on one of 2 cores, a
      2-thread PyTorch step ran 20-40x slower (a 2-layer LSTM fwd+bwd: 3.1 s instead of 0.07 s),
      because a barrier waits for a thread that is not running. `active` or `default` on a quiet
      machine measures PyTorch as it ships.
  --xla-flags (jaxdl): added to XLA_FLAGS.
  --env KEY=VALUE (both): e.g. glibc malloc settings (see benchmarks/README.md).

Noise: the figures come from a VM whose 2 cores are shared with other jobs; one run's throughput
can move by 10-20% from the next, and by 2x when other jobs start or stop. Read the per-round
ratios.

Runtime: about 2-3 minutes on 2 x86 CPU cores with the defaults; `--quick` (1 round, 0.5 s per
worker, smaller LSTMs) is a 40-70 s smoke run.
"""

import os

# Before jax is imported (in the jaxdl worker): CPU figures, and a quiet log.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import datetime
import importlib.util
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("jaxdl", "torch")
MIN_STEPS = 2  # Timed steps per worker per round, however slow the step.
VOCAB = 65  # The char tokenizer's vocabulary on the shipped Shakespeare corpus.

# name: (experiment config file, variant, overrides of model / batch, description).
COMPARISONS = {
    "lstm_char": dict(experiment="shakespeare_char_lstm.py", variant="", model={},
                      batch_size=32, seq_len=64,
                      title="char LSTM 2x256, B=32, T=64"),
    "lstm_big": dict(experiment="shakespeare_char_lstm.py", variant="", model={"features": 512},
                     batch_size=32, seq_len=128,
                     title="char LSTM 2x512, B=32, T=128"),
    "gpt_char": dict(experiment="shakespeare_char_gpt.py", variant="cpu", model={},
                     batch_size=12, seq_len=64,
                     title="char GPT 4x128 (cpu), B=12, T=64"),
}
QUICK = {  # --quick: the same models at small sizes, to check that everything runs.
    "lstm_char": dict(seq_len=16),
    "lstm_big": dict(model={"features": 128}, seq_len=16, title="char LSTM 2x128, B=32, T=16"),
    "gpt_char": dict(),
}


def comparison_spec(name: str, quick: bool) -> dict:
  spec = dict(COMPARISONS[name])
  if quick:
    spec.update(QUICK[name])
  return spec


def experiment_config(spec: dict):
  """The experiment's ml_collections config with the comparison's model overrides."""
  path = ROOT / "experiments" / spec["experiment"]
  module_spec = importlib.util.spec_from_file_location(f"exp_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(spec["variant"]) if spec["variant"] else module.get_config()
  config.model.update(spec["model"])
  config.train.batch_size = spec["batch_size"]
  return config


def token_batch(spec: dict):
  """int32 [B, T + 1] random tokens, the same for both frameworks."""
  import numpy as np
  rng = np.random.default_rng(0)
  return rng.integers(0, VOCAB, (spec["batch_size"], spec["seq_len"] + 1), dtype=np.int32)


# ---------------------------------------------------------------- jaxdl worker

def jaxdl_step(spec: dict):
  """(step() -> loss to block on, params, versions): jaxdl's train step, compiled and warmed up.

  With jaxdl's CPU defaults, as `jaxdl train` applies them before JAX starts: freed memory kept
  for reuse (train.reuse_host_memory) and the host split into CPU devices with the batch sharded
  over them (parallel.cpu_devices), unless the environment sets JAXDL_BENCH_PLAIN=1.
  """
  import os
  from jaxdl import host_memory
  from jaxdl.train import cpu_devices
  config = experiment_config(spec)
  plain = os.environ.get("JAXDL_BENCH_PLAIN") == "1"
  if not plain:
    host_memory.configure("auto")
    cpu_devices.configure(config.parallel, [spec["batch_size"]])
  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from jaxdl import models
  from jaxdl.train import optim, tasks
  from jaxdl.train import step as step_lib

  model = models.build_model(config.model, {"vocab_size": VOCAB})
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps=config.train.num_steps)
  task = tasks.LanguageModelling()
  batch = {"tokens": jnp.asarray(token_batch(spec))}
  state = step_lib.create_train_state(model, tx, jax.random.key(config.seed),
                                      *task.model_inputs(batch))
  params = sum(x.size for x in jax.tree.leaves(state.params))
  train_step = jax.jit(step_lib.make_train_step(model, tx, schedule, task), donate_argnums=0)
  if jax.device_count() > 1:  # The trainer's data-parallel layout: batch split, state replicated.
    mesh = Mesh(jax.devices(), ("data",))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
  rng = jax.random.key(1)
  holder = {"state": state}  # The donated state threads from step to step, as in training.

  def step():
    holder["state"], metrics = train_step(holder["state"], batch, rng)
    return jax.block_until_ready(metrics["train/loss"])

  return step, params, {"jax": jax.__version__}


# ---------------------------------------------------------------- PyTorch worker

def torch_models():
  """The PyTorch models, defined only where torch is importable."""
  import torch
  from torch import nn
  from torch.nn import functional as F

  class CharLSTM(nn.Module):
    """Embedding -> dropout -> nn.LSTM (dropout between layers) -> dropout -> Linear."""

    def __init__(self, vocab_size, embed_dim, features, num_layers, dropout_rate):
      super().__init__()
      self.embed = nn.Embedding(vocab_size, embed_dim)
      self.drop = nn.Dropout(dropout_rate)
      self.lstm = nn.LSTM(embed_dim, features, num_layers, batch_first=True,
                          dropout=dropout_rate if num_layers > 1 else 0.0)
      self.head = nn.Linear(features, vocab_size)

    def forward(self, tokens_BT):
      y_BTH, _ = self.lstm(self.drop(self.embed(tokens_BT)))
      return self.head(self.drop(y_BTH))

  class Block(nn.Module):
    """nanoGPT's pre-LN block: x + attn(ln(x)), then x + mlp(ln(x)); fused qkv projection."""

    def __init__(self, width, num_heads, bias):
      super().__init__()
      self.num_heads = num_heads
      self.ln_1 = nn.LayerNorm(width, bias=bias)
      self.qkv = nn.Linear(width, 3 * width, bias=bias)
      self.proj = nn.Linear(width, width, bias=bias)
      self.ln_2 = nn.LayerNorm(width, bias=bias)
      self.fc = nn.Linear(width, 4 * width, bias=bias)
      self.fc_out = nn.Linear(4 * width, width, bias=bias)

    def forward(self, x_BTD):
      b, t, d = x_BTD.shape
      q, k, v = self.qkv(self.ln_1(x_BTD)).split(d, dim=2)
      heads = lambda z: z.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)
      y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
      x_BTD = x_BTD + self.proj(y.transpose(1, 2).reshape(b, t, d))
      return x_BTD + self.fc_out(F.gelu(self.fc(self.ln_2(x_BTD)), approximate="tanh"))

  class GPT(nn.Module):
    """nanoGPT: token + position embeddings -> blocks -> LayerNorm -> head tied to wte."""

    def __init__(self, vocab_size, block_size, num_layers, num_heads, embed_dim, use_bias):
      super().__init__()
      self.wte = nn.Embedding(vocab_size, embed_dim)
      self.wpe = nn.Embedding(block_size, embed_dim)
      self.blocks = nn.ModuleList(Block(embed_dim, num_heads, use_bias)
                                  for _ in range(num_layers))
      self.ln_f = nn.LayerNorm(embed_dim, bias=use_bias)
      for name, p in self.named_parameters():  # GPT-2's init, as jaxdl's GPT.
        if p.dim() >= 2:
          residual = name.endswith(("proj.weight", "fc_out.weight"))
          nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * num_layers) if residual else 0.02)

    def forward(self, tokens_BT):
      positions = torch.arange(tokens_BT.shape[1], device=tokens_BT.device)
      x_BTD = self.wte(tokens_BT) + self.wpe(positions)
      for block in self.blocks:
        x_BTD = block(x_BTD)
      return self.ln_f(x_BTD) @ self.wte.weight.T

  return CharLSTM, GPT


def torch_step(spec: dict):
  """(step() -> loss, params, versions): the PyTorch train step, warmed up by the caller."""
  import torch
  from torch.nn import functional as F

  torch.manual_seed(0)
  CharLSTM, GPT = torch_models()
  config = experiment_config(spec)
  m, opt = config.model, config.optimizer
  if m["name"] == "rnn_lm":
    model = CharLSTM(VOCAB, m["embed_dim"], m["features"], m["num_layers"], m["dropout_rate"])
  else:
    if m.get("dropout_rate", 0.0):
      raise ValueError("the PyTorch GPT here has no dropout; compare at dropout_rate=0")
    model = GPT(VOCAB, m["block_size"], m["num_layers"], m["num_heads"], m["embed_dim"],
                m["use_bias"])
  model.train()
  params = sum(p.numel() for p in model.parameters())
  if opt.name == "adamw":  # Decay only matrices (>= 2-d: kernels, embeddings), as jaxdl's mask.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps)
  else:
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2),
                                 eps=opt.eps)
  total, warmup, end = config.train.num_steps, opt.warmup_steps, opt.end_learning_rate

  def lr_factor(step):  # optax.warmup_cosine_decay_schedule, relative to the peak rate.
    if step < warmup:
      return step / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return (end + (opt.learning_rate - end) * cosine) / opt.learning_rate

  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
  tokens = torch.from_numpy(token_batch(spec)).long()
  inputs_BT, targets_BT = tokens[:, :-1], tokens[:, 1:]

  def step():
    logits_BTV = model(inputs_BT)
    loss = F.cross_entropy(logits_BTV.reshape(-1, VOCAB), targets_BT.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if opt.grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip_norm)
    optimizer.step()
    scheduler.step()
    return loss

  return step, params, {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def worker(framework: str, comparison: str, seconds: float, quick: bool) -> int:
  """Builds and warms up one step, then times it on every "run" read from stdin (JSON replies)."""
  spec = comparison_spec(comparison, quick)
  start = time.perf_counter()
  build = jaxdl_step if framework == "jaxdl" else torch_step
  step, params, versions = build(spec)
  first_loss = float(step())  # jaxdl: compiles here.
  step()
  setup = time.perf_counter() - start
  t0 = time.perf_counter()
  step()
  steps = max(MIN_STEPS, math.ceil(seconds / (time.perf_counter() - t0)))
  tokens = spec["batch_size"] * spec["seq_len"]
  emit = lambda **kv: print(json.dumps(kv), flush=True)
  emit(event="ready", framework=framework, comparison=comparison, params=params,
       setup_seconds=setup, first_loss=first_loss, steps_per_round=steps, tokens_per_step=tokens,
       **versions)
  for line in sys.stdin:
    if line.strip() != "run":
      break
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
      loss = step()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    # CPU time of all the worker's threads: wall time that other jobs took from it does not count,
    # time its threads spent spinning or working does.
    emit(event="round", tokens_per_sec=tokens * steps / elapsed, ms_per_step=1e3 * elapsed / steps,
         cpu_ms_per_step=1e3 * cpu / steps, loss=float(loss))
  return 0


# ---------------------------------------------------------------- Driver

class Worker:
  """A worker subprocess: started, read until ready, then asked for rounds."""

  def __init__(self, framework: str, comparison: str, args):
    cmd = [sys.executable, __file__, "--worker", framework, "--comparison", comparison,
           "--seconds", str(args.seconds)] + (["--quick"] if args.quick else [])
    self.framework = framework
    self.log = Path(args.log_dir) / f"{comparison}.{framework}.stderr"
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.log.open("w"), text=True, cwd=ROOT,
                                 env=worker_env(framework, args))
    self.info = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      self.proc.wait()
      raise RuntimeError(f"worker {self.framework} exited ({self.proc.returncode}); its stderr:\n"
                         + self.log.read_text()[-3000:])
    return json.loads(line)

  def run_round(self) -> dict:
    self.proc.stdin.write("run\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    if self.proc.poll() is None:
      self.proc.stdin.write("quit\n")
      self.proc.stdin.close()
      self.proc.wait(timeout=60)


def worker_env(framework: str, args) -> dict:
  """The worker's environment: the driver's, plus --omp-wait-policy (torch), --xla-flags (jaxdl)."""
  env = dict(os.environ)
  if framework == "torch" and args.omp_wait_policy != "default":
    env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
  if framework == "jaxdl" and args.xla_flags:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  env.update(args.env)
  return env


def available_frameworks() -> tuple[list[str], list[str]]:
  found, notes = [], []
  for name in FRAMEWORKS:
    module = "jax" if name == "jaxdl" else name
    if importlib.util.find_spec(module) is None:
      notes.append(f"{name}: not installed in {sys.executable}; skipped")
    else:
      found.append(name)
  return found, notes


def run_comparison(comparison: str, frameworks: list[str], args) -> list[dict]:
  """One row per framework: per-round tokens/s, their median, and jaxdl/torch per round."""
  spec = comparison_spec(comparison, args.quick)
  workers = []
  try:
    for framework in frameworks:  # One at a time: compiling does not overlap the other's setup.
      w = Worker(framework, comparison, args)
      print(f"ready     {spec['title']:34s} {framework:6s} params {w.info['params']:>9,}  "
            f"setup {w.info['setup_seconds']:5.1f} s  first loss {w.info['first_loss']:.3f}  "
            f"{w.info['steps_per_round']} steps/round", flush=True)
      workers.append(w)
    rounds = {w.framework: [] for w in workers}
    for r in range(args.rounds):
      first = r % len(workers)
      for w in workers[first:] + workers[:first]:
        rounds[w.framework].append(w.run_round())
      line = "  ".join(f"{w.framework} {rounds[w.framework][-1]['tokens_per_sec']:7.0f}"
                       for w in workers)
      print(f"round {r + 1}   {spec['title']:34s} tokens/s: {line}  load "
            f"{os.getloadavg()[0]:.2f}", flush=True)
  finally:
    for w in workers:
      w.close()
  rows = []
  for w in workers:
    tps = [x["tokens_per_sec"] for x in rounds[w.framework]]
    ratios = None
    if "torch" in rounds and w.framework == "jaxdl":
      # Paired: each round's jaxdl and torch ran back to back under the same load.
      ratios = [a["tokens_per_sec"] / b["tokens_per_sec"]
                for a, b in zip(rounds["jaxdl"], rounds["torch"])]
    rows.append({
        "comparison": comparison, "title": spec["title"], "framework": w.framework,
        "params": w.info["params"], "first_loss": w.info["first_loss"],
        "setup_seconds": w.info["setup_seconds"], "steps_per_round": w.info["steps_per_round"],
        "tokens_per_sec": statistics.median(tps),
        "ms_per_step": statistics.median(x["ms_per_step"] for x in rounds[w.framework]),
        "cpu_ms_per_step": statistics.median(x["cpu_ms_per_step"] for x in rounds[w.framework]),
        "round_tokens_per_sec": tps,
        "ratio": None if ratios is None else statistics.median(ratios), "round_ratios": ratios,
        "versions": {k: v for k, v in w.info.items() if k in ("jax", "torch", "torch_threads")}})
  return rows


def print_table(rows: list[dict], rounds: int) -> None:
  print(f"\nmedians over {rounds} round(s); jaxdl/torch = median over rounds of the ratio of "
        "tokens/s in the same round\n")
  print("| comparison | framework | params | tokens/s | ms/step | CPU ms/step | jaxdl/torch | "
        "per-round tokens/s (ratios) |")
  print("|:--|:--|--:|--:|--:|--:|--:|:--|")
  previous = None
  for row in rows:
    name = "" if row["title"] == previous else row["title"]
    previous = row["title"]
    ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
    per_round = " ".join(f"{x:.0f}" for x in row["round_tokens_per_sec"])
    if row["round_ratios"]:
      per_round += " (" + " ".join(f"{x:.2f}" for x in row["round_ratios"]) + ")"
    print(f"| {name} | {row['framework']} | {row['params']:,} | {row['tokens_per_sec']:.0f} | "
          f"{row['ms_per_step']:.1f} | {row['cpu_ms_per_step']:.1f} | {ratio} | {per_round} |")


def environment() -> dict:
  return {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "python": platform.python_version(), "executable": sys.executable,
      "platform": platform.platform(), "processor": platform.machine(),
      "cpu_count": os.cpu_count(),
      "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "load_average": os.getloadavg(),
  }


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
  p.add_argument("--seconds", type=float, default=None,
                 help="timed seconds per worker per round (default 3)")
  p.add_argument("--only", default=",".join(COMPARISONS),
                 help=f"comma-separated comparisons, from {', '.join(COMPARISONS)}")
  p.add_argument("--quick", action="store_true",
                 help="smoke run: 1 round, 0.5 s, small LSTMs (explicit options win)")
  p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
  p.add_argument("--omp-wait-policy", choices=("passive", "active", "default"), default="passive",
                 help="OMP_WAIT_POLICY of the torch worker (default passive; see the docstring)")
  p.add_argument("--xla-flags", default="", help="XLA_FLAGS added for the jaxdl worker")
  p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                 help="an environment variable for both workers (repeatable)")
  p.add_argument("--log-dir", default="/tmp", help="where the workers' stderr goes")
  p.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
  p.add_argument("--comparison", choices=list(COMPARISONS), help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  defaults = dict(rounds=1, seconds=0.5) if args.quick else dict(rounds=3, seconds=3.0)
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.rounds < 1 or args.seconds <= 0:
    p.error("--rounds and --seconds must be positive")
  args.only = [c.strip() for c in args.only.split(",") if c.strip()]
  unknown = [c for c in args.only if c not in COMPARISONS]
  if unknown:
    p.error(f"--only: unknown comparison(s) {unknown}; choose from {list(COMPARISONS)}")
  if any("=" not in item for item in args.env):
    p.error(f"--env takes KEY=VALUE, got {args.env}")
  args.env = dict(item.split("=", 1) for item in args.env)
  if args.worker and not args.comparison:
    p.error("--worker needs --comparison")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    return worker(args.worker, args.comparison, args.seconds, args.quick)
  env = environment()
  print(f"date      {env['date']}\npython    {env['python']} ({env['executable']}) on "
        f"{env['platform']}\ncpus      {env['cpu_count']} ({env['cpus_usable']} usable)\n"
        f"load avg  {' '.join(f'{x:.2f}' for x in env['load_average'])}\n")
  frameworks, notes = available_frameworks()
  omp = worker_env("torch", args).get("OMP_WAIT_POLICY", "")
  print(f"settings  torch OMP_WAIT_POLICY={omp!r}, "
        f"jaxdl XLA_FLAGS={worker_env('jaxdl', args).get('XLA_FLAGS', '')!r}, both {args.env}")
  for note in notes:
    print(f"note      {note}")
  start = time.perf_counter()
  rows = []
  for comparison in args.only:
    rows += run_comparison(comparison, frameworks, args)
  versions = {}
  for row in rows:
    versions.update(row["versions"])
  print_table(rows, args.rounds)
  print(f"\nversions  {versions}")
  for note in notes:
    print(f"note      {note}")
  total = time.perf_counter() - start
  print(f"total {total:.0f} s; load avg at the end {os.getloadavg()[0]:.2f}")
  if args.json:
    report = {"environment": env, "versions": versions, "notes": notes,
              "settings": {"rounds": args.rounds, "seconds": args.seconds, "quick": args.quick,
                           "omp_wait_policy": args.omp_wait_policy, "xla_flags": args.xla_flags,
                           "env": args.env,
                           "comparisons": {c: comparison_spec(c, args.quick) for c in args.only}},
              "summary": rows, "total_seconds": total}
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
