"""jaxdl.kernels.winograd: F(2x2, 3x3) convolution + bias + ReLU + 2x2 max-pool against XLA's."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.kernels import winograd
from tests.reference import bf16_grads


def _reference_conv(x_padded, kernel):
  """XLA's convolution at float32 precision."""
  return lax.conv_general_dilated(
    x_padded,
    kernel,
    (1, 1),
    "VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision="highest",
  )


def _reference(x_padded, kernel, bias):
  """XLA's convolution, bias, ReLU and Flax's max-pool: what the op must compute."""
  return nn.max_pool(jax.nn.relu(_reference_conv(x_padded, kernel) + bias), (2, 2), (2, 2))


def _value_and_grads(fn, args, dy):
  y, vjp = jax.vjp(fn, *args)
  return y, vjp(dy)


def test_transforms_give_a_2x2_block_of_the_convolution_exactly():
  """A^T [(G g G^T) * (B^T d B)] A is the 3x3 correlation of a 4x4 tile; with integers, whose
  sums and halvings are exact in float32, to the bit."""
  rng = np.random.default_rng(0)
  for _ in range(20):
    d = rng.integers(-9, 10, (4, 4)).astype(np.float32)
    g = rng.integers(-9, 10, (3, 3)).astype(np.float32)
    t_out, t_kernel, t_input = (
      np.array(t, np.float32) for t in (winograd.T_OUTPUT, winograd.T_KERNEL, winograd.T_INPUT)
    )
    got = t_out @ ((t_kernel @ g.ravel()) * (t_input @ d.ravel()))
    want = [np.sum(d[r : r + 3, s : s + 3] * g) for r in range(2) for s in range(2)]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
  "x_shape,features",
  [
    ((1, 4, 4, 8), 3),  # The smallest input: one tile, one pooled output.
    ((2, 11, 14, 8), 5),  # Odd and unequal sizes: the pool drops the last row.
    ((3, 13, 13, 32), 64),  # The seed CNN's conv2.
  ],
)
def test_matches_xla_convolution_relu_and_pool(x_shape, features):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, x_shape[-1], features)) * 0.3, jnp.float32)
  bias = jnp.asarray(rng.standard_normal(features) * 0.1, jnp.float32)
  out_shape = jax.eval_shape(_reference, x, kernel, bias).shape
  dy = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
  want, want_grads = jax.jit(lambda *a: _value_and_grads(_reference, a, dy))(x, kernel, bias)
  got, got_grads = jax.jit(lambda *a: _value_and_grads(winograd.conv3x3_relu_max_pool2x2, a, dy))(
    x, kernel, bias
  )
  assert (
    got.shape == want.shape == (x_shape[0], (x_shape[1] - 2) // 2, (x_shape[2] - 2) // 2, features)
  )
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
  for name, g, w in zip(("x", "kernel", "bias"), got_grads, want_grads):
    np.testing.assert_allclose(
      g, w, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(w))), err_msg=name
    )


def test_runs_in_bfloat16():
  rng = np.random.default_rng(2)
  x, kernel, bias, dy = bf16_grads.rounded(
    (
      rng.random((2, 10, 10, 8)),
      rng.standard_normal((3, 3, 8, 4)) * 0.3,
      rng.standard_normal(4) * 0.1,
      rng.standard_normal((2, 4, 4, 4)),
    )
  )
  # Against XLA's convolution, ReLU and max-pool in float32 on the same bfloat16-rounded inputs,
  # gradients to 8 bfloat16 roundings (2^-9 each) of each tensor's largest sum of terms'
  # magnitudes (tests/reference/bf16_grads.py): the transforms mix a tile's pixels before they
  # round, so an entry's error follows its tile, not its own terms. Measured: 2.4 x 2^-9 at most;
  # an untransposed transform or G without its halves is off by hundreds.
  conv = lambda p, x: _reference_conv(x, p["kernel"]) + p["bias"]
  params = {"kernel": kernel, "bias": bias}
  want, dy, want_grads, bounds = bf16_grads.reference(conv, params, x, dy, window=(2, 2))
  assert np.mean(dy != 0) > 0.5  # Most windows are clear of ties (the others' dy is zeroed).
  half = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), (params, x, dy))
  run = lambda p, x: winograd.conv3x3_relu_max_pool2x2(x, p["kernel"], p["bias"])
  y, grads = jax.jit(lambda p, x, dy: _value_and_grads(run, (p, x), dy))(*half)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(y), want, atol=0.1, rtol=0.02)
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.bfloat16)}
  bf16_grads.assert_within(grads, want_grads, bounds, roundings=8, per_entry=False)


def test_applies_to_3x3_kernels_2x2_pools_and_enough_channels():
  assert winograd.applies((3, 3, 8, 16), (2, 2), 8)
  assert not winograd.applies((3, 3, 3, 16), (2, 2), 3)  # A first layer: too few channels.
  assert not winograd.applies((5, 5, 8, 16), (2, 2), 8)
  assert not winograd.applies((3, 3, 8, 16), (3, 3), 8)
  assert not winograd.applies((3, 8, 16), (2,), 8)  # One spatial axis.


def test_too_small_an_input_is_a_clear_error():
  with pytest.raises(ValueError, match=r"a 3x5 padded input has no 2x2 pooled output"):
    winograd.conv3x3_relu_max_pool2x2(
      jnp.zeros((1, 3, 5, 8)), jnp.zeros((3, 3, 8, 2)), jnp.zeros(2)
    )
