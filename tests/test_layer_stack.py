"""Remat and scan over layers (jaxdl.nn.remat, jaxdl.nn.layer_stack): the same functions as the
plain models. Remat's gradients equal the plain ones to the bit on the CPU (the same ops); a scanned
stack sums in another order inside XLA's loop, so it equals the unrolled one to float rounding:
logits to 1e-6 relative, gradients to 1e-5 of their largest entry."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import summary, transfer
from jaxdl.nn.bert import BertClassifier
from jaxdl.nn.densenet import DenseNet
from jaxdl.nn.dropout import Dropout
from jaxdl.nn.gpt import GPT
from jaxdl.nn.layer_stack import LAYERS
from jaxdl.nn.remat import REMAT_POLICIES
from jaxdl.nn.resnet import CifarResNet, ResNet
from jaxdl.nn.seq2seq import Seq2SeqTransformer, greedy_decode
from jaxdl.nn.vit import ViT
from jaxdl.train import optim
from jaxdl.train.layer_forms import like_layers, scan_layers, unscan_layers

TOKENS_BT = jax.random.randint(jax.random.key(0), (2, 12), 1, 50)
IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
GPT_KW = dict(vocab_size=50, block_size=16, num_layers=3, num_heads=2, embed_dim=16)
# (model class, fields, inputs, the unrolled blocks' prefix)
TRANSFORMERS = {
  "gpt": (GPT, GPT_KW, (TOKENS_BT,), "block"),
  "bert": (
    BertClassifier,
    dict(vocab_size=50, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, max_length=16),
    (TOKENS_BT,),
    "block",
  ),
  "vit": (
    ViT,
    dict(image_size=16, patch_size=4, embed_dim=16, num_layers=2, num_heads=2, mlp_dim=32),
    (IMAGES,),
    "blocks",
  ),
  "transformer": (
    Seq2SeqTransformer,
    dict(vocab_size=50, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_length=16),
    (TOKENS_BT, TOKENS_BT[:, :8]),
    "block",
  ),
}


def _max_abs(tree):
  return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


def _assert_close(a, b, rel):
  """Every leaf of `a` equals `b`'s to rel times the largest entry of `a`."""
  scale = _max_abs(a)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=rel * scale), a, b)


def _loss(model, params, inputs):
  logits = model.apply({"params": params}, *inputs)
  return jnp.mean(jax.nn.log_softmax(logits) * jnp.cos(jnp.arange(logits.shape[-1])))


@pytest.mark.parametrize(
  "name", ["gpt"] + [pytest.param(n, marks=pytest.mark.slow) for n in TRANSFORMERS if n != "gpt"]
)
def test_scanned_stack_computes_what_the_unrolled_one_does(name):
  cls, kw, inputs, prefix = TRANSFORMERS[name]
  unrolled, scanned = cls(**kw), cls(**kw, scan_layers=True)
  params = nn.unbox(unrolled.init(jax.random.key(1), *inputs))["params"]
  stacked = scan_layers(params, prefix)
  # One entry with a leading layer axis instead of one per layer, with the same parameters.
  assert jax.tree.structure(stacked) == jax.tree.structure(
    nn.unbox(scanned.init(jax.random.key(1), *inputs))["params"]
  )
  assert summary.summarize(scanned, inputs, flops=False).total_params == sum(
    x.size for x in jax.tree.leaves(params)
  )
  logits = jax.jit(unrolled.apply)({"params": params}, *inputs)
  np.testing.assert_allclose(
    jax.jit(scanned.apply)({"params": stacked}, *inputs),
    logits,
    rtol=0,
    atol=1e-6 * _max_abs(logits),
  )
  grads = jax.jit(jax.grad(lambda p: _loss(unrolled, p, inputs)))(params)
  scanned_grads = jax.jit(jax.grad(lambda p: _loss(scanned, p, inputs)))(stacked)
  _assert_close(grads, unscan_layers(scanned_grads, prefix), 1e-5)
  # The conversion goes back exactly.
  back = unscan_layers(stacked, prefix)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)


@pytest.mark.parametrize(
  "policy, scan",
  [("full", False), ("dots_saveable", True)]
  + [
    pytest.param(p, s, marks=pytest.mark.slow)
    for p in REMAT_POLICIES
    for s in (False, True)
    if p != "none" and (p, s) not in (("full", False), ("dots_saveable", True))
  ],
)
def test_remat_gradients_equal_the_plain_ones_to_the_bit(policy, scan):
  plain, rematted = GPT(**GPT_KW, scan_layers=scan), GPT(**GPT_KW, scan_layers=scan, remat=policy)
  params = nn.unbox(plain.init(jax.random.key(1), TOKENS_BT))["params"]
  assert jax.tree.structure(params) == jax.tree.structure(
    nn.unbox(rematted.init(jax.random.key(1), TOKENS_BT))["params"]
  )
  grad = lambda model: jax.jit(jax.grad(lambda p: _loss(model, p, (TOKENS_BT,))))(params)
  jax.tree.map(np.testing.assert_array_equal, grad(rematted), grad(plain))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "vit", "transformer"])
def test_remat_on_every_transformer_keeps_the_gradient(name):
  """To float rounding: XLA fuses the recomputed erf-GELU and post-LN blocks otherwise."""
  cls, kw, inputs, _ = TRANSFORMERS[name]
  params = nn.unbox(cls(**kw).init(jax.random.key(1), *inputs))["params"]
  grad = lambda model: jax.jit(jax.grad(lambda p: _loss(model, p, inputs)))(params)
  _assert_close(grad(cls(**kw)), grad(cls(**kw, remat="full")), 1e-5)


@pytest.mark.parametrize(
  "cls, kw",
  [
    (CifarResNet, dict(depth=8)),
    pytest.param(
      ResNet, dict(depth=18, width=8, stem="cifar", num_classes=10), marks=pytest.mark.slow
    ),
    # 58 dense layers: two minutes of compiling on two cores.
    pytest.param(
      DenseNet,
      dict(depth=121, growth_rate=4, num_init_features=8, num_classes=10),
      marks=pytest.mark.slow,
    ),
  ],
)
def test_remat_of_conv_blocks_keeps_gradients_and_batch_statistics(cls, kw):
  images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = nn.unbox(cls(**kw).init(jax.random.key(1), images))

  def loss_and_stats(model):
    def loss(params):
      logits, new = model.apply(
        {**variables, "params": params}, images, train=True, mutable=["batch_stats"]
      )
      return _loss_of(logits), new

    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

  grads, stats = loss_and_stats(cls(**kw, remat="full"))
  plain_grads, plain_stats = loss_and_stats(cls(**kw))
  jax.tree.map(np.testing.assert_array_equal, grads, plain_grads)
  jax.tree.map(np.testing.assert_array_equal, stats, plain_stats)


def _loss_of(logits):
  return jnp.mean(jax.nn.log_softmax(logits) * jnp.cos(jnp.arange(logits.shape[-1])))


def test_an_unknown_remat_policy_names_the_choices():
  with pytest.raises(ValueError, match=r"remat='some'.*'full'.*'dots_saveable'"):
    GPT(**GPT_KW, remat="some").init(jax.random.key(0), TOKENS_BT)
  with pytest.raises(ValueError, match="remat='all'"):
    CifarResNet(depth=8, remat="all").init(jax.random.key(0), IMAGES)


def test_scanned_dropout_follows_the_rng_and_differs_between_layers():
  model = GPT(**GPT_KW, dropout_rate=0.5, scan_layers=True, remat="full")
  params = nn.unbox(model.init(jax.random.key(1), TOKENS_BT))["params"]

  def run(seed):
    return model.apply(
      {"params": params},
      TOKENS_BT,
      train=True,
      rngs={"dropout": jax.random.key(seed)},
      capture_intermediates=lambda module, _: isinstance(module, Dropout),
      mutable=["intermediates"],
    )

  (logits, kept), (again, _), (other, _) = run(0), run(0), run(1)
  np.testing.assert_array_equal(logits, again)
  assert not np.allclose(logits, other)
  # The MLP branch's dropout of each layer, stacked [L, B, T, D]: every layer drops its own units
  # (a key shared by the layers would drop the same positions in each).
  mlp_out_LBTD = kept["intermediates"][LAYERS]["Dropout_1"]["__call__"][0]
  dropped_L = [np.asarray(x == 0) for x in mlp_out_LBTD]
  assert all(0.3 < d.mean() < 0.7 for d in dropped_L)
  assert not np.array_equal(dropped_L[0], dropped_L[1])
  assert not np.array_equal(dropped_L[1], dropped_L[2])


def _greedy(model, params, prompt_BP, steps):
  cache = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((2, 16), jnp.int32), decode=True)["cache"]
  )
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache)
  step = jax.jit(
    lambda cache, tokens: model.apply(
      {"params": params, "cache": cache}, tokens, decode=True, mutable=["cache"]
    )
  )
  logits, state = step(cache, prompt_BP)
  tokens = []
  for _ in range(steps):
    token_B1 = jnp.argmax(logits[:, -1], axis=-1)[:, None]
    tokens.append(token_B1)
    logits, state = step(state["cache"], token_B1)
  return jnp.concatenate(tokens, axis=1), logits


def test_kv_cache_decoding_through_a_scanned_stack():
  unrolled, scanned = GPT(**GPT_KW), GPT(**GPT_KW, scan_layers=True)
  params = nn.unbox(unrolled.init(jax.random.key(1), TOKENS_BT))["params"]
  cache = nn.unbox(scanned.init(jax.random.key(0), jnp.zeros((2, 16), jnp.int32), decode=True))[
    "cache"
  ]
  assert cache[LAYERS]["self_attn"]["cached_key"].shape == (3, 2, 16, 2, 8)  # [L, B, S, K, H]
  tokens, logits = _greedy(unrolled, params, TOKENS_BT[:, :4], 8)
  scanned_tokens, scanned_logits = _greedy(scanned, scan_layers(params), TOKENS_BT[:, :4], 8)
  np.testing.assert_array_equal(scanned_tokens, tokens)
  np.testing.assert_allclose(scanned_logits, logits, rtol=0, atol=1e-5 * _max_abs(logits))
  # And the cached decoder equals the full forward pass of the scanned model.
  full = scanned.apply(
    {"params": scan_layers(params)}, jnp.concatenate([TOKENS_BT[:, :4], tokens], 1)
  )
  np.testing.assert_allclose(scanned_logits[:, -1], full[:, -1], rtol=0, atol=1e-5 * _max_abs(full))


def test_seq2seq_greedy_decoding_with_a_scanned_decoder():
  cls, kw, (src, _), _ = TRANSFORMERS["transformer"]
  unrolled, scanned = cls(**kw), cls(**kw, scan_layers=True)
  params = nn.unbox(unrolled.init(jax.random.key(1), src, src[:, :4]))["params"]
  decode = lambda model, p, cache: greedy_decode(
    model, p, src, bos_id=1, eos_id=2, max_len=10, use_cache=cache
  )
  expected = decode(unrolled, params, False)
  np.testing.assert_array_equal(decode(scanned, scan_layers(params), True), expected)
  np.testing.assert_array_equal(decode(scanned, scan_layers(params), False), expected)


def test_freezing_per_path_learning_rates_and_weight_decay_on_scanned_parameters():
  scanned = GPT(**GPT_KW, scan_layers=True)
  params = nn.unbox(scanned.init(jax.random.key(1), TOKENS_BT))["params"]
  cfg = {
    **dict(optim_defaults()),
    "name": "adamw",
    "weight_decay": 0.5,
    "learning_rate": 0.1,
    "freeze": ["layers/mlp/.*"],
    "lr_multipliers": [("layers/self_attn/.*", 0.0001)],
  }
  tx, _ = optim.make_optimizer(cfg, 10)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  layers = updates[LAYERS]
  assert not any(np.any(x) for x in jax.tree.leaves(layers["mlp"]))  # Frozen.
  attn, ln = _max_abs(layers["self_attn"]), _max_abs(updates["ln_f"])
  assert 0 < attn < 1e-3 * ln  # The multiplier.
  # Weight decay spares biases and norm scales, whose stacked [L, D] form is not a matrix: the
  # update of a LayerNorm scale of 1 is Adam's alone, a kernel's adds decay * lr * weight.
  ln_update = layers["mlp_ln"]["scale"]
  np.testing.assert_allclose(ln_update, updates["ln_f"]["scale"][None].repeat(3, 0), rtol=1e-6)
  # Adam's first step is lr * (grad / |grad| + decay * weight) = lr * (1 + decay * weight).
  np.testing.assert_allclose(ln_update, -0.1, rtol=1e-5)
  kernel = params[LAYERS]["self_attn"]["query"]["kernel"]
  np.testing.assert_allclose(
    layers["self_attn"]["query"]["kernel"], -0.1 * 1e-4 * (1 + 0.5 * kernel), rtol=1e-5
  )


def optim_defaults():
  from jaxdl import config as config_lib

  return config_lib.base_config().optimizer.to_dict()


def test_like_layers_loads_either_form_into_the_other():
  unrolled, scanned = GPT(**GPT_KW), GPT(**GPT_KW, scan_layers=True)
  params = nn.unbox(unrolled.init(jax.random.key(1), TOKENS_BT))["params"]
  scanned_init = nn.unbox(scanned.init(jax.random.key(2), TOKENS_BT))["params"]
  loaded, copied = transfer.transfer(scanned_init, params, [])
  assert sorted(copied) == sorted(
    "/".join(str(k.key) for k in kp) for kp, _ in jax.tree_util.tree_leaves_with_path(loaded)
  )
  np.testing.assert_allclose(
    scanned.apply({"params": loaded}, TOKENS_BT),
    unrolled.apply({"params": params}, TOKENS_BT),
    rtol=0,
    atol=1e-5,
  )
  back, _ = transfer.transfer(params, scan_layers(params), [])
  jax.tree.map(np.testing.assert_array_equal, back, params)
  # Nested stacks convert against their own part of the target (the seq2seq encoder and decoder).
  tree = {"encoder": {"block_0": {"w": np.ones(2)}, "block_1": {"w": np.zeros(2)}}, "x": 1}
  target = {"encoder": {LAYERS: {"w": np.ones((2, 2))}}, "x": 1}
  converted = like_layers(tree, target)
  np.testing.assert_array_equal(converted["encoder"][LAYERS]["w"], [[1, 1], [0, 0]])
  assert like_layers(converted, tree)["encoder"].keys() == {"block_0", "block_1"}
