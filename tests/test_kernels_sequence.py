"""The sequence models' kernels against the plain paths they stand in for: the LSTM's recurrence
against a lax.scan of LSTMCell.step and JAX's own gradient of it, the softmax against
jax.nn.softmax and its derivatives, flat_apply against the layer on unflattened inputs."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.kernels.dense import flat_apply
from jaxdl.kernels.lstm import lstm_recurrence
from jaxdl.kernels.softmax import softmax
from jaxdl.nn.cells import LSTMCell


def _normal(shape, seed=0):
  """Test inputs from numpy: no per-shape compilation of JAX's random ops."""
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _assert_tree_close(actual, expected, atol):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=atol, rtol=1e-5)


# ---------------------------------------------------------------- LSTM recurrence

T, B, H = 6, 3, 4
HOLES_TB = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1]], bool)


def _scan_of_step(cell, params, xg_TBG, carry, valid_TB, reverse):
  """The plain path: lax.scan of LSTMCell.step, masked steps keeping the carry, outputs zeroed
  (as Recurrent scans a cell without a `recurrence`)."""
  step = functools.partial(cell.apply, {"params": params}, method=LSTMCell.step)

  def body(carry, xs):
    xg_BG, valid_B = xs
    new_carry, y_BH = step(carry, xg_BG)
    if valid_B is None:
      return new_carry, y_BH
    keep = lambda new, old: jnp.where(valid_B[:, None], new, old)
    return jax.tree.map(keep, new_carry, carry), jnp.where(valid_B[:, None], y_BH, 0.0)

  return jax.lax.scan(body, carry, (xg_TBG, valid_TB), reverse=reverse)


@pytest.mark.parametrize("case", ["unmasked", "holes", "reverse_holes", "unroll_3"])
def test_lstm_recurrence_equals_a_scan_of_the_cell_step_and_its_autodiff_gradient(case):
  valid_TB = None if case in ("unmasked", "unroll_3") else jnp.asarray(HOLES_TB)
  reverse, unroll = case.startswith("reverse"), 3 if case == "unroll_3" else 1
  cell = LSTMCell(H, parent=None)
  shapes = jax.eval_shape(
    cell.init, jax.random.key(0), (jnp.zeros((B, H)),) * 2, jnp.zeros((B, 2))
  )["params"]
  params = {
    "recurrent_kernel": jnp.asarray(0.5 * _normal((H, 4 * H), 1)),
    "input": jax.tree.map(lambda s: jnp.zeros(s.shape), shapes["input"]),
  }
  xg_TBG, carry = (
    jnp.asarray(_normal((T, B, 4 * H), 2)),
    tuple(jnp.asarray(_normal((B, H), seed)) for seed in (3, 4)),
  )
  # Cotangents on every output: the sequence and both halves of the final carry.
  w_y, w_c, w_h = (
    jnp.asarray(_normal(s, seed)) for s, seed in (((T, B, H), 5), ((B, H), 6), ((B, H), 7))
  )

  kernel = lambda u, xg, c0: lstm_recurrence(xg, u, c0, valid_TB, reverse=reverse, unroll=unroll)
  plain = lambda u, xg, c0: _scan_of_step(
    cell, {**params, "recurrent_kernel": u}, xg, c0, valid_TB, reverse
  )
  _assert_tree_close(
    jax.jit(kernel)(params["recurrent_kernel"], xg_TBG, carry),
    jax.jit(plain)(params["recurrent_kernel"], xg_TBG, carry),
    atol=1e-6,
  )

  def loss(run, u, xg, c0):
    (c, h), y = run(u, xg, c0)
    return jnp.sum(y * w_y) + jnp.sum(c * w_c) + jnp.sum(h * w_h)

  grads = [
    jax.jit(jax.grad(functools.partial(loss, run), argnums=(0, 1, 2)))(
      params["recurrent_kernel"], xg_TBG, carry
    )
    for run in (kernel, plain)
  ]
  _assert_tree_close(grads[0], grads[1], atol=1e-5)
  # Every gradient reaches its input, so none is compared as zeros against zeros.
  assert all(np.abs(g).max() > 1e-2 for g in jax.tree.leaves(grads[0]))
  if valid_TB is not None:  # A masked step's gates get no gradient.
    np.testing.assert_array_equal(np.asarray(grads[0][1])[~HOLES_TB], 0.0)


def test_lstm_recurrence_in_bfloat16_equals_the_plain_path_in_bfloat16():
  # Both run the recurrent matmul in bfloat16 (h and U rounded, as LSTMCell._recurrent does) and
  # the gates and carries in float32, so the forward passes agree to float32 rounding, and so do
  # the gradients of the inputs, whose backward matmuls round the same dgates and U. The kernel's
  # gradient differs by rounding: the plain path rounds each step's h^T dgates to bfloat16 before
  # summing the steps (half an ulp, 2^-9, of each), the kernel only the sum. Measured: 1.0 x 2^-9
  # of the largest entry, inputs' gradients equal; the kernel's gradient from h_t instead of
  # h_{t-1}, or without the gates' s^2 scale, is off by 0.8 or more: the largest entry is 0.85.
  valid_TB = jnp.asarray(HOLES_TB)
  cell = LSTMCell(H, dtype=jnp.bfloat16, parent=None)
  params = {
    "recurrent_kernel": jnp.asarray(0.5 * _normal((H, 4 * H), 1)),
    "input": {},  # Unused: the inputs come projected.
  }
  xg_TBG = jnp.asarray(_normal((T, B, 4 * H), 2), jnp.bfloat16)
  carry = tuple(jnp.asarray(_normal((B, H), seed)) for seed in (3, 4))
  w_y, w_c, w_h = (
    jnp.asarray(_normal(s, seed)) for s, seed in (((T, B, H), 5), ((B, H), 6), ((B, H), 7))
  )
  kernel = lambda u, xg, c0: lstm_recurrence(xg, u, c0, valid_TB, reverse=True, dtype=jnp.bfloat16)
  plain = lambda u, xg, c0: _scan_of_step(
    cell, {**params, "recurrent_kernel": u}, xg, c0, valid_TB, reverse=True
  )

  def loss(run, u, xg, c0):
    (c, h), y = run(u, xg, c0)
    return jnp.sum(y.astype(jnp.float32) * w_y) + jnp.sum(c * w_c) + jnp.sum(h * w_h)

  grads = [
    jax.jit(jax.grad(functools.partial(loss, run), argnums=(0, 1, 2)))(
      params["recurrent_kernel"], xg_TBG, carry
    )
    for run in (kernel, plain)
  ]
  assert grads[0][1].dtype == jnp.bfloat16  # The gates' gradient in the inputs' dtype.
  for got, want in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * 2.0**-9 * np.abs(want).max())
    assert np.abs(want).max() > 1e-2  # Compared as numbers, not zeros against zeros.


# ---------------------------------------------------------------- softmax


def test_softmax_and_its_derivatives_equal_jax_nn_softmax():
  # Rows as attention makes them: ordinary, huge, and partly masked with finfo.min.
  logits = _normal((3, 4, 6), 11)
  logits[1] *= 1e4
  logits[2, :, 3:] = np.finfo(np.float32).min
  logits = jnp.asarray(logits)
  reference = functools.partial(jax.nn.softmax, axis=-1)
  np.testing.assert_array_equal(softmax(logits), reference(logits))

  cotangent = jnp.asarray(_normal(logits.shape, 12))
  grad = jax.vjp(softmax, logits)[1](cotangent)[0]
  grad_ref = jax.vjp(reference, logits)[1](cotangent)[0]
  np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(grad[2, :, 3:], 0.0)  # Masked keys get no gradient.
  # Each row's gradient sums to zero: softmax is invariant to adding a constant to a row.
  np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-5)

  tangent_out = jax.jvp(softmax, (logits,), (cotangent,))[1]
  np.testing.assert_allclose(
    tangent_out, jax.jvp(reference, (logits,), (cotangent,))[1], rtol=1e-5, atol=1e-6
  )
  second = lambda f: jax.grad(lambda x: jnp.sum(jax.grad(lambda y: jnp.sum(f(y) ** 3))(x) ** 2))
  np.testing.assert_allclose(
    second(softmax)(logits[0]), second(reference)(logits[0]), rtol=1e-4, atol=1e-6
  )


def test_softmax_gradient_has_no_reduction_on_cpu():
  # Why `softmax` exists: XLA:CPU runs the reverse-mode row sum as a slow standalone reduction,
  # so on the CPU the derivative uses matmuls against ones vectors instead.
  if jax.default_backend() != "cpu":
    pytest.skip("the matmul row sum is the CPU rule; other backends use jax.nn.softmax's")
  logits = jnp.asarray(_normal((2, 5), 13))
  grad_jaxpr = lambda f: str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(f(x) * logits)))(logits))
  ours, reference = grad_jaxpr(softmax), grad_jaxpr(functools.partial(jax.nn.softmax, axis=-1))
  # The forward pass's sum of exponentials stays; the backward pass's row sums are matmuls.
  assert ours.count("dot_general") == 2 and "dot_general" not in reference
  assert "reduce_sum" not in ours[ours.index("dot_general") :]
  assert ours.count("reduce_sum") < reference.count("reduce_sum")


# ---------------------------------------------------------------- flat_apply


@pytest.mark.parametrize("feature_axes", [1, 2])
def test_flat_apply_gives_the_layer_s_numbers_and_gradients(feature_axes):
  """flat_apply only reshapes: outputs and kernel gradients equal the layer's on [B, T, ...]."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 5, 4, 6)[: 2 + feature_axes]), jnp.float32)
  layer = nn.DenseGeneral((2, 3)) if feature_axes == 1 else nn.DenseGeneral(7, axis=(-2, -1))
  params = layer.init(jax.random.key(0), x)
  cotangent = jnp.asarray(rng.standard_normal(layer.apply(params, x).shape), jnp.float32)
  run = lambda p, x, f: jnp.sum(f(p, x) * cotangent)
  direct = lambda p, x: layer.apply(p, x)
  flat = lambda p, x: flat_apply(lambda x: layer.apply(p, x), x, feature_axes)
  np.testing.assert_allclose(flat(params, x), direct(params, x), rtol=1e-6, atol=1e-6)
  g_flat, g_direct = (jax.grad(run, argnums=(0, 1))(params, x, f) for f in (flat, direct))
  for a, b in zip(jax.tree.leaves(g_flat), jax.tree.leaves(g_direct)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
