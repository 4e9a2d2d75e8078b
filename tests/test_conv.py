"""jaxdl.kernels.im2col: im2col convolutions equal XLA's up to float rounding, gradients
included."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.kernels import im2col as conv
from jaxdl.nn.cnn import MnistCNN
from tests.reference import bf16_grads

# What nn.Conv runs: None is Flax's own lax.conv_general_dilated.
CONV_GENERAL_DILATED = {"xla": None, "im2col": conv.im2col_conv_general_dilated}
CHANNELS_LAST = {
  1: ("NWC", "WIO", "NWC"),
  2: ("NHWC", "HWIO", "NHWC"),
  3: ("NDHWC", "DHWIO", "NDHWC"),
}


def _both(x_shape, kernel_shape, strides, padding, seed=0, **kwargs):
  """(XLA's, im2col's) outputs and input/kernel gradients, at float32 'highest' precision."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32)
  numbers = lax.conv_dimension_numbers(x_shape, kernel_shape, CHANNELS_LAST[len(x_shape) - 2])

  def run(fn):
    f = lambda x, k: fn(
      x, k, strides, padding, dimension_numbers=numbers, precision="highest", **kwargs
    )
    y, vjp = jax.vjp(f, x, kernel)
    dy = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(y.shape), jnp.float32)
    return (y,) + vjp(dy)

  return run(lax.conv_general_dilated), run(conv.im2col_conv_general_dilated)


@pytest.mark.parametrize(
  "x_shape,kernel_shape,strides,padding",
  [
    ((4, 13, 13, 32), (3, 3, 32, 64), (1, 1), "VALID"),  # The seed CNN's conv2.
    ((2, 9, 10, 3), (3, 3, 3, 5), (2, 2), "SAME"),  # Strided, odd sizes, padded.
    ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), "VALID"),  # A ResNet-style 1x1 projection.
    ((2, 11, 7, 3), (5, 3, 3, 4), (2, 3), ((2, 1), (0, 2))),  # Explicit, uneven padding.
    ((2, 16, 5), (4, 5, 6), (3,), "SAME"),  # One spatial axis.
    ((1, 5, 6, 4, 2), (2, 3, 2, 2, 3), (1, 2, 1), "SAME"),  # Three.
    ((2, 4, 4, 8), (3, 3, 8, 8), (1, 1), "SAME"),  # Stride 1, padded, a small image.
    ((2, 8, 9, 4), (3, 3, 4, 6), (1, 1), ((1, 1), (0, 2))),  # Stride 1, explicit padding.
    ((2, 10, 3), (3, 3, 4), (1,), "VALID"),  # Stride 1 in 1-D.
  ],
)
def test_im2col_matches_xla_forward_and_gradients(x_shape, kernel_shape, strides, padding):
  reference, im2col = _both(x_shape, kernel_shape, strides, padding)
  for name, want, got in zip(("output", "d input", "d kernel"), reference, im2col):
    assert got.shape == want.shape, name
    # Float rounding only: sums of up to ~300 products of unit normals, reassociated.
    np.testing.assert_allclose(
      got, want, rtol=1e-5, atol=1e-4 * float(jnp.abs(want).max()), err_msg=name
    )


def test_unsupported_arguments_fall_back_to_xla_exactly():
  """Dilations and feature groups are not im2col's: they run lax.conv_general_dilated itself."""
  for kwargs, kernel_shape in [
    (dict(rhs_dilation=(2, 2)), (3, 3, 4, 6)),
    (dict(lhs_dilation=(2, 1)), (3, 3, 4, 6)),
    (dict(feature_group_count=2), (3, 3, 2, 6)),
  ]:
    reference, im2col = _both((2, 9, 9, 4), kernel_shape, (1, 1), ((1, 1), (1, 1)), **kwargs)
    for want, got in zip(reference, im2col):
      np.testing.assert_array_equal(got, want)


def test_channels_first_layout_falls_back_to_xla():
  x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))  # NCHW, lax's default layout.
  kernel = jax.random.normal(jax.random.key(1), (5, 3, 3, 3))  # OIHW.
  np.testing.assert_array_equal(
    conv.im2col_conv_general_dilated(x, kernel, (1, 1), "SAME"),
    lax.conv_general_dilated(x, kernel, (1, 1), "SAME"),
  )


def test_second_order_reverse_mode_matches_xla():
  """A gradient penalty (the gradient of a gradient's norm) through im2col, as through XLA's."""
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, CHANNELS_LAST[2])

  def penalty(fn):
    loss = lambda k: jnp.sum(
      jnp.tanh(fn(x, k, (1, 1), "SAME", dimension_numbers=numbers, precision="highest"))
    )
    return jax.grad(lambda k: jnp.sum(jax.grad(loss)(k) ** 2))(kernel)

  np.testing.assert_allclose(
    penalty(conv.im2col_conv_general_dilated),
    penalty(lax.conv_general_dilated),
    rtol=1e-4,
    atol=1e-4,
  )


def test_place_and_sum_adds_each_view_where_it_was_cut_from():
  """place_and_sum is the gradient of cutting strided views: each view's element v lands at
  offset + stride * v, overlaps add up, and the rest is zero (checked against a numpy loop)."""
  rng = np.random.default_rng(0)
  shape, strides = (11, 9), (2, 3)
  offsets = [(0, 0), (1, 2), (3, 0), (2, 1)]
  views = [
    rng.standard_normal(
      (2, (shape[0] - a - 1) // strides[0] + 1, (shape[1] - b - 1) // strides[1] + 1, 3)
    )
    for a, b in offsets
  ]
  expected = np.zeros((2,) + shape + (3,))
  for view, (a, b) in zip(views, offsets):
    for i in range(view.shape[1]):
      for j in range(view.shape[2]):
        expected[:, a + strides[0] * i, b + strides[1] * j] += view[:, i, j]
  got = conv.place_and_sum([jnp.asarray(v, jnp.float32) for v in views], offsets, strides, shape)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_window_larger_than_the_input_is_a_clear_error():
  x, kernel = jnp.zeros((1, 2, 2, 1)), jnp.zeros((3, 3, 1, 1))
  with pytest.raises(ValueError, match="window of 3 does not fit in a padded input of 2"):
    conv.conv_im2col(x, kernel, (1, 1), ((0, 0), (0, 0)))


def test_flax_conv_with_im2col_keeps_its_parameters_and_works_in_bfloat16():
  x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 3))
  layers = {
    impl: nn.Conv(
      8, (3, 3), strides=2, dtype=jnp.bfloat16, conv_general_dilated=CONV_GENERAL_DILATED[impl]
    )
    for impl in ("xla", "im2col")
  }
  params = {impl: layer.init(jax.random.key(1), x) for impl, layer in layers.items()}
  assert jax.tree.map(np.array_equal, params["xla"], params["im2col"]) == jax.tree.map(
    lambda _: True, params["xla"]
  )
  y = {impl: layer.apply(params["xla"], x) for impl, layer in layers.items()}
  assert y["im2col"].dtype == jnp.bfloat16 and y["im2col"].shape == (2, 6, 6, 8)
  np.testing.assert_allclose(np.float32(y["im2col"]), np.float32(y["xla"]), atol=0.05)
  # Gradients: float32 XLA's of the same bfloat16-rounded inputs, each entry to 8 bfloat16
  # roundings (2^-9 each) of the sum of its terms' magnitudes (tests/reference/bf16_grads.py):
  # a matmul's or a reduction's partial sums, and up to 4 overlapping taps added in bfloat16.
  # Measured: 2.2 x 2^-9 at most; a flipped filter is off by hundreds.
  params, x = bf16_grads.rounded((params["xla"], x))
  dy = bf16_grads.rounded(np.random.default_rng(2).standard_normal(y["im2col"].shape))
  loss = lambda p, x: jnp.sum(layers["im2col"].apply(p, x).astype(jnp.float32) * dy)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  assert grads[0]["params"]["kernel"].dtype == jnp.float32  # param_dtype, as Flax's.
  float32_conv = nn.Conv(8, (3, 3), strides=2, precision="highest")
  _, _, want, bounds = bf16_grads.reference(float32_conv.apply, params, x, dy)
  bf16_grads.assert_within(grads, want, bounds, roundings=8)


def test_seed_cnn_gives_the_same_numbers_with_either_conv():
  """Same parameters; logits and gradients equal up to float rounding."""
  x = jax.random.uniform(jax.random.key(0), (16, 28, 28, 1))
  labels = jax.random.randint(jax.random.key(1), (16,), 0, 10)
  models = {impl: MnistCNN(kernels=impl) for impl in ("xla", "im2col")}
  params = jax.jit(models["xla"].init)(jax.random.key(2), x)  # Jitted: op by op takes ~10 s.
  assert jax.tree.map(np.array_equal, params, jax.jit(models["im2col"].init)(jax.random.key(2), x))

  def loss(params, impl):
    logits = models[impl].apply(params, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  values = {
    impl: jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, impl) for impl in models
  }
  np.testing.assert_allclose(values["im2col"][0], values["xla"][0], rtol=1e-6)
  for want, got in zip(jax.tree.leaves(values["xla"][1]), jax.tree.leaves(values["im2col"][1])):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_seed_cnn_trains_to_the_same_numbers_with_either_conv(tmp_path):
  """20 training steps and an eval: the logged numbers agree to float rounding (measured on x86:
  losses and accuracies equal, grad norms within 3e-7 relative; the tolerance leaves room for
  other CPUs' kernels)."""
  from tests.conftest import seed_cnn_run

  fast = seed_cnn_run(tmp_path / "im2col", "runtime.kernels=im2col")
  reference = seed_cnn_run(tmp_path / "xla", "runtime.kernels=xla")
  assert [r.keys() for r in fast] == [r.keys() for r in reference]
  assert any("eval/loss" in r for r in fast)
  for got, want in zip(fast, reference):
    for key, value in want.items():
      np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


def test_auto_is_xla_when_the_cpu_is_split_into_devices():
  """On 8 CPU devices XLA's convolutions were the faster ones (benchmarks/conv_impl.py)."""
  import os
  import subprocess
  import sys

  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  done = subprocess.run(
    [sys.executable, "-c", "from jaxdl.nn import conv_layers; print(conv_layers.resolve('auto'))"],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.split() == ["xla"]
