"""jaxdl.kernels.conv_pool: conv + bias + ReLU + max-pool as one op equals the separate layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.kernels import conv_pool, winograd
from jaxdl.kernels import im2col as conv
from jaxdl.nn import pooling
from jaxdl.nn.cnn import MnistCNN
from jaxdl.nn.conv_layers import ConvReluMaxPool
from jaxdl.nn.vgg import VGG
from tests.reference import bf16_grads

CASES = [  # x shape, kernel shape, pads, window
  ((4, 28, 28, 1), (3, 3, 1, 8), ((0, 0), (0, 0)), (2, 2)),  # The seed CNN's conv1.
  ((3, 13, 13, 5), (3, 3, 5, 6), ((0, 0), (0, 0)), (2, 2)),  # conv2: the pool drops a row.
  ((2, 9, 10, 3), (3, 3, 3, 4), ((1, 1), (1, 1)), (2, 2)),  # VGG's padding, odd sizes.
  ((2, 8, 7, 2), (5, 3, 2, 3), ((2, 1), (0, 2)), (2, 2)),  # Uneven kernel and padding.
  ((2, 12, 12, 2), (3, 3, 2, 3), ((0, 0), (0, 0)), (3, 3)),  # A 3x3 pool.
  ((2, 10, 9, 2), (3, 3, 2, 3), ((1, 1), (1, 1)), (2, 1)),  # A 2x1 pool.
  ((2, 16, 3), (3, 3, 4), ((1, 1),), (2,)),  # One spatial axis.
  ((3, 13, 13, 8), (3, 3, 8, 6), ((0, 0), (0, 0)), (2, 2)),  # Winograd under "auto" (C >= 8).
  ((2, 9, 12, 8), (3, 3, 8, 4), ((1, 1), (1, 1)), (2, 2)),  # Winograd, VGG's padding.
]
IMPLS = ["im2col", "auto"]  # "auto": Winograd (C >= 8) or elementwise products (small patches).


def _separate(x, kernel, bias, pads, window):
  """The unfused reference: im2col convolution, bias, ReLU, then the tiling max-pool."""
  y = conv.conv_im2col(x, kernel, (1,) * len(window), pads, "highest") + bias
  return pooling.max_pool(jax.nn.relu(y), window, window)


def _fused(impl):
  return lambda x, kernel, bias, pads, window: conv_pool.conv_relu_max_pool(
    x, kernel, bias, pads, window, "highest", impl
  )


def _inputs(x_shape, kernel_shape, seed, integers):
  rng = np.random.default_rng(seed)
  draw = (lambda s: rng.integers(-2, 3, s)) if integers else rng.standard_normal
  return (
    jnp.asarray(draw(x_shape), jnp.float32),
    jnp.asarray(draw(kernel_shape), jnp.float32),
    jnp.asarray(draw(kernel_shape[-1:]), jnp.float32),
  )


def _value_and_grads(fn, args, pads, window, seed, integers=False):
  """fn's output and its input, kernel and bias gradients for a random output gradient (one jit:
  op-by-op dispatch of the backward pass was the slow part of these tests)."""
  forward = lambda *a: fn(*a, pads, window)
  y_shape = jax.eval_shape(forward, *args).shape
  rng = np.random.default_rng(seed + 1)
  dy = rng.integers(-3, 4, y_shape) if integers else rng.standard_normal(y_shape)

  @jax.jit
  def run(args, dy):
    y, vjp = jax.vjp(forward, *args)
    return y, vjp(dy)

  return run(args, jnp.asarray(dy, jnp.float32))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("x_shape,kernel_shape,pads,window", CASES)
def test_equals_the_separate_layers(x_shape, kernel_shape, pads, window, impl):
  """im2col: the same outputs to the bit, gradients equal up to the order of the kernel/bias
  sums. auto: everything equal up to float rounding (products summed in another order)."""
  args = _inputs(x_shape, kernel_shape, 0, integers=False)
  want, want_grads = _value_and_grads(_separate, args, pads, window, 0)
  got, got_grads = _value_and_grads(_fused(impl), args, pads, window, 0)
  assert got.shape == want.shape
  if impl == "im2col":
    np.testing.assert_array_equal(got, want)
  else:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for name, g, w in zip(("x", "kernel", "bias"), got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("x_shape,kernel_shape,pads,window", CASES[:3] + CASES[4:5] + CASES[7:])
def test_ties_and_dead_relus_route_the_gradient_as_select_and_scatter(
  x_shape, kernel_shape, pads, window, impl
):
  """Small integers (inputs, kernel, bias and output gradient) make ties in most pool windows
  and many exact zeros before the ReLU; every sum is then exact,
  so the gradients must agree to the bit: a tie goes to the first maximum in
  row-major order (as select_and_scatter, which tests/test_pooling.py checks), and a window
  whose maximum is <= 0 passes no gradient (relu'(0) = 0). Winograd's transforms only add,
  subtract and halve, so they too are exact here."""
  x, kernel, bias = _inputs(x_shape, kernel_shape, 3, integers=True)
  args = (x, kernel, bias - 6)  # Enough windows entirely <= 0 after the bias.
  y = _fused(impl)(*args, pads, window)
  assert 0.05 < float(jnp.mean(y == 0)) < 0.95  # Dead ReLUs are exercised.
  want, want_grads = _value_and_grads(_separate, args, pads, window, 3, integers=True)
  got, got_grads = _value_and_grads(_fused(impl), args, pads, window, 3, integers=True)
  np.testing.assert_array_equal(got, want)
  for name, g, w in zip(("x", "kernel", "bias"), got_grads, want_grads):
    np.testing.assert_array_equal(g, w, err_msg=name)


def test_auto_runs_winograd_from_8_input_channels_and_im2col_below():
  pads, window = ((1, 1), (1, 1)), (2, 2)
  for channels, winograd_expected in ((8, True), (7, False)):
    x, kernel, bias = _inputs((2, 10, 10, channels), (3, 3, channels, 4), 7, integers=False)
    got = jax.jit(lambda *a: conv_pool.conv_relu_max_pool(*a, pads, window))(x, kernel, bias)
    if winograd_expected:
      want = jax.jit(
        lambda x, k, b: winograd.conv3x3_relu_max_pool2x2(
          jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), k, b
        )
      )(x, kernel, bias)
    else:
      want = jax.jit(lambda *a: conv_pool.conv_relu_max_pool(*a, pads, window, impl="im2col"))(
        x, kernel, bias
      )
    np.testing.assert_array_equal(got, want, err_msg=str(channels))


def test_constant_input_sends_each_gradient_to_the_first_phase():
  """With every window tied, only the top-left conv output of each window gets gradient: the
  kernel gradient is then the sum of dy times those pixels' patches, computed here by hand."""
  x = jnp.ones((1, 6, 6, 1))
  kernel = jnp.ones((3, 3, 1, 2))
  bias = jnp.array([0.5, -20.0])  # Channel 1's ReLU is off everywhere: no gradient at all.
  dy = jnp.arange(8.0).reshape(1, 2, 2, 2)
  _, vjp = jax.vjp(
    lambda k, b: conv_pool.conv_relu_max_pool(x, k, b, ((0, 0), (0, 0)), (2, 2)), kernel, bias
  )
  dkernel, dbias = vjp(dy)
  np.testing.assert_array_equal(dbias, [dy[..., 0].sum(), 0.0])
  np.testing.assert_array_equal(dkernel[..., 0, 0], jnp.full((3, 3), dy[..., 0].sum()))
  np.testing.assert_array_equal(dkernel[..., 1], 0.0)


@pytest.mark.parametrize("channels", [2, 8])  # 8: Winograd under "auto".
def test_second_order_matches_the_separate_layers(channels):
  args = _inputs((2, 9, 9, channels), (3, 3, channels, 3), 5, integers=False)
  pads, window = ((1, 1), (1, 1)), (2, 2)

  def curvature(fn):
    inner = lambda k: jnp.sum(fn(args[0], k, args[2], pads, window) ** 2)
    return jax.jit(jax.grad(lambda k: jnp.sum(jax.grad(inner)(k) ** 2)))(args[1])

  np.testing.assert_allclose(curvature(_fused("auto")), curvature(_separate), rtol=1e-4, atol=1e-4)


def test_bad_shapes_are_clear_errors():
  x = jnp.zeros((1, 5, 5, 2))
  with pytest.raises(ValueError, match=r"kernel \(3, 3, 3, 4\).*do not fit an input"):
    conv_pool.conv_relu_max_pool(x, jnp.zeros((3, 3, 3, 4)), jnp.zeros(4), ((0, 0),) * 2, (2, 2))
  with pytest.raises(ValueError, match=r"pool does not fit the convolution's \(3, 3\) output"):
    conv_pool.conv_relu_max_pool(x, jnp.zeros((3, 3, 2, 4)), jnp.zeros(4), ((0, 0),) * 2, (4, 4))
  with pytest.raises(
    ValueError,
    match=r"\(9, 9\) pool window has 81 positions; at most 64.*"
    r"jaxdl.nn.pooling.max_pool separately",
  ):
    conv_pool.conv_relu_max_pool(
      jnp.zeros((1, 20, 20, 2)), jnp.zeros((3, 3, 2, 4)), jnp.zeros(4), ((0, 0),) * 2, (9, 9)
    )
  with pytest.raises(
    ValueError,
    match=r"unknown impl 'fast'; choose one of \('auto', 'im2col', "
    r"'winograd'\)",
  ):
    conv_pool.conv_relu_max_pool(
      x, jnp.zeros((3, 3, 2, 4)), jnp.zeros(4), ((0, 0),) * 2, (2, 2), impl="fast"
    )
  with pytest.raises(
    ValueError,
    match=r"'winograd' needs a 2-D 3x3 kernel, a \(2, 2\) pool and "
    r"at least 8 input channels; got a kernel \(3, 3, 2, 4\)",
  ):
    conv_pool.conv_relu_max_pool(
      x, jnp.zeros((3, 3, 2, 4)), jnp.zeros(4), ((0, 0),) * 2, (2, 2), impl="winograd"
    )
  with pytest.raises(ValueError, match=r"kernel \(3, 3, 9, 4\).*do not fit an input"):
    conv_pool.conv_relu_max_pool(
      jnp.zeros((1, 6, 6, 8)), jnp.zeros((3, 3, 9, 4)), jnp.zeros(4), ((0, 0),) * 2, (2, 2)
    )


def test_module_has_flax_convs_parameters_and_works_in_bfloat16():
  x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 3))
  init = nn.initializers.glorot_uniform()
  fused = ConvReluMaxPool(8, (3, 3), padding="SAME", kernel_init=init)
  layer = nn.Conv(8, (3, 3), padding="SAME", kernel_init=init)
  params = fused.init(jax.random.key(1), x)
  assert jax.tree.map(np.array_equal, params, layer.init(jax.random.key(1), x)) == jax.tree.map(
    lambda _: True, params
  )
  want = jax.jit(lambda p: pooling.max_pool(nn.relu(layer.apply(p, x)), (2, 2), (2, 2)))(params)
  np.testing.assert_allclose(jax.jit(fused.apply)(params, x), want, rtol=1e-6, atol=1e-6)
  # In bfloat16, with a bias (zero at init) so that the ReLU cuts somewhere else than the pool.
  params = {"params": {**params["params"], "bias": jnp.linspace(-0.2, 0.2, 8)}}
  params, x = bf16_grads.rounded((params, x))
  dy = bf16_grads.rounded(np.random.default_rng(2).standard_normal(want.shape))
  # Against nn.Conv, ReLU and max-pool in float32 on the same bfloat16-rounded inputs, each
  # gradient entry to 8 bfloat16 roundings (2^-9 each) of the sum of its terms' magnitudes
  # (tests/reference/bf16_grads.py): a matmul's partial sums, and the 9 taps' overlaps added in
  # bfloat16 for the input's. Measured: 3.5 x 2^-9 at most; a 2% smaller kernel gradient: 10.
  float32_conv = nn.Conv(8, (3, 3), padding="SAME", precision="highest")
  want, dy, want_grads, bounds = bf16_grads.reference(
    float32_conv.apply, params, x, dy, window=(2, 2)
  )
  assert np.mean(dy != 0) > 0.5  # Most windows are clear of ties (the others' dy is zeroed).
  for impl in ("auto", "im2col"):  # "auto": conv1-like patches as elementwise multiply-adds.
    half = ConvReluMaxPool(8, (3, 3), padding="SAME", dtype=jnp.bfloat16, impl=impl)
    y, grads = jax.jit(lambda p, x, dy, f=half.apply: _output_and_grads(f, (p, x), dy))(
      params, x, dy
    )
    assert y.dtype == jnp.bfloat16 and y.shape == (2, 6, 6, 8)
    np.testing.assert_allclose(np.float32(y), want, atol=0.05)
    assert grads[0]["params"]["kernel"].dtype == jnp.float32  # param_dtype, as Flax's.
    bf16_grads.assert_within(grads, want_grads, bounds, roundings=8)


def _output_and_grads(f, args, dy):
  """f(*args) and its gradients at cotangent dy (cast to the output's dtype)."""
  y, vjp = jax.vjp(f, *args)
  return y, vjp(dy.astype(y.dtype))


def _logits_and_grads(model, params, x, labels):
  def loss(params):
    logits = model.apply(params, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)), logits

  (loss_value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return (loss_value, grads), logits


@pytest.mark.parametrize(
  "make",
  [
    lambda fuse: MnistCNN(kernels="fused" if fuse else "im2col"),
    pytest.param(
      lambda fuse: VGG(
        depth=11,
        num_classes=10,
        width_multiplier=0.125,
        hidden_dim=16,
        pool_size=1,
        kernels="fused" if fuse else "im2col",
      ),
      marks=pytest.mark.slow,
    ),  # Compiling VGG-11's gradient twice: ~45 s.
  ],
  ids=["mnist_cnn", "vgg11"],
)
def test_models_give_the_same_numbers_fused_or_not(make):
  """Same parameter trees; the same logits to the bit; loss gradients to float rounding."""
  shape = (8, 28, 28, 1) if make(True).__class__ is MnistCNN else (4, 32, 32, 3)
  x = jax.random.uniform(jax.random.key(0), shape)
  labels = jax.random.randint(jax.random.key(1), (shape[0],), 0, 10)
  fused, separate = make(True), make(False)
  params = jax.jit(separate.init)(jax.random.key(2), x)  # Jitted: op by op takes seconds.
  assert jax.tree.map(np.array_equal, params, jax.jit(fused.init)(jax.random.key(2), x)) == (
    jax.tree.map(lambda _: True, params)
  )
  (loss_f, grads_f), logits_f = _logits_and_grads(fused, params, x, labels)
  (loss_s, grads_s), logits_s = _logits_and_grads(separate, params, x, labels)
  np.testing.assert_array_equal(logits_f, logits_s)
  assert loss_f == loss_s
  for (path, g), w in zip(
    jax.tree_util.tree_flatten_with_path(grads_f)[0], jax.tree.leaves(grads_s)
  ):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_seed_cnn_auto_equals_im2col_to_float_rounding():
  """The default (Winograd conv2, elementwise conv1) against the fused im2col op: the same
  parameters, logits and loss gradients up to float rounding."""
  x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
  labels = jax.random.randint(jax.random.key(1), (8,), 0, 10)
  auto = MnistCNN(kernels="winograd")
  im2col = MnistCNN(kernels="fused")
  params = jax.jit(im2col.init)(jax.random.key(2), x)
  (loss_a, grads_a), logits_a = _logits_and_grads(auto, params, x, labels)
  (loss_i, grads_i), logits_i = _logits_and_grads(im2col, params, x, labels)
  np.testing.assert_allclose(logits_a, logits_i, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss_a, loss_i, rtol=1e-6)
  for (path, g), w in zip(
    jax.tree_util.tree_flatten_with_path(grads_a)[0], jax.tree.leaves(grads_i)
  ):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_fusion_is_used_only_by_the_fused_kernel_sets():
  x = jnp.zeros((2, 28, 28, 1))

  def ops(**kwargs):
    model = MnistCNN(**kwargs)
    params = jax.eval_shape(model.init, jax.random.key(0), x)  # Traced only: no compute.
    return str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(model.apply(p, x))))(params))

  # The fused op's forward keeps, per pooled output, the phase its gradient goes to, as int8.
  for kernels in ("fused", "winograd"):
    assert "i8[2,13,13,32]" in ops(kernels=kernels), kernels
  for kernels in ("plain", "xla", "im2col"):
    assert "i8[" not in ops(kernels=kernels), kernels


def test_seed_cnn_trains_to_the_same_numbers_fused_or_not(tmp_path):
  """20 trainer steps and an eval: losses and accuracies agree to float rounding."""
  from tests.conftest import seed_cnn_run

  fused = seed_cnn_run(tmp_path / "fused", "runtime.kernels=winograd")
  separate = seed_cnn_run(tmp_path / "separate", "runtime.kernels=im2col")
  assert [r.keys() for r in fused] == [r.keys() for r in separate]
  assert any("eval/loss" in r for r in fused)
  for got, want in zip(fused, separate):
    for key, value in want.items():
      np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
