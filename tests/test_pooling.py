"""jaxdl.nn.pooling and jaxdl.kernels.pooling: the reshape path equals Flax's pooling to the
bit, gradients included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.kernels import pooling as pooling_kernels
from jaxdl.nn import pooling


def _grad(pool, x, dy):
  return jax.grad(lambda x: jnp.sum(pool(x) * dy))(x)


@pytest.mark.parametrize(
  "shape,window",
  [
    ((3, 26, 26, 5), (2, 2)),  # The seed CNN's first pool.
    ((2, 11, 11, 4), (2, 2)),  # Odd: the last row and column are dropped.
    ((2, 9, 12, 3), (3, 2)),  # Non-square windows.
    ((2, 8, 3), (2,)),  # One spatial axis.
  ],
)
def test_max_pool_matches_flax_with_ties(shape, window):
  rng = np.random.default_rng(0)
  # Small integers make ties in most windows, and ReLU-like zeros make all-equal windows.
  x = jnp.asarray(np.maximum(rng.integers(-2, 3, shape), 0).astype(np.float32))
  reference = lambda x: nn.max_pool(x, window, strides=window)
  fast = lambda x: pooling.max_pool(x, window, strides=window)
  y = fast(x)
  np.testing.assert_array_equal(y, reference(x))
  dy = jnp.asarray(rng.standard_normal(y.shape).astype(np.float32))
  g_fast, g_ref = _grad(fast, x, dy), _grad(reference, x, dy)
  np.testing.assert_array_equal(g_fast, g_ref)
  # The first maximum of each window takes the whole gradient (jnp.max would split it).
  assert float(jnp.sum(g_fast)) == pytest.approx(float(jnp.sum(dy)), rel=1e-5)
  assert int(jnp.sum(g_fast != 0)) <= y.size


def test_max_pool_jit_and_second_order_use_the_fast_path():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  hlo = (
    jax.jit(jax.grad(lambda x: jnp.sum(pooling.max_pool(x, (2, 2), (2, 2)) ** 2)))
    .lower(x)
    .as_text()
  )
  assert "select_and_scatter" not in hlo and "reduce_window" not in hlo
  # Overlapping windows fall back to Flax's reduce_window, same results.
  x7 = jax.random.normal(jax.random.key(1), (2, 7, 7, 3))
  np.testing.assert_array_equal(
    pooling.max_pool(x7, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))),
    nn.max_pool(x7, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))),
  )


@pytest.mark.parametrize("shape", [(3, 16, 16, 5), (2, 7, 9, 3)])
def test_avg_pool_matches_flax(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  reference = lambda x: nn.avg_pool(x, (2, 2), strides=(2, 2))
  fast = lambda x: pooling.avg_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_allclose(fast(x), reference(x), rtol=1e-6, atol=1e-7)
  dy = jax.random.normal(jax.random.key(1), fast(x).shape)
  np.testing.assert_allclose(_grad(fast, x, dy), _grad(reference, x, dy), rtol=1e-6, atol=1e-7)


def test_reduce_window_impl_and_bad_impl():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  hlo = (
    jax.jit(lambda x: pooling.max_pool(x, (2, 2), (2, 2), impl="reduce_window")).lower(x).as_text()
  )
  assert "reduce_window" in hlo
  with pytest.raises(ValueError, match="Unknown pooling implementation 'fast'.*reshape"):
    pooling.max_pool(x, (2, 2), (2, 2), impl="fast")


def test_seed_cnn_trains_to_the_same_numbers_with_either_pool(tmp_path):
  """The speed option changes nothing a run computes: 20 steps and an eval, to the bit."""
  from tests.conftest import seed_cnn_run

  # XLA's convolutions in both, so that the pools are all that differs.
  fast = seed_cnn_run(tmp_path / "reshape", "runtime.kernels=xla")
  reference = seed_cnn_run(tmp_path / "reduce_window", "runtime.kernels=plain")
  assert fast == reference
  assert any("eval/loss" in r for r in fast)


def test_max_and_first_argmax_is_max_and_argmax_in_one_reduction():
  x = jax.random.normal(jax.random.key(0), (3, 5, 4, 6))
  x = x.at[0, 0, 2].set(x[0, 0, 1])  # Ties: the first index wins, as jnp.argmax's.
  x = x.at[1, 1].set(2.5)  # Every position tied.
  for axis in (2, -1, 0):
    top, first = jax.jit(pooling_kernels.max_and_first_argmax, static_argnums=1)(x, axis)
    np.testing.assert_array_equal(top, jnp.max(x, axis=axis))
    np.testing.assert_array_equal(first, jnp.argmax(x, axis=axis))
    assert first.dtype == jnp.int32


def test_max_and_first_argmax_differentiates_through_the_first_maximum():
  x = jnp.array([[1.0, 3.0, 3.0, 2.0], [0.0, -1.0, 4.0, 4.0]])
  weights = jnp.array([10.0, 100.0])
  grad = jax.grad(lambda x: jnp.sum(pooling_kernels.max_and_first_argmax(x, 1)[0] * weights))(x)
  np.testing.assert_array_equal(grad, [[0, 10, 0, 0], [0, 0, 100, 0]])
  # Second order through it (as the fused conv-pool's tests take it) runs and is zero here.
  hess = jax.hessian(lambda x: jnp.sum(pooling_kernels.max_and_first_argmax(x, 1)[0] ** 2))(x)
  assert hess[0, 1, 0, 1] == 2.0 and float(jnp.sum(jnp.abs(hess))) == 4.0
  with pytest.raises(ValueError, match="at most 256 positions"):
    pooling_kernels.max_and_first_argmax(jnp.zeros((2, 300)), 1)
