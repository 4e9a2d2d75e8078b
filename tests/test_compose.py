"""Combinators and adapters of jaxdl.nn.compose, checked against the layers called by hand and
against numpy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.nn import (
  RNN,
  AttentionPooling,
  BatchNorm,
  Classifier,
  Dropout,
  Embed,
  Flatten,
  GlobalAvgPool,
  ImageRows,
  ImageTokens,
  Parallel,
  Pool,
  PositionEmbedding,
  Residual,
  Sequential,
  StackedRNN,
  TransformerBlock,
  takes_train,
)

KEY = jax.random.key(0)


def _x(*shape, seed=1):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _dense_apply(params, x):
  return x @ params["kernel"] + params["bias"]


def test_takes_train_follows_the_call_signature():
  assert takes_train(Dropout(0.5)) and takes_train(Sequential([nn.relu]))
  assert takes_train(TransformerBlock(2, 8)) and takes_train(StackedRNN(4))
  assert not takes_train(nn.Dense(3)) and not takes_train(nn.Dropout(0.5))
  assert not takes_train(nn.relu) and not takes_train(jnp.tanh)
  assert takes_train(lambda x, train: x) and not takes_train(lambda x: x)


def test_sequential_equals_the_layers_called_by_hand():
  model = Sequential([nn.Dense(5), nn.relu, lambda x: 2.0 * x, nn.Dense(3), jnp.tanh])
  x = _x(4, 6)
  params = model.init(KEY, x)["params"]
  assert set(params) == {"layers_0", "layers_3"}
  h = np.maximum(_dense_apply(params["layers_0"], x), 0.0) * 2.0
  expected = np.tanh(_dense_apply(params["layers_3"], h))
  np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-6)


def test_train_reaches_a_dropout_inside_nested_combinators():
  model = Sequential([Sequential([Dropout(0.5)]), Residual(Dropout(0.5))])
  x = _x(8, 16) + 3.0
  variables = model.init(KEY, x)
  # Eval: every dropout is the identity; Residual doubles x.
  np.testing.assert_array_equal(model.apply(variables, x, train=False), 2.0 * x)
  y = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
  assert not np.allclose(y, 2.0 * x)
  # Inverted dropout: every entry is a sum of kept copies of x scaled by 1 / (1 - 0.5).
  ratio = np.asarray(y / x)
  assert np.all(np.isin(np.round(ratio, 4), [0.0, 2.0, 4.0, 6.0]))


def test_dropout_rate_is_checked():
  with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
    Dropout(1.0).init(KEY, _x(2, 3))


def test_residual_equals_x_plus_the_branch():
  model = Residual(nn.Dense(6))
  x = _x(3, 6)
  params = model.init(KEY, x)["params"]
  np.testing.assert_allclose(
    model.apply({"params": params}, x), x + _dense_apply(params["inner"], x), rtol=1e-5, atol=1e-6
  )


def test_residual_projection_maps_the_shortcut():
  model = Residual(nn.Dense(4), projection=nn.Dense(4, use_bias=False))
  x = _x(3, 6)
  params = model.init(KEY, x)["params"]
  expected = x @ params["projection"]["kernel"] + _dense_apply(params["inner"], x)
  np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-6)


def test_residual_refuses_a_shape_change_without_projection():
  with pytest.raises(ValueError, match=r"\(3, 6\) into \(3, 4\).*projection"):
    Residual(nn.Dense(4)).init(KEY, _x(3, 6))


def test_parallel_merges_equal_the_branches_by_hand():
  x = _x(2, 5, 3)
  concat = Parallel([nn.Dense(4), nn.Dense(2), jnp.tanh])
  params = concat.init(KEY, x)["params"]
  expected = np.concatenate(
    [_dense_apply(params["branches_0"], x), _dense_apply(params["branches_1"], x), np.tanh(x)],
    axis=-1,
  )
  np.testing.assert_allclose(concat.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-6)

  summed = Parallel([nn.Dense(3), lambda v: v], merge="sum")
  params = summed.init(KEY, x)["params"]
  np.testing.assert_allclose(
    summed.apply({"params": params}, x),
    _dense_apply(params["branches_0"], x) + x,
    rtol=1e-5,
    atol=1e-6,
  )

  stacked = Parallel([jnp.tanh, jnp.sin], merge="stack")
  y = stacked.apply({}, x)
  assert y.shape == (2, 5, 3, 2)
  np.testing.assert_allclose(y[..., 1], np.sin(x), rtol=1e-6)


def test_parallel_errors():
  x = _x(2, 3)
  with pytest.raises(ValueError, match="unknown merge 'mean'"):
    Parallel([jnp.tanh], merge="mean").init(KEY, x)
  with pytest.raises(ValueError, match=r"shapes \[\(2, 4\), \(2, 3\)\].*merge='concat'"):
    Parallel([nn.Dense(4), jnp.tanh], merge="sum").init(KEY, x)
  with pytest.raises(ValueError, match="differ before the last axis"):
    Parallel([jnp.tanh, lambda v: v[:1]]).init(KEY, x)


def test_sequential_errors_name_the_layer():
  x = _x(2, 3, 4)
  with pytest.raises(ValueError, match="empty"):
    Sequential([]).init(KEY, x)
  with pytest.raises(ValueError, match=r"list or tuple.*Sequential\(\[layer\]\)"):
    Sequential(nn.Dense(3)).init(KEY, x)
  with pytest.raises(ValueError, match=r"layers\[1\] = 3 is not callable"):
    Sequential([jnp.tanh, 3]).init(KEY, x)
  # A recurrent layer's (outputs, carry) pair cannot flow on; the error points to RNN.
  with pytest.raises(ValueError, match=r"layer 1 \(_Pair\) returned a tuple.*jaxdl.nn.RNN"):
    Sequential([jnp.tanh, _Pair(), nn.Dense(2)]).init(KEY, x)


class _Pair(nn.Module):
  """Returns (outputs, state) like jaxdl.nn.Recurrent, without the cost of compiling a scan."""

  def __call__(self, x):
    return x, x[:, -1]


def test_shape_adapters():
  x_BHWC = _x(2, 4, 6, 3)
  np.testing.assert_array_equal(Flatten().apply({}, x_BHWC), np.asarray(x_BHWC).reshape(2, 72))
  rows = ImageRows().apply({}, x_BHWC)
  assert rows.shape == (2, 4, 18)
  np.testing.assert_array_equal(rows[:, 1, 3:6], x_BHWC[:, 1, 1, :])  # Row 1, pixel 1.
  tokens = ImageTokens().apply({}, x_BHWC)
  assert tokens.shape == (2, 24, 3)
  np.testing.assert_array_equal(tokens[:, 6 + 2], x_BHWC[:, 1, 2])  # Row-major positions.
  np.testing.assert_allclose(
    GlobalAvgPool().apply({}, x_BHWC), np.mean(x_BHWC, axis=(1, 2)), rtol=1e-6
  )
  pooled = Pool(2).apply({}, x_BHWC)
  np.testing.assert_array_equal(
    pooled, np.asarray(x_BHWC).reshape(2, 2, 2, 3, 2, 3).max(axis=(2, 4))
  )
  avg = Pool((2, 3), kind="avg").apply({}, x_BHWC)
  np.testing.assert_allclose(
    avg, np.asarray(x_BHWC).reshape(2, 2, 2, 2, 3, 3).mean(axis=(2, 4)), rtol=1e-5, atol=1e-6
  )
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]; got shape \(2, 3\)"):
    ImageRows().apply({}, _x(2, 3))
  with pytest.raises(ValueError, match="unknown kind 'min'"):
    Pool(2, kind="min").apply({}, x_BHWC)


def test_embed_and_position_embedding():
  tokens = jnp.array([[1, 2, 0], [3, 3, 1]])
  embed = Embed(vocab_size=5, dim=4)
  params = embed.init(KEY, tokens)["params"]
  np.testing.assert_array_equal(
    embed.apply({"params": params}, tokens), params["embed"]["embedding"][tokens]
  )
  with pytest.raises(ValueError, match="integer token ids"):
    embed.init(KEY, _x(2, 3))
  pos = PositionEmbedding()
  x = _x(2, 3, 4)
  params = pos.init(KEY, x)["params"]
  np.testing.assert_allclose(pos.apply({"params": params}, x), x + params["embedding"], rtol=1e-6)
  with pytest.raises(ValueError, match="initialised for 3 tokens of width 4"):
    pos.apply({"params": params}, _x(2, 5, 4))


def test_batch_norm_follows_train():
  x = _x(16, 3) * 4.0 + 2.0
  bn = BatchNorm()
  variables = bn.init(KEY, x)
  y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  expected = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(updates["batch_stats"]["bn"]["mean"], 0.1 * x.mean(0), rtol=1e-5)
  # Eval: the running averages (initially mean 0, variance 1).
  np.testing.assert_allclose(bn.apply(variables, x), x / np.sqrt(1 + 1e-5), rtol=1e-5)


def test_rnn_returns_the_stacked_rnn_outputs_or_final_hidden():
  x = _x(2, 5, 3)
  mask = jnp.array([[True] * 5, [True] * 3 + [False] * 2])
  seq = RNN(4, cell_type="gru", bidirectional=True)
  last = RNN(4, cell_type="gru", bidirectional=True, return_sequences=False)
  params = seq.init(KEY, x)["params"]
  stacked = StackedRNN(4, "gru", bidirectional=True)
  y_ref, carries = stacked.apply({"params": params["rnn"]}, x, mask_BT=mask)
  np.testing.assert_allclose(seq.apply({"params": params}, x, mask_BT=mask), y_ref, rtol=1e-6)
  h = last.apply({"params": params}, x, mask_BT=mask)
  assert h.shape == (2, 8)
  np.testing.assert_allclose(h, stacked.final_hidden(carries), rtol=1e-6)
  np.testing.assert_allclose(h[1, :4], y_ref[1, 2, :4], rtol=1e-6)  # Forward state at step 2.


def _softmax_pool_reference(params, x, mask):
  keys = np.tanh(np.asarray(x) @ params["proj"]["kernel"] + params["proj"]["bias"])
  scores = keys @ np.asarray(params["query"], np.float64)
  out = np.zeros((x.shape[0], x.shape[2]))
  weights = np.zeros(x.shape[:2])
  for b in range(x.shape[0]):
    valid = np.asarray(mask[b])
    if not valid.any():
      continue
    e = np.exp(scores[b, valid] - scores[b, valid].max())
    weights[b, valid] = e / e.sum()
    out[b] = weights[b] @ np.asarray(x[b], np.float64)
  return out, weights


def test_attention_pooling_matches_a_numpy_softmax_with_masking():
  x = _x(3, 6, 5)
  mask = jnp.array([[True] * 6, [True, False, True, True, False, False], [False] * 6])
  pool = AttentionPooling(dim=4)
  params = pool.init(KEY, x, mask)["params"]
  # The query starts at zero: uniform weights, the mean over the valid steps.
  np.testing.assert_allclose(
    pool.apply({"params": params}, x, mask)[1],
    np.asarray(x)[1, [0, 2, 3]].mean(0),
    rtol=1e-5,
    atol=1e-6,
  )
  params = {**params, "query": 2.0 * jax.random.normal(jax.random.key(5), (4,))}
  out, state = pool.apply({"params": params}, x, mask, mutable=["intermediates"])
  ref_out, ref_weights = _softmax_pool_reference(params, x, mask)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
  weights = state["intermediates"]["weights_BT"][0]
  np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-7)
  assert np.all(weights[~np.asarray(mask)] == 0.0)  # Exactly zero, not merely small.
  np.testing.assert_array_equal(out[2], 0.0)  # No valid step: zeros, not NaN.
  # Changing x at masked steps changes nothing.
  x_changed = x.at[1, 4].set(100.0)
  np.testing.assert_allclose(pool.apply({"params": params}, x_changed, mask)[1], out[1], rtol=1e-6)
  # No mask: every step counts.
  ref_all, _ = _softmax_pool_reference(params, x, np.ones((3, 6), bool))
  np.testing.assert_allclose(pool.apply({"params": params}, x), ref_all, rtol=1e-5, atol=1e-6)


def test_attention_pooling_checks_the_mask_shape():
  with pytest.raises(ValueError, match=r"\(batch, time\) = \(2, 3\).*got \(2, 4\)"):
    AttentionPooling(4).init(KEY, _x(2, 3, 5), jnp.ones((2, 4), bool))


def test_classifier_gives_float32_logits_even_in_bfloat16():
  x = _x(2, 7, 6)
  head = Classifier(3, dtype=jnp.bfloat16)
  params = head.init(KEY, x)["params"]
  logits = head.apply({"params": params}, x)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 7, 3)
  np.testing.assert_allclose(logits, _dense_apply(params["logits"], x), rtol=2e-2, atol=2e-2)
  with pytest.raises(ValueError, match="Flatten or pool"):
    head.init(KEY, _x(4))


def test_a_composed_model_trains_a_gradient_step():
  """Conv -> rows -> GRU -> head, built from parts, under jit with dropout and BatchNorm."""
  model = Sequential(
    [
      nn.Conv(4, (3, 3)),
      BatchNorm(),
      nn.relu,
      Pool(2),
      ImageRows(),
      RNN(8, cell_type="gru", return_sequences=False),
      Dropout(0.2),
      Classifier(3),
    ]
  )
  x = _x(4, 8, 8, 1)
  labels = jnp.array([0, 1, 2, 0])
  variables = model.init(KEY, x)
  assert set(variables) == {"params", "batch_stats"}

  def loss_fn(params, rng):
    logits, _ = model.apply(
      {**variables, "params": params}, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
    )
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  grad = jax.jit(jax.grad(loss_fn))(variables["params"], jax.random.key(1))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
  assert float(jnp.abs(grad["layers_0"]["kernel"]).sum()) > 0  # Reaches the first layer.
