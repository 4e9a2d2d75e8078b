"""CPU training throughput of jaxdl's char LSTM and char GPT against the same models in PyTorch
and in plain Flax.

Run (from the repository root, with the peers installed: `pip install -e ".[bench]"`):
    python benchmarks/sequence_peers.py
Options: --rounds 3 --seconds 3 --only lstm_char,gpt_char --frameworks jaxdl,torch,flax --quick
         --json OUT --omp-wait-policy passive|active|default --xla-flags "..."
         --env KEY=VALUE (repeatable)

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
         jaxdl.train.step.make_train_step(LanguageModelling()), jitted with the state donated,
         run as `jaxdl train` runs it: runtime.steps_per_call steps a call (auto: 16 on a CPU;
         JAXDL_BENCH_STEPS_PER_CALL=k overrides), each call run to block_until_ready. (jaxdl's
         step also computes the accuracy and the norms of the gradients, parameters and updates
         for its logs.)
  torch: eager PyTorch at its default thread count: nn.Embedding -> nn.LSTM(batch_first=True,
         dropout) -> nn.Linear, or a nanoGPT-style GPT written below (F.scaled_dot_product_attention
         with is_causal=True, GELU(tanh), LayerNorm(bias=False), tied head); F.cross_entropy,
         clip_grad_norm_, torch.optim.Adam / AdamW (decay on >= 2-d parameters, as nanoGPT) and a
         LambdaLR warmup + cosine schedule. PyTorch's LSTM has two bias vectors per layer
         (b_ih, b_hh) where jaxdl's has one, hence 2 x 4H more parameters per layer; the GPTs
         have equal counts. Every worker prints its count.
  flax:  plain Flax Linen + Optax, what a user writes without jaxdl: nn.Embed -> nn.RNN(
         nn.OptimizedLSTMCell) per layer (nn.Dropout as the torch model's) -> nn.Dense, or the
         torch GPT in Linen (fused qkv nn.Dense, nn.dot_product_attention with a causal mask,
         nn.gelu(approximate=True), nn.LayerNorm(use_bias=False), head tied by wte.attend, GPT-2's
         init); optax.softmax_cross_entropy_with_integer_labels, optax.chain(
         clip_by_global_norm, adam / adamw masked to >= 2-d parameters) on
         warmup_cosine_decay_schedule; jax.jit with the (params, opt_state, step) state donated
         (the step count folded into the dropout key), each step run to block_until_ready; XLA's
         and glibc's defaults, none of jaxdl's CPU settings. Its GPT has the torch GPT's count;
         OptimizedLSTMCell, like jaxdl's LSTM, has one bias vector per gate.
All train on one fixed batch of random tokens (the same numpy draw). Each framework runs in its
own worker process (`--worker NAME --comparison C`), which builds and warms up its step (compile,
first steps), fixes how many steps fill about `--seconds` (at least 2), prints a JSON line, and
then times that many steps each time the driver writes "run" on its stdin, answering with one JSON
line. The driver alternates the workers of a comparison for `--rounds` rounds, round r starting
with worker r (mod the number of workers), so that load drifting on the machine hits all alike;
only one worker computes at a time. The table gives medians over rounds of tokens/s, ms/step and
CPU ms/step (the CPU time of all the worker's threads per step: near ms/step x cores used; it
does not count time other jobs took), jaxdl/torch and jaxdl/flax as the medians of the per-round
ratios (the workers of a round ran one after the other), and each round's figures. It exits 0
whatever the numbers; a framework that is not installed (torch without the bench extra) is
skipped with a note.

Environment of the workers: the driver's, plus
  --omp-wait-policy (torch; default passive): OMP_WAIT_POLICY for PyTorch's OpenMP threads. With
      the default (active: threads spin at each barrier) and another job on one of 2 cores, a
      2-thread PyTorch step ran 20-40x slower (a 2-layer LSTM fwd+bwd: 3.1 s instead of 0.07 s),
      because a barrier waits for a thread that is not running. `active` or `default` on a quiet
      machine measures PyTorch as it ships.
  --xla-flags (jaxdl, flax): added to XLA_FLAGS.
  --env KEY=VALUE (all): e.g. glibc malloc settings (see benchmarks/README.md), which jaxdl sets
      for itself (runtime.reuse_host_memory) and the flax worker runs without.

Noise: the figures come from a VM whose 2 cores are shared with other jobs; one run's throughput
can move by 10-20% from the next, and by 2x when other jobs start or stop. Read the per-round
ratios.

Runtime, on 2 x86 CPU cores with the defaults: about 3 minutes for all three frameworks (186 s on
2026-11-29), 2-3 for jaxdl and torch alone. `--quick` (1 round, 0.5 s per worker, smaller LSTMs)
is a smoke run: 40-70 s for jaxdl and torch; 108 s for all three with another job on the cores.
"""

import os

# Before jax is imported (in the jaxdl worker): CPU figures, and a quiet log.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import datetime
import importlib.util
import json
import math
from pathlib import Path
import platform
import statistics
import subprocess
import sys
import time

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("jaxdl", "torch", "flax")
# Modules each framework's worker imports (jaxdl brings jax, flax and optax).
REQUIRES = {"jaxdl": ("jax",), "torch": ("torch",), "flax": ("flax", "optax")}
JAX_FRAMEWORKS = ("jaxdl", "flax")  # The workers that --xla-flags applies to.
MIN_STEPS = 2  # Timed steps per worker per round, however slow the step.
VOCAB = 65  # The char tokenizer's vocabulary on the shipped Shakespeare corpus.

# name: (experiment config file, variant, overrides of model / batch, description).
COMPARISONS = {
  "lstm_char": dict(
    experiment="shakespeare_char_lstm.py",
    variant="",
    model={},
    batch_size=32,
    seq_len=64,
    title="char LSTM 2x256, B=32, T=64",
  ),
  "lstm_big": dict(
    experiment="shakespeare_char_lstm.py",
    variant="",
    model={"features": 512},
    batch_size=32,
    seq_len=128,
    title="char LSTM 2x512, B=32, T=128",
  ),
  "gpt_char": dict(
    experiment="shakespeare_char_gpt.py",
    variant="cpu",
    model={},
    batch_size=12,
    seq_len=64,
    title="char GPT 4x128 (cpu), B=12, T=64",
  ),
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
  for reuse (runtime.reuse_host_memory), the host split into CPU devices with the batch sharded
  over them (parallel.cpu_devices), and several steps per call (runtime.steps_per_call; `step()`
  then runs that many and says so in `step.steps`), unless the environment sets
  JAXDL_BENCH_PLAIN=1.
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
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P
  import numpy as np

  from jaxdl import models
  from jaxdl.train import optim, tasks
  from jaxdl.train import step as step_lib

  model = models.build_model(config.model, {"vocab_size": VOCAB})
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps=config.train.num_steps)
  task = tasks.LanguageModelling()
  batch = {"tokens": jnp.asarray(token_batch(spec))}
  state = step_lib.create_train_state(
    model, tx, jax.random.key(config.seed), *task.model_inputs(batch)
  )
  params = sum(x.size for x in jax.tree.leaves(state.params))
  if jax.device_count() > 1:  # The trainer's data-parallel layout: batch split, state replicated.
    mesh = Mesh(jax.devices(), ("data",))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
  step_fn = step_lib.make_train_step(model, tx, schedule, task)
  k = int(os.environ.get("JAXDL_BENCH_STEPS_PER_CALL", 0)) or config.runtime.steps_per_call
  if not k:  # auto, as the trainer resolves it: these models have no convolutions.
    from jaxdl.train import steps_per_call

    k = 1 if plain or jax.default_backend() != "cpu" else steps_per_call.CPU_STEPS_PER_CALL
  if k == 1:
    train_step = jax.jit(step_fn, donate_argnums=0)
  else:  # The trainer's call of k steps, on the same batch k times.

    def update(state, sums, batch, rng):
      state, metrics = step_fn(state, batch, rng)
      return state, sums, metrics

    several = jax.jit(step_lib.steps_in_one_call(update), donate_argnums=0)
    stacked = jax.tree.map(lambda x: jnp.stack([x] * k), batch)
    called = []

    def train_step(state, batch, rng):
      del batch  # `stacked` holds it.
      # The first call runs one step (the same program: the count is an argument), so that the
      # worker's first loss is step 1's, as the peers'; the timed calls run k.
      n = k if called else 1
      called[:] = [True]
      state, _, metrics = several(state, (), stacked, np.int32(n), rng)
      return state, metrics

  rng = jax.random.key(1)
  holder = {"state": state}  # The donated state threads from step to step, as in training.

  def step():
    holder["state"], metrics = train_step(holder["state"], batch, rng)
    return jax.block_until_ready(metrics["train/loss"])

  step.steps = k
  return step, params, {"jax": jax.__version__, "steps_per_call": k}


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
      self.lstm = nn.LSTM(
        embed_dim,
        features,
        num_layers,
        batch_first=True,
        dropout=dropout_rate if num_layers > 1 else 0.0,
      )
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
      self.blocks = nn.ModuleList(Block(embed_dim, num_heads, use_bias) for _ in range(num_layers))
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
    model = GPT(
      VOCAB, m["block_size"], m["num_layers"], m["num_heads"], m["embed_dim"], m["use_bias"]
    )
  model.train()
  params = sum(p.numel() for p in model.parameters())
  if opt.name == "adamw":  # Decay only matrices (>= 2-d: kernels, embeddings), as jaxdl's mask.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
      [
        {"params": decay, "weight_decay": opt.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
      ],
      lr=opt.learning_rate,
      betas=(opt.b1, opt.b2),
      eps=opt.eps,
    )
  else:
    optimizer = torch.optim.Adam(
      model.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps
    )
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


# ---------------------------------------------------------------- Flax worker


def flax_models():
  """The models in plain Flax Linen, as a user would write them without jaxdl."""
  import flax.linen as nn
  import jax.numpy as jnp

  class CharLSTM(nn.Module):
    """Embed -> dropout -> nn.RNN(OptimizedLSTMCell) layers, dropout between -> dropout -> Dense."""

    vocab_size: int
    embed_dim: int
    features: int
    num_layers: int
    dropout_rate: float

    @nn.compact
    def __call__(self, tokens_BT, train: bool):
      drop = nn.Dropout(self.dropout_rate, deterministic=not train)
      x_BTD = drop(nn.Embed(self.vocab_size, self.embed_dim)(tokens_BT))
      for i in range(self.num_layers):
        x_BTD = nn.RNN(nn.OptimizedLSTMCell(self.features), name=f"lstm_{i}")(x_BTD)
        if i < self.num_layers - 1:  # Between layers, as nn.LSTM's dropout; the last gets `drop`.
          x_BTD = drop(x_BTD)
      return nn.Dense(self.vocab_size)(drop(x_BTD))

  class Block(nn.Module):
    """nanoGPT's pre-LN block, as the torch Block: fused qkv, causal attention, GELU(tanh) MLP."""

    num_heads: int
    num_layers: int  # For GPT-2's smaller init of the projections back into the residual stream.
    use_bias: bool

    @nn.compact
    def __call__(self, x_BTD):
      b, t, d = x_BTD.shape
      init = nn.initializers.normal(0.02)
      residual_init = nn.initializers.normal(0.02 / math.sqrt(2 * self.num_layers))
      dense = lambda n, kernel_init, name: nn.Dense(
        n, use_bias=self.use_bias, kernel_init=kernel_init, name=name
      )
      # epsilon 1e-5: PyTorch's (Flax's default is 1e-6).
      norm = lambda name: nn.LayerNorm(1e-5, use_bias=self.use_bias, name=name)
      qkv_BT3D = dense(3 * d, init, "qkv")(norm("ln_1")(x_BTD))
      heads = lambda z_BTD: z_BTD.reshape(b, t, self.num_heads, d // self.num_heads)
      q_BTHK, k_BTHK, v_BTHK = map(heads, jnp.split(qkv_BT3D, 3, axis=-1))
      y_BTHK = nn.dot_product_attention(
        q_BTHK, k_BTHK, v_BTHK, deterministic=True, mask=nn.make_causal_mask(x_BTD[..., 0])
      )
      x_BTD = x_BTD + dense(d, residual_init, "proj")(y_BTHK.reshape(b, t, d))
      h_BTF = nn.gelu(dense(4 * d, init, "fc")(norm("ln_2")(x_BTD)), approximate=True)
      return x_BTD + dense(d, residual_init, "fc_out")(h_BTF)

  class GPT(nn.Module):
    """nanoGPT: token + position embeddings -> blocks -> LayerNorm -> head tied to wte."""

    vocab_size: int
    block_size: int
    num_layers: int
    num_heads: int
    embed_dim: int
    use_bias: bool

    @nn.compact
    def __call__(self, tokens_BT, train: bool):
      del train  # No dropout: compared at dropout_rate=0, as the torch GPT.
      init = nn.initializers.normal(0.02)
      wte = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=init, name="wte")
      wpe = nn.Embed(self.block_size, self.embed_dim, embedding_init=init, name="wpe")
      x_BTD = wte(tokens_BT) + wpe(jnp.arange(tokens_BT.shape[1]))
      for i in range(self.num_layers):
        x_BTD = Block(self.num_heads, self.num_layers, self.use_bias, name=f"block_{i}")(x_BTD)
      return wte.attend(nn.LayerNorm(1e-5, use_bias=self.use_bias, name="ln_f")(x_BTD))

  return CharLSTM, GPT


def flax_model(m):
  """The Flax model for the experiment's `model` config section."""
  CharLSTM, GPT = flax_models()
  if m["name"] == "rnn_lm":
    return CharLSTM(VOCAB, m["embed_dim"], m["features"], m["num_layers"], m["dropout_rate"])
  if m.get("dropout_rate", 0.0):
    raise ValueError("the Flax GPT here has no dropout; compare at dropout_rate=0")
  return GPT(VOCAB, m["block_size"], m["num_layers"], m["num_heads"], m["embed_dim"], m["use_bias"])


def flax_optimizer(opt, total_steps: int):
  """Clipping, then Adam or AdamW on the torch worker's warmup + cosine schedule."""
  import jax
  import optax

  schedule = optax.warmup_cosine_decay_schedule(
    0.0, opt.learning_rate, opt.warmup_steps, total_steps, opt.end_learning_rate
  )
  if opt.name == "adamw":  # Decay only matrices (>= 2-d: kernels, embeddings), as torch's groups.
    matrices = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    adam = optax.adamw(
      schedule, opt.b1, opt.b2, opt.eps, weight_decay=opt.weight_decay, mask=matrices
    )
  else:
    adam = optax.adam(schedule, opt.b1, opt.b2, opt.eps)
  if opt.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adam)
  return adam


def flax_step(spec: dict):
  """(step() -> loss to block on, params, versions): Flax Linen + Optax, jitted, state donated."""
  import flax
  import jax
  import jax.numpy as jnp
  import optax

  config = experiment_config(spec)
  model = flax_model(config.model)
  tx = flax_optimizer(config.optimizer, config.train.num_steps)
  tokens = jnp.asarray(token_batch(spec))
  inputs_BT, targets_BT = tokens[:, :-1], tokens[:, 1:]
  # Jitted: op by op (each op compiled alone) the GPT's init took 7 s here, jitted 3-5 s.
  init = jax.jit(lambda key: model.init(key, inputs_BT, train=False)["params"])
  params = init(jax.random.key(config.seed))
  dropout_key = jax.random.key(1)

  def train_step(state, inputs_BT, targets_BT):
    params, opt_state, step = state

    def loss_fn(params):
      # A fresh dropout mask each step: the step count, carried in the state, folded into a key.
      rngs = {"dropout": jax.random.fold_in(dropout_key, step)}
      logits_BTV = model.apply({"params": params}, inputs_BT, train=True, rngs=rngs)
      return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, step + 1), loss

  train_step = jax.jit(train_step, donate_argnums=0)
  count = sum(x.size for x in jax.tree.leaves(params))
  holder = {"state": (params, tx.init(params), jnp.zeros((), jnp.int32))}

  def step():
    holder["state"], loss = train_step(holder["state"], inputs_BT, targets_BT)
    return jax.block_until_ready(loss)

  return step, count, {"jax": jax.__version__, "flax": flax.__version__}


def worker(framework: str, comparison: str, seconds: float, quick: bool) -> int:
  """Builds and warms up one step, then times it on every "run" read from stdin (JSON replies)."""
  spec = comparison_spec(comparison, quick)
  start = time.perf_counter()
  build = {"jaxdl": jaxdl_step, "torch": torch_step, "flax": flax_step}[framework]
  step, params, versions = build(spec)
  first_loss = float(step())  # jaxdl, flax: compile here.
  step()
  setup = time.perf_counter() - start
  t0 = time.perf_counter()
  step()
  calls = max(MIN_STEPS, math.ceil(seconds / (time.perf_counter() - t0)))
  steps_per_call = getattr(step, "steps", 1)  # jaxdl runs several steps a call.
  steps, tokens = calls * steps_per_call, spec["batch_size"] * spec["seq_len"]
  emit = lambda **kv: print(json.dumps(kv), flush=True)
  emit(
    event="ready",
    framework=framework,
    comparison=comparison,
    params=params,
    setup_seconds=setup,
    first_loss=first_loss,
    steps_per_round=steps,
    tokens_per_step=tokens,
    **versions,
  )
  for line in sys.stdin:
    if line.strip() != "run":
      break
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
      loss = step()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    # CPU time of all the worker's threads: wall time that other jobs took from it does not count,
    # time its threads spent spinning or working does.
    emit(
      event="round",
      tokens_per_sec=tokens * steps / elapsed,
      ms_per_step=1e3 * elapsed / steps,
      cpu_ms_per_step=1e3 * cpu / steps,
      loss=float(loss),
    )
  return 0


# ---------------------------------------------------------------- Driver


class Worker:
  """A worker subprocess: started, read until ready, then asked for rounds."""

  def __init__(self, framework: str, comparison: str, args):
    cmd = [
      sys.executable,
      __file__,
      "--worker",
      framework,
      "--comparison",
      comparison,
      "--seconds",
      str(args.seconds),
    ] + (["--quick"] if args.quick else [])
    self.framework = framework
    self.log = Path(args.log_dir) / f"{comparison}.{framework}.stderr"
    self.proc = subprocess.Popen(
      cmd,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self.log.open("w"),
      text=True,
      cwd=ROOT,
      env=worker_env(framework, args),
    )
    self.info = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      self.proc.wait()
      raise RuntimeError(
        f"worker {self.framework} exited ({self.proc.returncode}); its stderr:\n"
        + self.log.read_text()[-3000:]
      )
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
  """The worker's environment: the driver's, plus --omp-wait-policy (torch), --xla-flags (jaxdl,
  flax)."""
  env = dict(os.environ)
  if framework == "torch" and args.omp_wait_policy != "default":
    env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
  if framework in JAX_FRAMEWORKS and args.xla_flags:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  env.update(args.env)
  return env


def available_frameworks(selected=FRAMEWORKS) -> tuple[list[str], list[str]]:
  """(the selected frameworks whose modules import here, notes on those skipped)."""
  found, notes = [], []
  for name in selected:
    missing = [m for m in REQUIRES[name] if importlib.util.find_spec(m) is None]
    if missing:
      notes.append(f"{name}: {', '.join(missing)} not installed in {sys.executable}; skipped")
    else:
      found.append(name)
  return found, notes


def run_comparison(comparison: str, frameworks: list[str], args) -> list[dict]:
  """One row per framework: per-round tokens/s, their median, and jaxdl/peer per round."""
  spec = comparison_spec(comparison, args.quick)
  workers = []
  try:
    for framework in frameworks:  # One at a time: compiling does not overlap the other's setup.
      w = Worker(framework, comparison, args)
      print(
        f"ready     {spec['title']:34s} {framework:6s} params {w.info['params']:>9,}  "
        f"setup {w.info['setup_seconds']:5.1f} s  first loss {w.info['first_loss']:.3f}  "
        f"{w.info['steps_per_round']} steps/round",
        flush=True,
      )
      workers.append(w)
    rounds = {w.framework: [] for w in workers}
    for r in range(args.rounds):
      first = r % len(workers)
      for w in workers[first:] + workers[:first]:
        rounds[w.framework].append(w.run_round())
      line = "  ".join(
        f"{w.framework} {rounds[w.framework][-1]['tokens_per_sec']:7.0f}" for w in workers
      )
      print(
        f"round {r + 1}   {spec['title']:34s} tokens/s: {line}  load {os.getloadavg()[0]:.2f}",
        flush=True,
      )
  finally:
    for w in workers:
      w.close()
  paired = paired_ratios(rounds)
  rows = []
  for w in workers:
    tps = [x["tokens_per_sec"] for x in rounds[w.framework]]
    round_ratios = paired if w.framework == "jaxdl" else {}  # The ratios live on jaxdl's row.
    rows.append(
      {
        "comparison": comparison,
        "title": spec["title"],
        "framework": w.framework,
        "params": w.info["params"],
        "first_loss": w.info["first_loss"],
        "setup_seconds": w.info["setup_seconds"],
        "steps_per_round": w.info["steps_per_round"],
        "tokens_per_sec": statistics.median(tps),
        "ms_per_step": statistics.median(x["ms_per_step"] for x in rounds[w.framework]),
        "cpu_ms_per_step": statistics.median(x["cpu_ms_per_step"] for x in rounds[w.framework]),
        "round_tokens_per_sec": tps,
        "ratios": {peer: statistics.median(xs) for peer, xs in round_ratios.items()},
        "round_ratios": round_ratios,
        "versions": {
          k: v for k, v in w.info.items() if k in ("jax", "flax", "torch", "torch_threads")
        },
      }
    )
  return rows


def paired_ratios(rounds: dict[str, list[dict]]) -> dict[str, list[float]]:
  """{peer: [jaxdl tokens/s / peer tokens/s, one per round]} for every peer that ran with jaxdl.

  Paired: each round's workers ran one after the other under about the same load.
  """
  if "jaxdl" not in rounds:
    return {}
  return {
    peer: [a["tokens_per_sec"] / b["tokens_per_sec"] for a, b in zip(rounds["jaxdl"], runs)]
    for peer, runs in rounds.items()
    if peer != "jaxdl"
  }


def print_table(rows: list[dict], rounds: int) -> None:
  """A markdown table: one row per comparison and framework, a jaxdl/peer column per peer."""
  peers = [f for f in FRAMEWORKS if any(f in row["ratios"] for row in rows)]
  print(
    f"\nmedians over {rounds} round(s); jaxdl/peer = median over rounds of the ratio of "
    "tokens/s in the same round\n"
  )
  print(
    "| comparison | framework | params | tokens/s | ms/step | CPU ms/step | "
    + "".join(f"jaxdl/{p} | " for p in peers)
    + "per-round tokens/s (ratios) |"
  )
  print("|:--|:--|--:|--:|--:|--:|" + "--:|" * len(peers) + ":--|")
  previous = None
  for row in rows:
    name = "" if row["title"] == previous else row["title"]
    previous = row["title"]
    ratios = "".join(f"{row['ratios'][p]:.2f} | " if p in row["ratios"] else " | " for p in peers)
    per_round = " ".join(f"{x:.0f}" for x in row["round_tokens_per_sec"])
    if row["round_ratios"]:
      per_round += (
        " ("
        + "; ".join(
          f"{p} " + " ".join(f"{x:.2f}" for x in xs) for p, xs in row["round_ratios"].items()
        )
        + ")"
      )
    print(
      f"| {name} | {row['framework']} | {row['params']:,} | {row['tokens_per_sec']:.0f} | "
      f"{row['ms_per_step']:.1f} | {row['cpu_ms_per_step']:.1f} | {ratios}{per_round} |"
    )


def environment() -> dict:
  return {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "python": platform.python_version(),
    "executable": sys.executable,
    "platform": platform.platform(),
    "processor": platform.machine(),
    "cpu_count": os.cpu_count(),
    "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "load_average": os.getloadavg(),
  }


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
  p.add_argument(
    "--seconds", type=float, default=None, help="timed seconds per worker per round (default 3)"
  )
  p.add_argument(
    "--only",
    default=",".join(COMPARISONS),
    help=f"comma-separated comparisons, from {', '.join(COMPARISONS)}",
  )
  p.add_argument(
    "--frameworks",
    default=",".join(FRAMEWORKS),
    help=f"comma-separated frameworks, from {', '.join(FRAMEWORKS)} (default all)",
  )
  p.add_argument(
    "--quick",
    action="store_true",
    help="smoke run: 1 round, 0.5 s, small LSTMs (explicit options win)",
  )
  p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
  p.add_argument(
    "--omp-wait-policy",
    choices=("passive", "active", "default"),
    default="passive",
    help="OMP_WAIT_POLICY of the torch worker (default passive; see the docstring)",
  )
  p.add_argument("--xla-flags", default="", help="XLA_FLAGS added for the jaxdl and flax workers")
  p.add_argument(
    "--env",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="an environment variable for every worker (repeatable)",
  )
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
  args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
  unknown = [f for f in args.frameworks if f not in FRAMEWORKS]
  if unknown or not args.frameworks:
    p.error(f"--frameworks: got {args.frameworks}; choose one or more of {list(FRAMEWORKS)}")
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
  print(
    f"date      {env['date']}\npython    {env['python']} ({env['executable']}) on "
    f"{env['platform']}\ncpus      {env['cpu_count']} ({env['cpus_usable']} usable)\n"
    f"load avg  {' '.join(f'{x:.2f}' for x in env['load_average'])}\n"
  )
  frameworks, notes = available_frameworks(args.frameworks)
  omp = worker_env("torch", args).get("OMP_WAIT_POLICY", "")
  print(
    f"settings  torch OMP_WAIT_POLICY={omp!r}, "
    f"jaxdl/flax XLA_FLAGS={worker_env('jaxdl', args).get('XLA_FLAGS', '')!r}, "
    f"all {args.env}"
  )
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
    report = {
      "environment": env,
      "versions": versions,
      "notes": notes,
      "settings": {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "quick": args.quick,
        "frameworks": frameworks,
        "omp_wait_policy": args.omp_wait_policy,
        "xla_flags": args.xla_flags,
        "env": args.env,
        "comparisons": {c: comparison_spec(c, args.quick) for c in args.only},
      },
      "summary": rows,
      "total_seconds": total,
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
