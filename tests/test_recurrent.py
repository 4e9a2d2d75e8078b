"""Recurrent cells and layers against numpy's textbook equations, Python loops and each other."""

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.nn.cells import GRUCell, LSTMCell, SimpleRNNCell, make_cell
from jaxdl.nn.recurrent import Bidirectional, Recurrent, StackedRNN
from jaxdl.nn.rnn_models import RNNLanguageModel, RNNTextClassifier, RowsRNNClassifier

B, T, D, H = 3, 6, 3, 4
ATOL = 1e-5

CELLS = {
  "rnn": lambda: SimpleRNNCell(H, parent=None),
  "rnn_relu": lambda: SimpleRNNCell(H, activation=nn.relu, parent=None),
  "lstm": lambda: LSTMCell(H, parent=None),
  "gru_after": lambda: GRUCell(H, reset_after=True, parent=None),
  "gru_before": lambda: GRUCell(H, reset_after=False, parent=None),
}


def _x(seed=0, shape=(B, T, D)):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _random_params(module, *args, seed=1, **kwargs):
  """Random values (numpy, so nothing compiles) in the shapes `module.init` would create.

  Random rather than initial values, so that biases (zero at init) are tested too.
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype), shapes)


def _layer(name):
  layer = Recurrent(CELLS[name]())
  return layer, _random_params(layer, _x())


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _assert_tree_close(actual, expected, atol=ATOL):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=atol, rtol=1e-5)


# ---------------------------------------------------------------- textbook equations in numpy

sigmoid = lambda a: 1 / (1 + np.exp(-a))


def _np_rnn(p, x_BTD, carry, activation=np.tanh):
  W, b, U = p["input"]["kernel"], p["input"]["bias"], p["recurrent_kernel"]
  h, ys = carry, []
  for t in range(x_BTD.shape[1]):
    h = activation(x_BTD[:, t] @ W + h @ U + b)
    ys.append(h)
  return np.stack(ys, 1), h


def _np_lstm(p, x_BTD, carry):
  W, b, U = p["input"]["kernel"], p["input"]["bias"], p["recurrent_kernel"]
  Wi, Wf, Wg, Wo = np.split(W, 4, axis=1)
  Ui, Uf, Ug, Uo = np.split(U, 4, axis=1)
  bi, bf, bg, bo = np.split(b, 4)
  (c, h), ys = carry, []
  for t in range(x_BTD.shape[1]):
    x = x_BTD[:, t]
    i = sigmoid(x @ Wi + h @ Ui + bi)
    f = sigmoid(x @ Wf + h @ Uf + bf)
    g = np.tanh(x @ Wg + h @ Ug + bg)
    o = sigmoid(x @ Wo + h @ Uo + bo)
    c = f * c + i * g
    h = o * np.tanh(c)
    ys.append(h)
  return np.stack(ys, 1), (c, h)


def _np_gru(p, x_BTD, carry, reset_after):
  W, b, U = p["input"]["kernel"], p["input"]["bias"], p["recurrent_kernel"]
  Wr, Wz, Wn = np.split(W, 3, axis=1)
  Ur, Uz, Un = np.split(U, 3, axis=1)
  br, bz, bn = np.split(b, 3)
  cr, cz, cn = np.split(p["recurrent_bias"], 3) if reset_after else (0, 0, 0)
  h, ys = carry, []
  for t in range(x_BTD.shape[1]):
    x = x_BTD[:, t]
    r = sigmoid(x @ Wr + br + h @ Ur + cr)
    z = sigmoid(x @ Wz + bz + h @ Uz + cz)
    if reset_after:
      n = np.tanh(x @ Wn + bn + r * (h @ Un + cn))
    else:
      n = np.tanh(x @ Wn + bn + (r * h) @ Un)
    h = (1 - z) * n + z * h
    ys.append(h)
  return np.stack(ys, 1), h


NUMPY_REFS = {
  "rnn": _np_rnn,
  "rnn_relu": lambda p, x, c: _np_rnn(p, x, c, activation=lambda a: np.maximum(a, 0)),
  "lstm": _np_lstm,
  "gru_after": lambda p, x, c: _np_gru(p, x, c, reset_after=True),
  "gru_before": lambda p, x, c: _np_gru(p, x, c, reset_after=False),
}


@pytest.mark.parametrize("name", CELLS)
def test_layer_matches_numpy_textbook_equations(name):
  layer, params = _layer(name)
  x = _x()
  carry0 = jax.tree.map(lambda a: a + 0.3, layer.cell.initialize_carry((B,)))  # Non-zero start.
  y, carry = layer.apply({"params": params}, x, initial_carry=carry0)
  y_ref, carry_ref = NUMPY_REFS[name](_np(params["cell"]), np.asarray(x, np.float64), _np(carry0))
  assert y.shape == (B, T, H)
  _assert_tree_close(y, y_ref)
  _assert_tree_close(carry, carry_ref)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru_after", "gru_before"])
def test_scan_equals_python_loop_over_cell_call(name):
  layer, params = _layer(name)
  x = _x()
  y, carry = layer.apply({"params": params}, x)
  cell = CELLS[name]()
  loop_carry, ys = cell.initialize_carry((B,)), []
  for t in range(T):
    loop_carry, y_t = cell.apply({"params": params["cell"]}, loop_carry, x[:, t])
    ys.append(y_t)
  _assert_tree_close(y, jnp.stack(ys, 1))
  _assert_tree_close(carry, loop_carry)


def test_param_shapes_are_fused_and_keras_initialised():
  x = _x()
  gate_counts = {"rnn": 1, "lstm": 4, "gru_after": 3, "gru_before": 3}
  # One jit for all four inits: one compilation instead of one per initializer and shape.
  all_params = jax.jit(
    lambda key: {
      name: Recurrent(CELLS[name]()).init(key, x)["params"]["cell"] for name in gate_counts
    }
  )(jax.random.key(0))
  for name, gates in gate_counts.items():
    p = all_params[name]
    expected = {
      "input": {"kernel": (D, gates * H), "bias": (gates * H,)},
      "recurrent_kernel": (H, gates * H),
    }
    if name == "gru_after":
      expected["recurrent_bias"] = (3 * H,)
    assert jax.tree.map(jnp.shape, p) == expected, name
    U = np.asarray(p["recurrent_kernel"])
    np.testing.assert_allclose(U @ U.T, np.eye(H), atol=1e-5)  # Orthogonal rows.
    limit = np.sqrt(6 / (D + gates * H))  # Glorot-uniform over the fused kernel, like Keras.
    assert np.abs(np.asarray(p["input"]["kernel"])).max() <= limit
    expected_bias = np.zeros(gates * H)
    if name == "lstm":
      expected_bias[H : 2 * H] = 1.0  # forget_bias, gate order i, f, g, o.
    np.testing.assert_array_equal(p["input"]["bias"], expected_bias)


def test_bfloat16_computation_keeps_a_float32_carry():
  x = _x()
  f32, params = _layer("lstm")
  bf16 = Recurrent(LSTMCell(H, dtype=jnp.bfloat16, parent=None))
  y, (c, h) = bf16.apply({"params": params}, x)
  assert y.dtype == jnp.bfloat16 and c.dtype == h.dtype == jnp.float32
  y32, _ = f32.apply({"params": params}, x)
  np.testing.assert_allclose(np.asarray(y, np.float32), y32, atol=0.05)


# ---------------------------------------------------------------- padding, direction, stacking

LENGTHS = np.array([T, 3, 0])


@pytest.mark.parametrize("name", ["lstm", "gru_before"])
def test_lengths_zero_outputs_and_freeze_the_carry_at_the_last_valid_step(name):
  layer, params = _layer(name)
  x = _x()
  y, carry = layer.apply({"params": params}, x, lengths_B=LENGTHS)
  y_mask, carry_mask = layer.apply({"params": params}, x, mask_BT=np.arange(T) < LENGTHS[:, None])
  _assert_tree_close(y_mask, y, atol=0)
  _assert_tree_close(carry_mask, carry, atol=0)
  for b, L in enumerate(LENGTHS):
    np.testing.assert_array_equal(y[b, L:], 0.0)
    if L == 0:
      alone_y, alone_carry = jnp.zeros((1, 0, H)), layer.cell.initialize_carry((1,))
    else:
      alone_y, alone_carry = layer.apply({"params": params}, x[b : b + 1, :L])
    _assert_tree_close(y[b : b + 1, :L], alone_y)
    _assert_tree_close(jax.tree.map(lambda a: a[b : b + 1], carry), alone_carry)


def test_general_mask_skips_masked_steps():
  layer, params = _layer("lstm")
  x = _x()
  mask = np.array([[1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 1, 0], [1] * T], bool)
  y, carry = layer.apply({"params": params}, x, mask_BT=mask)
  for b in range(B):
    kept = np.flatnonzero(mask[b])
    alone_y, alone_carry = layer.apply({"params": params}, x[b : b + 1, kept])
    _assert_tree_close(y[b, kept], alone_y[0])
    np.testing.assert_array_equal(y[b, ~mask[b]], 0.0)
    _assert_tree_close(jax.tree.map(lambda a: a[b : b + 1], carry), alone_carry)


def test_reverse_with_lengths_runs_each_valid_prefix_backwards_in_original_order():
  fwd, params = _layer("gru_after")
  bwd = Recurrent(CELLS["gru_after"](), reverse=True)  # Same param tree as the forward layer.
  x = _x()
  y, carry = bwd.apply({"params": params}, x, lengths_B=LENGTHS)
  for b, L in enumerate(LENGTHS[:2]):
    alone_y, alone_carry = fwd.apply({"params": params}, x[b : b + 1, :L][:, ::-1])
    _assert_tree_close(y[b : b + 1, :L], alone_y[:, ::-1])
    np.testing.assert_array_equal(y[b, L:], 0.0)
    _assert_tree_close(carry[b : b + 1], alone_carry)
  np.testing.assert_array_equal(carry[2], 0.0)  # Empty sequence: the initial carry.


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_bidirectional_merges_forward_and_backward(merge):
  layer = Bidirectional(
    Recurrent(CELLS["lstm"]()), Recurrent(CELLS["lstm"](), reverse=True), merge=merge
  )
  x = _x()
  params = _random_params(layer, x)
  y, (carry_f, carry_b) = layer.apply({"params": params}, x, lengths_B=LENGTHS)
  yf, cf = Recurrent(CELLS["lstm"]()).apply({"params": params["forward"]}, x, lengths_B=LENGTHS)
  yb, cb = Recurrent(CELLS["lstm"](), reverse=True).apply(
    {"params": params["backward"]}, x, lengths_B=LENGTHS
  )
  assert y.shape == ((B, T, 2 * H) if merge == "concat" else (B, T, H))
  _assert_tree_close(y, jnp.concatenate([yf, yb], -1) if merge == "concat" else yf + yb)
  _assert_tree_close((carry_f, carry_b), (cf, cb))


def test_stacked_layers_compose_single_layers():
  # unroll=4 (not dividing T = 6) must not change results.
  stack = StackedRNN(H, "lstm", num_layers=2, dropout_rate=0.5, unroll=4)
  x = _x()
  params = _random_params(stack, x)
  y, carries = stack.apply({"params": params}, x, lengths_B=LENGTHS)  # train=False: no dropout.
  layer = Recurrent(CELLS["lstm"]())
  y1, c1 = layer.apply({"params": params["layers_0"]}, x, lengths_B=LENGTHS)
  y2, c2 = layer.apply({"params": params["layers_1"]}, y1, lengths_B=LENGTHS)
  _assert_tree_close(y, y2)
  _assert_tree_close(carries, (c1, c2))
  assert stack.final_hidden(carries) is carries[1][1]


def test_dropout_between_layers_only_in_training_and_deterministic_per_rng():
  stack = StackedRNN(H, "gru", num_layers=2, dropout_rate=0.5)
  x = _x()
  params = _random_params(stack, x)
  run = lambda seed: train_apply(params, jax.random.key(seed))
  train_apply = jax.jit(
    lambda p, key: stack.apply({"params": p}, x, train=True, rngs={"dropout": key})[0]
  )
  y_eval = stack.apply({"params": params}, x)[0]
  np.testing.assert_array_equal(run(1), run(1))
  assert np.abs(run(1) - run(2)).max() > 1e-3
  assert np.abs(run(1) - y_eval).max() > 1e-3
  # One layer: nothing between layers, so training changes nothing.
  single = StackedRNN(H, "gru", num_layers=1, dropout_rate=0.5)
  p1 = {"layers_0": params["layers_0"]}
  np.testing.assert_array_equal(
    single.apply({"params": p1}, x, train=True, rngs={"dropout": jax.random.key(1)})[0],
    single.apply({"params": p1}, x)[0],
  )


def test_bidirectional_stack_shapes_and_final_hidden():
  stack = StackedRNN(H, "rnn", num_layers=2, bidirectional=True)
  x = _x()
  params = _random_params(stack, x)
  assert params["layers_1"]["forward"]["cell"]["input"]["kernel"].shape == (2 * H, H)
  y, carries = stack.apply({"params": params}, x, lengths_B=LENGTHS)
  assert y.shape == (B, T, 2 * H) and len(carries) == 2
  h = stack.final_hidden(carries)
  _assert_tree_close(h, jnp.concatenate(carries[1], -1))
  # The forward half's final state is its output at the last valid step.
  _assert_tree_close(h[1, :H], y[1, LENGTHS[1] - 1, :H])


def test_initial_carry_is_used_and_step_decoding_matches_the_full_sequence():
  stack = StackedRNN(H, "lstm", num_layers=2)
  x = _x()
  params = _random_params(stack, x)
  carry0 = jax.tree.map(lambda a: a + 0.5, stack.initialize_carry((B,)))
  y, carries = stack.apply({"params": params}, x, initial_carry=carry0)
  y_zero, _ = stack.apply({"params": params}, x)
  assert np.abs(y - y_zero).max() > 1e-2
  step = jax.jit(lambda c, x_t: stack.apply({"params": params}, c, x_t, method="step"))
  c, ys = carry0, []
  for t in range(T):
    c, y_t = step(c, x[:, t])
    ys.append(y_t)
  _assert_tree_close(jnp.stack(ys, 1), y)
  _assert_tree_close(c, carries)


# ---------------------------------------------------------------- transformations


def test_jit_grad_and_vmap():
  stack = StackedRNN(H, "gru", num_layers=2, reset_after=False)
  x = _x()
  params = _random_params(stack, x)

  def loss(p, x):
    y, carries = stack.apply({"params": p}, x, lengths_B=LENGTHS)
    return jnp.sum(y**2) + jnp.sum(carries[0] ** 2)

  grads = jax.jit(jax.grad(loss))(params, x)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  # Central finite differences on weights the loss reaches through time and through layer 2.
  flat, loss_jit, eps = traverse_util.flatten_dict(params), jax.jit(loss), 1e-2
  for key, index in [
    (("layers_0", "cell", "recurrent_kernel"), (1, 5)),
    (("layers_0", "cell", "input", "bias"), (9,)),
    (("layers_1", "cell", "input", "kernel"), (2, 7)),
  ]:
    bump = lambda d: traverse_util.unflatten_dict({**flat, key: flat[key].at[index].add(d)})
    fd = (loss_jit(bump(eps), x) - loss_jit(bump(-eps), x)) / (2 * eps)
    grad = traverse_util.flatten_dict(grads)[key][index]
    assert abs(grad) > 1e-3, key
    np.testing.assert_allclose(grad, fd, rtol=2e-2, atol=1e-3, err_msg=str(key))

  x_NBTD = _x(3, (2, B, T, D))
  apply = lambda x: stack.apply({"params": params}, x, lengths_B=LENGTHS)
  batched = jax.jit(jax.vmap(apply))(x_NBTD)
  looped = [jax.jit(apply)(x_NBTD[n]) for n in range(2)]
  _assert_tree_close(batched, jax.tree.map(lambda *a: jnp.stack(a), *looped))


# ---------------------------------------------------------------- the LSTM's hand-written VJP


def _autodiff_lstm_layer(p, x_BTD, carry, mask_BT, reverse):
  """What Recurrent(LSTMCell) computed before its custom VJP: JAX's derivative of a lax.scan of
  the textbook step (jax.nn.sigmoid per gate), masked steps keeping the carry, outputs zeroed."""
  W, b, U = p["input"]["kernel"], p["input"]["bias"], p["recurrent_kernel"]
  xg_TBG = jnp.swapaxes(x_BTD, 0, 1) @ W + b
  valid_TB = jnp.ones(xg_TBG.shape[:2], bool) if mask_BT is None else jnp.asarray(mask_BT).T

  def body(carry, xs):
    (c, h), (xg, valid) = carry, xs
    i, f, g, o = jnp.split(xg + h @ U, 4, axis=-1)
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
    keep = lambda new, old: jnp.where(valid[:, None], new, old)
    return (keep(c_new, c), keep(h_new, h)), jnp.where(valid[:, None], h_new, 0.0)

  carry, y_TBH = jax.lax.scan(body, carry, (xg_TBG, valid_TB), reverse=reverse)
  return jnp.swapaxes(y_TBH, 0, 1), carry


HOLES = np.array([[1, 0, 1, 1, 0, 1], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], bool)


@pytest.mark.parametrize("case", ["plain", "lengths", "holes", "reverse_lengths", "unroll_4"])
def test_lstm_custom_vjp_matches_autodiff_of_the_textbook_scan(case):
  reverse, unroll = case.startswith("reverse"), 4 if case == "unroll_4" else 1
  mask = {
    "lengths": np.arange(T) < LENGTHS[:, None],
    "holes": HOLES,
    "reverse_lengths": np.arange(T) < LENGTHS[:, None],
  }.get(case)
  layer = Recurrent(LSTMCell(H, parent=None), reverse=reverse, unroll=unroll)
  x = _x()
  params = _random_params(layer, x)
  rng = np.random.default_rng(2)
  carry0 = tuple(jnp.asarray(rng.standard_normal((B, H)), jnp.float32) for _ in range(2))
  # Cotangents on every output: the sequence and both halves of the final carry.
  w_y, w_c, w_h = (
    jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((B, T, H), (B, H), (B, H))
  )

  def loss(run, p, x, carry0):
    y, (c, h) = run(p, x, carry0)
    return jnp.sum(y * w_y) + jnp.sum(c * w_c) + jnp.sum(h * w_h)

  ours = lambda p, x, c0: layer.apply({"params": p}, x, initial_carry=c0, mask_BT=mask)
  theirs = lambda p, x, c0: _autodiff_lstm_layer(p["cell"], x, c0, mask, reverse)
  _assert_tree_close(
    jax.jit(ours)(params, x, carry0), jax.jit(theirs)(params, x, carry0), atol=1e-6
  )
  grads = [
    jax.jit(jax.grad(lambda *a, run=run: loss(run, *a), argnums=(0, 1, 2)))(params, x, carry0)
    for run in (ours, theirs)
  ]
  _assert_tree_close(grads[0], grads[1], atol=1e-5)
  # Every gradient reaches its input: the kernel through time, the initial carry, masked x zero.
  assert all(np.abs(g).max() > 1e-3 for g in jax.tree.leaves(grads[0][0]))
  assert all(np.abs(g).max() > 1e-3 for g in jax.tree.leaves(grads[0][2]))
  if mask is not None:
    np.testing.assert_array_equal(np.asarray(grads[0][1])[~mask], 0.0)


def test_lstm_custom_vjp_under_vmap_and_in_bfloat16():
  layer, params = _layer("lstm")
  x_NBTD = _x(3, (2, B, T, D))
  grad = lambda p, x: jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x)[0] ** 2))(p)
  batched = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(params, x_NBTD)
  looped = [jax.jit(grad)(params, x_NBTD[n]) for n in range(2)]
  _assert_tree_close(batched, jax.tree.map(lambda *a: jnp.stack(a), *looped))

  bf16 = Recurrent(LSTMCell(H, dtype=jnp.bfloat16, parent=None))
  grad_bf16 = lambda p, x: jax.grad(
    lambda p: jnp.sum(bf16.apply({"params": p}, x)[0].astype(jnp.float32) ** 2)
  )(p)
  g16, g32 = jax.jit(grad_bf16)(params, x_NBTD[0]), looped[0]
  assert jax.tree.map(lambda a: a.dtype, g16) == jax.tree.map(lambda a: a.dtype, g32)
  _assert_tree_close(g16, g32, atol=0.1)


# ---------------------------------------------------------------- models


def test_language_model_decode_protocol_matches_full_forward():
  model = RNNLanguageModel(vocab_size=11, embed_dim=5, features=H, num_layers=2)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 7)))
  variables = jax.jit(lambda key, t: model.init(key, t, decode=True))(jax.random.key(1), tokens)
  params, cache = variables["params"], variables["cache"]
  for leaf in jax.tree.leaves(cache["carry"]):  # Created as zeros for batch 2, not advanced.
    assert leaf.shape == (2, H)
    np.testing.assert_array_equal(leaf, 0.0)
  params = _random_params(model, tokens)
  full = jax.jit(model.apply)({"params": params}, tokens)
  assert full.shape == (2, 7, 11)
  decode = jax.jit(
    lambda variables, chunk: model.apply(variables, chunk, decode=True, mutable=["cache"])
  )
  # Prefill with a 3-token prompt, then one token at a time.
  logits, state = decode({"params": params, "cache": cache}, tokens[:, :3])
  pieces = [logits]
  for t in range(3, 7):
    logits, state = decode({"params": params, **state}, tokens[:, t : t + 1])
    pieces.append(logits)
  _assert_tree_close(jnp.concatenate(pieces, 1), full)


def test_language_model_is_causal():
  model = RNNLanguageModel(vocab_size=8, embed_dim=3, features=H, num_layers=2)
  tokens = jnp.arange(6)[None]  # Distinct tokens, so embedding row k is the input at step k.
  params = _random_params(model, tokens)
  t = 2

  def out_t(embedding):
    p = {**params, "embed": {"embedding": embedding}}
    return jnp.sum(model.apply({"params": p}, tokens)[0, t])

  g = np.asarray(jax.grad(out_t)(params["embed"]["embedding"]))
  np.testing.assert_array_equal(g[t + 1 :], 0.0)  # Later inputs (and unused rows) do not matter.
  assert (np.abs(g[: t + 1]).sum(axis=1) > 0).all()


@pytest.mark.parametrize(
  "cell_type,bidirectional,gates,biases",
  [("lstm", False, 4, 1), ("gru", False, 3, 2), ("rnn", True, 1, 1)],
)
def test_rows_classifier_shape_and_parameter_count(cell_type, bidirectional, gates, biases):
  model = RowsRNNClassifier(
    num_classes=10, cell_type=cell_type, features=8, bidirectional=bidirectional
  )
  x = jnp.zeros((2, 28, 28, 1))
  params = _random_params(model, x)
  Din, Hh, K, dirs = 28, 8, 10, 2 if bidirectional else 1
  expected = dirs * gates * (Din * Hh + Hh * Hh + biases * Hh) + dirs * Hh * K + K
  assert sum(p.size for p in jax.tree.leaves(params)) == expected
  assert model.apply({"params": params}, x).shape == (2, 10)


def test_text_classifier_ignores_padding_anywhere():
  model = RNNTextClassifier(
    vocab_size=9, num_classes=3, embed_dim=4, features=H, bidirectional=True
  )
  tokens = jnp.array([[3, 1, 4, 1, 5], [2, 6, 0, 0, 0]])
  params = _random_params(model, tokens)
  apply = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
  logits = apply(tokens)
  assert logits.shape == (2, 3)
  padded = jnp.array([[3, 1, 4, 1, 5, 0, 0], [0, 2, 6, 0, 0, 0, 0]])
  _assert_tree_close(apply(padded), logits)
  alone = apply(tokens[1:, :2])
  _assert_tree_close(logits[1:], alone)


# ---------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="Did you mean 'lstm'"):
    make_cell("lstn", H)
  with pytest.raises(ValueError, match="forget_bias"):
    make_cell("gru", H, forget_bias=1.0)
  x = _x()
  stack = StackedRNN(H, "lstm")
  params = _random_params(stack, x)
  with pytest.raises(ValueError, match=r"lengths_B must have shape \(batch,\) = \(3,\)"):
    stack.apply({"params": params}, x, lengths_B=jnp.array([1, 2]))
  with pytest.raises(ValueError, match="not both"):
    stack.apply({"params": params}, x, lengths_B=LENGTHS, mask_BT=jnp.ones((B, T), bool))
  with pytest.raises(ValueError, match="one carry per layer"):
    stack.apply({"params": params}, x, initial_carry=jnp.zeros((B, H)))
  with pytest.raises(ValueError, match="initial carry has shapes"):
    stack.apply({"params": params}, x, initial_carry=(jnp.zeros((B, H)),))
  with pytest.raises(ValueError, match=r"\[batch, time, features\]"):
    stack.apply({"params": params}, x[0])
  with pytest.raises(ValueError, match="Unknown cell_type 'grux'"):
    StackedRNN(H, "grux").init(jax.random.key(0), x)
  bi = StackedRNN(H, "lstm", bidirectional=True)
  bi_params = _random_params(bi, x)
  with pytest.raises(ValueError, match="bidirectional stack cannot"):
    bi.apply({"params": bi_params}, bi.initialize_carry((B,)), x[:, 0], method="step")
