"""Dropout rates as traced scalars: a sweep vmaps over them, Python-number rates are unchanged.

Each model is built inside the vmapped function with the traced rate; member i must equal the same
model built with the Python float rates[i] (same params, same dropout rng).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import nn as jnn
from jaxdl.nn import attention as attention_lib
from jaxdl.nn import dropout as dropout_lib
from jaxdl.nn import gpt as gpt_lib
from jaxdl.nn import transformer as transformer_lib

RATES = (0.0, 0.1, 0.3)
DROPOUT_KEY = jax.random.key(7)
TOKENS_BT = jax.random.randint(jax.random.key(1), (2, 8), 1, 32)
IMAGES_BHWC = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))

# name -> (rate -> model, inputs). Every dropout site of each model takes the swept rate.
MODELS = {
  "gpt": (lambda r: jnn.GPT(32, 8, 1, 2, 16, dropout_rate=r), (TOKENS_BT,)),
  "bert_classifier": (
    lambda r: jnn.BertClassifier(32, 1, 2, 16, 32, max_length=8, dropout_rate=r),
    (TOKENS_BT,),
  ),
  "vit": (
    lambda r: jnn.ViT(
      image_size=8,
      patch_size=4,
      embed_dim=16,
      num_layers=1,
      num_heads=2,
      mlp_dim=32,
      num_classes=3,
      dropout_rate=r,
      attention_dropout_rate=r,
    ),
    (IMAGES_BHWC,),
  ),
  "seq2seq": (
    lambda r: jnn.Seq2SeqTransformer(
      32,
      num_layers=1,
      num_heads=2,
      embed_dim=16,
      mlp_dim=32,
      dropout_rate=r,
      attention_dropout_rate=r,
      max_length=8,
    ),
    (TOKENS_BT, TOKENS_BT),
  ),
  "rnn_lm": (
    lambda r: jnn.RNNLanguageModel(32, embed_dim=8, features=16, num_layers=2, dropout_rate=r),
    (TOKENS_BT,),
  ),
  "stacked_rnn": (
    lambda r: jnn.StackedRNN(16, "gru", num_layers=3, dropout_rate=r),
    (IMAGES_BHWC.reshape(2, 8, 24),),
  ),
  "compose_dropout": (
    lambda r: jnn.Sequential([jnn.Flatten(), jnn.Dropout(r), nn.Dense(4)]),
    (IMAGES_BHWC,),
  ),
  "densenet_layer": (lambda r: jnn.densenet.DenseLayer(growth_rate=4, drop_rate=r), (IMAGES_BHWC,)),
}


def _forward(model, variables, args, train):
  # DenseLayer's BatchNorm updates batch_stats in training; only the output matters here.
  mutable = ["batch_stats"] if "batch_stats" in variables else False
  y = model.apply(variables, *args, train=train, rngs={"dropout": DROPOUT_KEY}, mutable=mutable)
  y = y[0] if mutable else y
  return y[0] if isinstance(y, tuple) else y  # StackedRNN: (outputs, carries).


# The attention models share their dropout code with GPT; they run with the slow tests (CI).
SLOW_MODELS = ("bert_classifier", "seq2seq", "vit")


@pytest.mark.parametrize(
  "name",
  [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in sorted(MODELS)],
)
def test_vmap_over_rates_matches_python_float_rates(name):
  make, args = MODELS[name]

  @jax.jit  # One program per model: compiling it is most of this test's time.
  def run(rates):
    variables = make(0.1).init(jax.random.key(0), *args)
    swept = jax.vmap(lambda r: _forward(make(r), variables, args, True))(rates)
    expected = [_forward(make(rate), variables, args, True) for rate in RATES]
    inference = _forward(make(0.0), variables, args, False)
    return swept, expected, inference, "batch_stats" in variables

  swept, expected, inference, has_batch_stats = run(jnp.array(RATES))
  for i, rate in enumerate(RATES):
    # Not bit-exact: XLA may round a division by a runtime rate and by a constant differently.
    np.testing.assert_allclose(swept[i], expected[i], rtol=1e-6, atol=1e-6, err_msg=f"rate {rate}")
  # Dropout is really on: the members differ.
  assert not np.allclose(swept[1], swept[2])
  # (b) A traced rate of 0 draws masks that keep everything: the inference output (BatchNorm's
  # batch statistics aside). Exactness at the layer level: test_dropout_layer_*.
  if not has_batch_stats:
    np.testing.assert_allclose(swept[0], inference, rtol=1e-6, atol=1e-6)


def _flax_attention(
  q_BTNH, k_BSKH, v_BSKH, *, mask, dropout_rate, dropout_rng, deterministic, implementation, dtype
):
  """jaxdl's attention as Flax computes it, dropout included: a mask drawn over the whole
  [B, N, T, S] probabilities (broadcast_dropout=False), as jaxdl documents for its own."""
  assert implementation == "plain" and k_BSKH.shape[2] == q_BTNH.shape[2]  # No grouped heads.
  return nn.dot_product_attention(
    q_BTNH,
    k_BSKH,
    v_BSKH,
    mask=mask,
    broadcast_dropout=False,
    dropout_rng=dropout_rng,
    dropout_rate=dropout_rate,
    deterministic=deterministic,
    dtype=dtype,
  )


def test_gpt_python_float_rate_unchanged(monkeypatch):
  # (c) Python-number rates give what the code before traced rates gave: Flax's dropout, with
  # Flax's module names (hence rng paths and masks), everywhere. The reference is the same GPT
  # with jaxdl's dropout swapped for Flax's: nn.Dropout on the embeddings and residual branches,
  # nn.dot_product_attention's dropout on the attention probabilities.
  model = jnn.GPT(32, 8, 2, 2, 16, dropout_rate=0.2)

  @jax.jit  # One program: compiling is most of this test's time.
  def run():
    variables = model.init(jax.random.key(0), TOKENS_BT)
    forward = lambda train: model.apply(
      variables, TOKENS_BT, train=train, rngs={"dropout": DROPOUT_KEY}
    )
    ours_BTV, inference_BTV = forward(True), forward(False)
    with monkeypatch.context() as flax_dropout:  # While tracing the reference.
      flax_dropout.setattr(gpt_lib, "Dropout", nn.Dropout)
      flax_dropout.setattr(transformer_lib, "Dropout", nn.Dropout)
      flax_dropout.setattr(attention_lib, "dot_product_attention", _flax_attention)
      return ours_BTV, inference_BTV, forward(True)

  logits_BTV, inference_BTV, flax_BTV = run()
  # Not to the bit: Flax scales the kept probabilities by x * (1 / keep) and its own softmax,
  # jaxdl by x / keep; float32 rounding, ~1e-7. One entry kept where the other dropped moves the
  # logits by ~1e-2 (the scale of the logits' differences from the inference ones, below).
  np.testing.assert_allclose(logits_BTV, flax_BTV, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(logits_BTV) - np.asarray(inference_BTV)).max() > 1e-2  # Dropout is on.


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5])
def test_dropout_layer_matches_flax_and_formula(rate):
  x_BD = jax.random.normal(jax.random.key(3), (4, 16))
  rng = jax.random.key(5)
  flax_y = nn.Dropout(rate).apply({}, x_BD, deterministic=False, rng=rng)
  python_y = dropout_lib.Dropout(rate).apply({}, x_BD, deterministic=False, rng=rng)
  traced_y = jax.jit(
    lambda r: dropout_lib.Dropout(r).apply({}, x_BD, deterministic=False, rng=rng)
  )(jnp.float32(rate))
  np.testing.assert_array_equal(python_y, flax_y)  # The Python-rate path is Flax's.
  np.testing.assert_allclose(traced_y, flax_y, rtol=1e-6)  # Division rounding may differ.
  np.testing.assert_array_equal(traced_y == 0, flax_y == 0)  # The same mask.
  keep = np.asarray(jax.random.bernoulli(rng, 1.0 - rate, x_BD.shape))
  np.testing.assert_allclose(
    traced_y, np.where(keep, np.asarray(x_BD) / (1.0 - rate), 0.0), rtol=1e-6
  )
  if rate == 0.0:
    np.testing.assert_array_equal(traced_y, x_BD)


def test_dropout_layer_traced_rate_details():
  x = jnp.ones((8, 6), jnp.bfloat16)
  rng = jax.random.key(0)
  run = lambda r, **kw: dropout_lib.Dropout(r, **kw).apply({}, x, deterministic=False, rng=rng)
  # The inputs' dtype is kept, as with a Python rate.
  assert jax.jit(run)(jnp.float32(0.5)).dtype == jnp.bfloat16
  # broadcast_dims share the mask along axis 0, as in Flax.
  y = np.asarray(jax.jit(lambda r: run(r, broadcast_dims=(0,)))(jnp.float32(0.5)), np.float32)
  assert (y == y[:1]).all() and set(np.unique(y)) <= {0.0, 2.0}
  # deterministic=True is the identity whatever the rate.
  same = jax.jit(lambda r: dropout_lib.Dropout(r).apply({}, x, deterministic=True))(0.5)
  np.testing.assert_array_equal(same, x)


def test_python_rates_are_still_validated():
  x_BTD = jnp.ones((1, 4, 8))
  with pytest.raises(ValueError, match=r"StackedRNN: dropout_rate must be in \[0, 1\)"):
    jnn.StackedRNN(4, num_layers=2, dropout_rate=1.0).init(jax.random.key(0), x_BTD)
  with pytest.raises(ValueError, match=r"Dropout: rate must be in \[0, 1\)"):
    jnn.Dropout(-0.1).init(jax.random.key(0), x_BTD)
  q_BTNH = jnp.ones((1, 4, 2, 4))
  with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\)"):
    jnn.dot_product_attention(q_BTNH, q_BTNH, q_BTNH, dropout_rate=1.5)


def test_traced_attention_rate_needs_plain_attention():
  q_BTNH = jnp.ones((1, 4, 2, 4))
  attend = lambda r: jnn.dot_product_attention(
    q_BTNH,
    q_BTNH,
    q_BTNH,
    dropout_rate=r,
    dropout_rng=jax.random.key(0),
    deterministic=False,
    implementation="jax",
  )
  with pytest.raises(ValueError, match="traced rate"):
    jax.jit(attend)(jnp.float32(0.0))
