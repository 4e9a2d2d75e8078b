"""Sampling text from a trained language model: `jaxdl generate WORKDIR --prompt ...`.

Every jaxdl language model follows one decode protocol: called with `decode=True`, it keeps what it
needs to continue a sequence in the "cache" variable collection (the keys and values of a
Transformer's attention, the carry of an LSTM), so the prompt is read once and each new token costs
one step. `generate` drives any such model; the same seed gives the same tokens.
"""

import functools
import inspect
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl import paths
from jaxdl import sweep as sweep_lib
from jaxdl import workdir as workdir_lib
from jaxdl.checkpoint import Checkpointer
from jaxdl.errors import CheckpointError, UserError
from jaxdl.train import lora


def _fresh_cache(model, cache_length: int) -> Any:
  """An empty cache for a batch of one sequence of up to `cache_length` tokens."""
  shapes = jax.eval_shape(
    functools.partial(model.init, decode=True),
    jax.random.key(0),
    jnp.zeros((1, cache_length), jnp.int32),
  )["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def generate(
  model,
  params: Any,
  prompt_ids: np.ndarray,
  *,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_k: int = 0,
  seed: int = 0,
) -> np.ndarray:
  """Samples `max_new_tokens` token ids continuing `prompt_ids` (int [T0], T0 >= 1).

  temperature 0 picks the most likely token; top_k > 0 samples among the k most likely. A model
  with a fixed context (`block_size`, as GPT has) sees at most its last `block_size` tokens: when
  its cache is full, the newest half of the context is read again into a fresh cache.
  """
  prompt_ids = np.asarray(prompt_ids, np.int32).reshape(-1)
  if prompt_ids.size == 0:
    raise UserError("The prompt is empty; give at least one character to start from.")
  if max_new_tokens < 0 or temperature < 0 or top_k < 0:
    raise UserError("max_new_tokens, temperature and top_k must not be negative.")
  max_context = getattr(model, "block_size", None)  # None: a recurrent model, no limit.
  cache_length = max_context or 1

  @jax.jit
  def forward(params, cache, chunk_1L):
    logits_1LV, variables = model.apply(
      {"params": params, "cache": cache}, chunk_1L, decode=True, mutable=["cache"]
    )
    return logits_1LV[0, -1].astype(jnp.float32), variables["cache"]

  @jax.jit
  def pick(logits_V, key):
    if temperature == 0:
      return jnp.argmax(logits_V).astype(jnp.int32)
    logits_V = logits_V / temperature
    if top_k:
      kth_largest = jax.lax.top_k(logits_V, min(top_k, logits_V.shape[-1]))[0][-1]
      logits_V = jnp.where(logits_V < kth_largest, -jnp.inf, logits_V)
    return jax.random.categorical(key, logits_V).astype(jnp.int32)

  def read(context: list[int]):
    return forward(params, _fresh_cache(model, cache_length), jnp.asarray([context], jnp.int32))

  tokens = prompt_ids.tolist()
  context = tokens[-max_context:] if max_context else tokens
  logits_V, cache = read(context)
  used = len(context)  # Positions of the cache holding tokens.
  key = jax.random.key(seed)
  for i in range(max_new_tokens):
    token = int(pick(logits_V, jax.random.fold_in(key, i)))
    tokens.append(token)
    if i == max_new_tokens - 1:
      break
    if max_context and used == max_context:
      context = tokens[-(max_context // 2) :]
      logits_V, cache = read(context)
      used = len(context)
    else:
      logits_V, cache = forward(params, cache, jnp.asarray([[token]], jnp.int32))
      used += 1
  return np.asarray(tokens[len(prompt_ids) :], np.int32)


def generate_from_workdir(
  workdir: str | os.PathLike,
  prompt: str,
  *,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_k: int = 0,
  seed: int = 0,
  step: int | None = None,
  member: int = 0,
) -> str:
  """Text sampled from the checkpoint at `step` (default: the latest) of a language-model run;
  for a sweep's workdir (jaxdl.sweep), from its member `member`."""
  from jaxdl import models  # pylint: disable=g-import-not-at-top

  workdir = paths.workdir_path(workdir)
  config = workdir_lib.load_config(workdir)
  tokenizer = workdir_lib.load_tokenizer(workdir)
  model = models.build_model(config.model, {"vocab_size": tokenizer.vocab_size})
  if "decode" not in _call_arguments(model):
    raise UserError(
      f"Model {config.model.name!r} of {workdir} is not a language model with a "
      "decode mode; `jaxdl generate` samples from language models (gpt, rnn_lm)."
    )
  checkpointer = Checkpointer(workdir / workdir_lib.CHECKPOINT_DIR, read_only=True)
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise CheckpointError(f"{workdir} has no checkpoints yet; train it first.")
    saved = checkpointer.restore_as_saved(steps[-1] if step is None else step)["state"]
    params = saved["params"]
    if saved.get("adapters"):  # LoRA: the adapters merged into their kernels.
      params = lora.merge(params, saved["adapters"], config.model.get("lora") or {})
  finally:
    checkpointer.close()
  members = sweep_lib.members(config)
  if members is not None:  # Every array has a leading member axis.
    if not 0 <= member < len(members):
      raise UserError(
        f"--member {member}: the sweep in {workdir} has members 0 to {len(members) - 1}."
      )
    params = jax.tree.map(lambda x: x[member], params)
  prompt_ids = tokenizer.encode(prompt)
  new_ids = generate(
    model,
    params,
    prompt_ids,
    max_new_tokens=max_new_tokens,
    temperature=temperature,
    top_k=top_k,
    seed=seed,
  )
  return prompt + tokenizer.decode(new_ids)


def _call_arguments(model) -> tuple[str, ...]:
  return tuple(inspect.signature(type(model).__call__).parameters)
