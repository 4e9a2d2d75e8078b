"""LoRA fine-tuning (jaxdl.train.lora) on a tiny GPT on the shipped Shakespeare text: step 0 is the
base model to the bit, only the adapters train and hold optimizer state, the merged parameters
compute what the low-rank branch x @ W + s * x @ A @ B computes, resume is exact, a scanned stack
gets one adapter per layer, and bad settings are refused.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import config as config_lib
from jaxdl import trainer
from jaxdl.checkpoint import Checkpointer
from jaxdl.errors import CheckpointError, ConfigError
from jaxdl.train import lora as lora_lib
from jaxdl.train import param_paths
from tests.test_sequence_training import EXPERIMENTS, TINY_GPT, _train_metrics

LORA = ["model.lora.rank=4", "model.lora.alpha=8.0", "model.use_bias=true"]
SHORT = ["train.num_steps=8", "train.log_every_steps=2", "train.checkpoint_every_steps=4"]


def _config(*overrides):
  config = config_lib.load_experiment(EXPERIMENTS / "shakespeare_char_gpt.py:cpu")
  config_lib.apply_overrides(config, [*TINY_GPT, *overrides])
  return config


def _initial_state(config):
  """The train state of step 0, as the trainer makes it (jitted: eagerly, XLA may round the
  initialisers' arithmetic otherwise)."""
  setup = trainer.build(config, trainer.load_data(config))
  return setup, setup.layout.to_saved(setup.init_loop())["state"]


def _saved_state(workdir, step):
  checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
  try:
    return checkpointer.restore_as_saved(step)["state"]
  finally:
    checkpointer.close()


def _tokens(n=2, length=32):
  return jax.random.randint(jax.random.key(7), (n, length), 0, 65)


def _same(a, b):
  """Whether two trees hold the same arrays, to the bit."""
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
    np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lora") / "run"
  trainer.train(_config(*LORA, *SHORT), workdir, show_progress=False)
  return workdir


def test_step_0_is_the_base_model_to_the_bit():
  config = _config(*LORA)
  setup, state = _initial_state(config)
  _, base_state = _initial_state(_config("model.use_bias=true"))
  assert _same(state.params, base_state.params)  # The adapters draw no key the model's init uses.
  lora = lora_lib.settings(config.model.lora)
  apply = jax.jit(lambda p, x: setup.model.apply({"params": p}, x, train=False))
  merged = lora_lib.merge(state.params, state.adapters, lora)
  tokens = _tokens()
  np.testing.assert_array_equal(apply(merged, tokens), apply(base_state.params, tokens))
  # A is random (like a Dense kernel) and B zero, so A @ B is zero and W + 0 is W.
  for pair in _pairs(state.adapters):
    assert np.std(pair["lora_a"]) > 0.1 and not np.any(pair["lora_b"])


def test_only_the_adapters_train_and_hold_optimizer_state(lora_run):
  _, initial = _initial_state(_config(*LORA, *SHORT))
  saved = _saved_state(lora_run, 8)
  assert _same(saved["params"], initial.params)  # The base is bit for bit what it was.
  b_trained = [a["lora_b"] for a in _pairs(saved["adapters"])]
  assert b_trained and all(np.any(b) for b in b_trained)  # Every adapter moved.
  adapter_paths = set(param_paths.named_leaves(saved["adapters"]))
  assert adapter_paths == {
    f"block_{i}/self_attn/{kind}/kernel/{ab}"
    for i in range(2)
    for kind in ("query", "value")
    for ab in ("lora_a", "lora_b")
  }
  # Adam's moments mirror the adapters; nothing of the base's shape is in the optimizer state.
  moments = {
    path.partition("/mu/")[2] or path.partition("/nu/")[2]
    for path, x in param_paths.named_leaves(saved["opt_state"]).items()
    if np.ndim(x)
  }
  assert moments == adapter_paths


def _pairs(adapters):
  return jax.tree.leaves(adapters, is_leaf=lambda x: isinstance(x, dict) and "lora_a" in x)


def test_merged_parameters_compute_the_low_rank_branch():
  """merge (W + s A @ B, what training, evaluation and export use) against the adapters applied
  as a branch beside each adapted layer, x @ W + s (x @ A) @ B (Hu et al.'s formula), with the
  attention's out projection [N, H, D] adapted too. The two orders of float32 arithmetic differ
  by rounding only: about 1e-7 relative per product, a few 1e-6 after two blocks and the head."""
  config = _config(*LORA, "model.lora.targets=['.*(query|value|out)/kernel']")
  setup, state = _initial_state(config)
  lora = lora_lib.settings(config.model.lora)
  keys = iter(jax.random.split(jax.random.key(1), 64))
  adapters = jax.tree.map(lambda x: 0.3 * jax.random.normal(next(keys), x.shape), state.adapters)
  flat = param_paths.named_leaves(adapters)
  tokens = _tokens()

  def branch(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = "/".join(context.module.path)
    if context.method_name != "__call__" or f"{path}/kernel/lora_a" not in flat:
      return out
    a, b = flat[f"{path}/kernel/lora_a"], flat[f"{path}/kernel/lora_b"]
    x_a = jnp.tensordot(args[0], a, axes=a.ndim - 1)
    return out + lora.scale * jnp.tensordot(x_a, b, axes=1)

  apply = jax.jit(lambda p, x: setup.model.apply({"params": p}, x, train=False))
  with nn.intercept_methods(branch):  # Traced (and so compiled) with the branch.
    expected = jax.jit(lambda p, x: setup.model.apply({"params": p}, x, train=False))(
      state.params, tokens
    )
  logits = apply(lora_lib.merge(state.params, adapters, lora), tokens)
  base = apply(state.params, tokens)
  assert np.max(np.abs(logits - base)) > 0.1  # The adapters change the model.
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_resume_is_bit_exact(lora_run, tmp_path):
  resumed = tmp_path / "resumed"
  trainer.train(_config(*LORA, *SHORT, "train.num_steps=4"), resumed, show_progress=False)
  trainer.train(_config(*LORA, *SHORT), resumed, show_progress=False)
  assert _train_metrics(resumed) == _train_metrics(lora_run)
  assert _same(_saved_state(resumed, 8), _saved_state(lora_run, 8))


def test_resume_refuses_another_lora_setting(lora_run):
  with pytest.raises(CheckpointError, match="model.lora.rank: saved 4, now 2"):
    trainer.train(_config(*LORA, *SHORT, "model.lora.rank=2"), lora_run, show_progress=False)


def test_a_scanned_stack_gets_one_adapter_per_layer_and_trains(tmp_path):
  scan = ["model.scan_layers=true", "train.num_steps=3", "runtime.steps_per_call=1"]
  trainer.train(_config(*LORA, *SHORT, *scan), tmp_path / "scan", show_progress=False)
  saved = _saved_state(tmp_path / "scan", 3)
  shapes = jax.tree.map(np.shape, saved["adapters"])
  assert shapes == {
    "layers": {
      "self_attn": {
        kind: {"kernel": {"lora_a": (2, 32, 4), "lora_b": (2, 4, 2, 16)}}
        for kind in ("query", "value")
      }
    }
  }
  for pair in _pairs(saved["adapters"]):  # Each layer's B moved off zero.
    assert all(np.any(b) for b in pair["lora_b"])


@pytest.mark.parametrize(
  "override, message",
  [
    ("model.lora.rank=-1", r"model.lora.rank=-1 must be a whole number >= 0"),
    ("model.lora.targets=['.*kwery/kernel']", r"matches no parameter path.*query/kernel"),
    ("model.lora.targets=['.*query/.*']", r"selects block_0/self_attn/query/bias .*not a kernel"),
    ("model.lora.alpha=0.0", r"model.lora.alpha=0.0 must be a positive number"),
  ],
)
def test_bad_settings_are_refused(override, message):
  with pytest.raises(ConfigError, match=message):
    _initial_state(_config(*LORA, override))


def test_summary_counts_the_adapters_as_trained_and_the_base_as_frozen():
  from jaxdl import models, summary  # pylint: disable=g-import-not-at-top

  model = models.build_model(
    {"name": "gpt", "num_layers": 2, "num_heads": 2, "embed_dim": 32, "block_size": 32},
    {"vocab_size": 65},
  )
  tokens = jax.ShapeDtypeStruct((1, 32), jnp.int32)
  lora = lora_lib.settings({"rank": 4})
  plain = summary.summarize(model, tokens, flops=False)
  adapted = summary.summarize(model, tokens, flops=False, lora=lora)
  adapters = 2 * 2 * (32 * 4 + 4 * 2 * 16)  # Layers x (query, value) x (A [D, r] + B [r, N, H]).
  assert adapted.frozen_params == plain.total_params
  assert adapted.total_params - adapted.frozen_params == adapters
  text = summary.format_summary(adapted)
  assert f"trained: {adapters}" in text and "block_1/self_attn/value/kernel/lora_b" in text
