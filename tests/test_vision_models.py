"""Vision models: VGG, ResNet (ImageNet and CIFAR), DenseNet and ViT.

Parameter counts of the published configurations are checked against torchvision's and timm's
numbers with `jax.eval_shape` (no weights are allocated). BatchNorm, mixed precision, zero-init
residuals, shortcuts, adaptive pooling and patch embedding run for real on tiny networks, each
compiled once.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.nn.densenet import DENSENET_PRESETS, DenseLayer, DenseNet
from jaxdl.nn.resnet import (
  CIFAR_RESNET_PRESETS,
  RESNET_PRESETS,
  BasicBlock,
  Bottleneck,
  CifarResNet,
  ResNet,
  zero_pad_shortcut,
)
from jaxdl.nn.vgg import VGG, VGG_PRESETS, adaptive_avg_pool
from jaxdl.nn.vit import VIT_PRESETS, ViT


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _images(shape, seed=0):
  # Test data stays in numpy: every eager JAX op on a new shape is a (slow) compilation.
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _shapes(model, shape, **kwargs):
  """Variable shapes of model.init on images of `shape`, without computing anything."""
  init = functools.partial(model.init, train=False, **kwargs)
  return jax.eval_shape(
    lambda *a: nn.unbox(init(*a)), jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32)
  )


def _random_variables(model, shape, seed=0):
  """Variables of the right shapes drawn by numpy, so that no initialiser is compiled (compiling
  model.init's random number generation takes seconds on CPU). Kernels N(0, 1/fan_in), biases
  N(0, 0.01); norm layers start as torch's do (scale 1, bias 0, running mean 0 and variance 1).
  Tests of the initialisation itself use model.init."""
  rng = np.random.default_rng(seed)

  def draw(tree, is_norm=False):
    out = {}
    for key, value in tree.items():
      if isinstance(value, dict):
        out[key] = draw(value, "scale" in value or "var" in value)
      elif key in ("scale", "var"):
        out[key] = np.ones(value.shape, value.dtype)
      elif is_norm or key == "mean":
        out[key] = np.zeros(value.shape, value.dtype)
      else:
        fan_in = math.prod(value.shape[:-1]) if len(value.shape) > 1 else 1
        std = 0.1 if key == "bias" else 1.0 / math.sqrt(fan_in)
        out[key] = (std * rng.standard_normal(value.shape)).astype(value.dtype)
    return out

  return draw(_shapes(model, shape))


def _init(model, x):
  """model.init for the tests of initialisation, with a fast-to-compile random number generator."""
  init = jax.jit(functools.partial(model.init, train=False))
  return nn.unbox(init(jax.random.key(0, impl="unsafe_rbg"), x))


def _out_shape(model, shape):
  """Shape and dtype of the logits, from one abstract trace of init."""
  init = functools.partial(model.init_with_output, train=False)
  return jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))[0]


# --- Parameter counts (torchvision / timm) --------------------------------------------------------

TORCHVISION_COUNTS = {
  "vgg11": 132_863_336,
  "vgg11_bn": 132_868_840,
  "vgg13": 133_047_848,
  "vgg13_bn": 133_053_736,
  "vgg16": 138_357_544,
  "vgg16_bn": 138_365_992,
  "vgg19": 143_667_240,
  "vgg19_bn": 143_678_248,
  "resnet18": 11_689_512,
  "resnet34": 21_797_672,
  "resnet50": 25_557_032,
  "resnet101": 44_549_160,
  "resnet152": 60_192_808,
  "densenet121": 7_978_856,
  "densenet169": 14_149_480,
  "densenet161": 28_681_000,
  "densenet201": 20_013_928,
}
TIMM_COUNTS = {
  "vit_tiny_patch16_224": 5_717_416,
  "vit_small_patch16_224": 22_050_664,
  "vit_base_patch16_224": 86_567_656,
  "vit_large_patch16_224": 304_326_632,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_COUNTS))
def test_torchvision_parameter_counts(name):
  presets = {**VGG_PRESETS, **RESNET_PRESETS, **DENSENET_PRESETS}
  cls = VGG if name.startswith("vgg") else ResNet if name.startswith("resnet") else DenseNet
  variables = _shapes(cls(**presets[name]), (1, 224, 224, 3))
  assert _count(variables["params"]) == TORCHVISION_COUNTS[name]
  if name.startswith("densenet"):  # torchvision's classifiers read 1024 / 2208 / 1664 / 1920.
    channels = {121: 1024, 161: 2208, 169: 1664, 201: 1920}[int(name[8:])]
    assert variables["params"]["classifier"]["kernel"].shape == (channels, 1000)
  # BatchNorm's running statistics are state, not parameters.
  assert ("batch_stats" in variables) == (not name.startswith("vgg") or name.endswith("_bn"))


def _vit_params(image, patch, d, layers, mlp, classes, channels=3):
  tokens = (image // patch) ** 2 + 1
  block = 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d) + 2 * 2 * d
  return (
    (patch * patch * channels * d + d)
    + d
    + tokens * d
    + layers * block
    + 2 * d
    + (d * classes + classes)
  )


@pytest.mark.parametrize("name", sorted(VIT_PRESETS))
def test_vit_parameter_counts(name):
  kw = VIT_PRESETS[name]
  model = ViT(**kw)
  channels = 1 if model.image_size == 28 else 3
  variables = _shapes(model, (1, model.image_size, model.image_size, channels))
  expected = _vit_params(
    model.image_size,
    model.patch_size,
    model.embed_dim,
    model.num_layers,
    model.mlp_dim,
    model.num_classes,
    channels,
  )
  assert _count(variables["params"]) == expected
  if name in TIMM_COUNTS:
    assert expected == TIMM_COUNTS[name]
  # One position embedding per patch, plus the class token's.
  assert variables["params"]["pos_embed"].shape == (
    1,
    (model.image_size // model.patch_size) ** 2 + 1,
    model.embed_dim,
  )
  assert set(variables) == {"params"}


def test_vit_position_embeddings_follow_image_size():
  vit_mnist = _shapes(ViT(**VIT_PRESETS["vit_mnist"]), (1, 28, 28, 1))["params"]
  assert vit_mnist["pos_embed"].shape == (1, 49 + 1, 128)
  vit_384 = _shapes(ViT(**VIT_PRESETS["vit_base_patch16_224"], image_size=384), (1, 384, 384, 3))[
    "params"
  ]
  assert vit_384["pos_embed"].shape == (1, 24 * 24 + 1, 768)


def _cifar_resnet_params(depth, classes=10, projection=False):
  """He et al.'s CIFAR ResNet: 3x3 conv 16 + BN, 3 stages of n two-conv blocks, fc."""
  n, total, c_in = (depth - 2) // 6, 27 * 16 + 2 * 16, 16
  for c in (16, 32, 64):
    for _ in range(n):
      total += 9 * c_in * c + 9 * c * c + 2 * 2 * c
      if projection and c_in != c:
        total += c_in * c + 2 * c
      c_in = c
  return total + 64 * classes + classes


def test_cifar_resnet_parameter_counts():
  counts = {
    name: _count(_shapes(CifarResNet(**kw), (1, 32, 32, 3))["params"])
    for name, kw in CIFAR_RESNET_PRESETS.items()
  }
  # The paper's Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M (option A, parameter-free shortcuts).
  assert counts == {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
  }
  for name, count in counts.items():
    assert count == _cifar_resnet_params(CIFAR_RESNET_PRESETS[name]["depth"])
  # Option B adds a 1x1 conv + BN at the two stage changes: 2,752 parameters.
  option_b = _count(_shapes(CifarResNet(depth=20, shortcut="projection"), (1, 32, 32, 3))["params"])
  assert option_b == _cifar_resnet_params(20, projection=True) == 272_474


def test_resnet18_cifar_stem_count_and_names():
  variables = _shapes(ResNet(**RESNET_PRESETS["resnet18_cifar"]), (1, 32, 32, 3))
  assert _count(variables["params"]) == 11_173_962  # kuangliu/pytorch-cifar's ResNet18.
  assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 64)
  assert _out_shape(ResNet(**RESNET_PRESETS["resnet18_cifar"]), (2, 32, 32, 3)).shape == (2, 10)


def test_torchvision_layer_names_and_shapes():
  params = _shapes(ResNet(depth=50), (1, 224, 224, 3))["params"]
  assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
  block = params["layer2_0"]  # torch's layer2.0: stride 2 on conv2 (v1.5), projection shortcut.
  assert block["conv1"]["kernel"].shape == (1, 1, 256, 128)
  assert block["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert block["conv3"]["kernel"].shape == (1, 1, 128, 512)
  assert block["downsample_0"]["kernel"].shape == (1, 1, 256, 512)
  assert set(block["downsample_1"]) == {"scale", "bias"}
  assert "downsample_0" not in params["layer2_1"]
  assert params["fc"]["kernel"].shape == (2048, 1000)
  vgg = _shapes(VGG(depth=11, batch_norm=True), (1, 224, 224, 3))["params"]
  # torchvision's vgg11_bn: conv at features.0, BN at features.1, ..., last conv at features.25.
  assert {"features_0", "features_1", "features_25", "features_26"} <= set(vgg)
  assert vgg["classifier_0"]["kernel"].shape == (512 * 7 * 7, 4096)
  assert vgg["classifier_6"]["kernel"].shape == (4096, 1000)


def test_output_shapes_at_small_inputs():
  assert _out_shape(VGG(depth=16, num_classes=7), (2, 32, 32, 3)).shape == (2, 7)
  assert _out_shape(VGG(depth=11, pool_size=1, hidden_dim=64), (2, 40, 48, 1)).shape == (2, 1000)
  assert _out_shape(ResNet(depth=50, num_classes=5), (2, 64, 48, 3)).shape == (2, 5)
  assert _out_shape(CifarResNet(depth=56), (3, 32, 32, 3)).shape == (3, 10)
  assert _out_shape(DenseNet(depth=121, num_classes=4), (2, 32, 32, 3)).shape == (2, 4)
  out = _out_shape(ViT(**VIT_PRESETS["vit_cifar"]), (2, 32, 32, 3))
  assert out.shape == (2, 10) and out.dtype == jnp.float32


# --- Adaptive average pooling ---------------------------------------------------------------------


def _torch_adaptive_pool(x_HW, h, w):
  """numpy reference: torch's bins start = floor(i * H / h), end = ceil((i + 1) * H / h)."""
  big_h, big_w = x_HW.shape
  out = np.zeros((h, w))
  for i in range(h):
    for j in range(w):
      r0, r1 = (i * big_h) // h, math.ceil((i + 1) * big_h / h)
      c0, c1 = (j * big_w) // w, math.ceil((j + 1) * big_w / w)
      out[i, j] = x_HW[r0:r1, c0:c1].mean()
  return out


def test_adaptive_avg_pool_matches_torch_bins():
  x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
  # 5 -> 3: bins [0, 2), [1, 4), [3, 5) in each direction (overlapping at 1 and 3), so the
  # means of the row and column indices are 0.5, 2, 3.5, and x[r, c] = 5r + c averages to
  # 5 * mean(r) + mean(c).
  expected = np.array([[3.0, 4.5, 6.0], [10.5, 12.0, 13.5], [18.0, 19.5, 21.0]])
  np.testing.assert_allclose(adaptive_avg_pool(x, 3)[0, :, :, 0], expected, rtol=1e-6)

  rng = np.random.default_rng(0)
  for (big_h, big_w), (h, w) in (
    ((2, 3), (7, 7)),
    ((10, 13), (7, 7)),
    ((1, 1), (7, 7)),
    ((9, 4), (2, 3)),
  ):
    x = rng.standard_normal((2, big_h, big_w, 3)).astype(np.float32)
    out = np.asarray(adaptive_avg_pool(x, (h, w)))
    assert out.shape == (2, h, w, 3)
    np.testing.assert_allclose(
      out[1, :, :, 2], _torch_adaptive_pool(x[1, :, :, 2], h, w), rtol=1e-5, atol=1e-6
    )
  # A divisible size is plain average pooling; an equal size is the identity.
  x = rng.standard_normal((1, 14, 14, 2)).astype(np.float32)
  np.testing.assert_allclose(
    adaptive_avg_pool(x, 7), nn.avg_pool(x, (2, 2), strides=(2, 2)), rtol=1e-5, atol=1e-6
  )
  assert adaptive_avg_pool(x, 14) is x
  with pytest.raises(ValueError, match="at least 1x1"):
    adaptive_avg_pool(x, 0)


# --- BatchNorm and dropout (a narrow VGG-11-BN) ---------------------------------------------------

VGG_TINY = VGG(depth=11, batch_norm=True, width_multiplier=1 / 16, hidden_dim=16, num_classes=3)
IS_CONV_OR_BN = lambda mdl, _: isinstance(mdl, (nn.Conv, nn.BatchNorm))


@functools.partial(jax.jit, static_argnames="train")
def _vgg_apply(variables, x, rng, train):
  return VGG_TINY.apply(
    variables,
    x,
    train=train,
    rngs={"dropout": rng},
    mutable=["batch_stats", "intermediates"],
    capture_intermediates=IS_CONV_OR_BN,
  )


@pytest.fixture(scope="module")
def vgg_tiny():
  x = _images((4, 32, 32, 3))
  return _random_variables(VGG_TINY, x.shape), x


def test_batchnorm_train_mode_uses_and_updates_batch_statistics(vgg_tiny):
  variables, x = vgg_tiny
  assert variables["params"]["features_0"]["kernel"].shape == (3, 3, 3, 4)  # 64 / 16 channels.
  logits, state = _vgg_apply(variables, x, jax.random.key(1), True)
  assert logits.shape == (4, 3)
  inter = state["intermediates"]
  conv_BHWC = np.asarray(inter["features_0"]["__call__"][0], np.float64)
  bn_BHWC = np.asarray(inter["features_1"]["__call__"][0])
  # With scale 1 and bias 0 (as initialised) the output is the batch-normalised conv output,
  # channel by channel.
  np.testing.assert_allclose(bn_BHWC.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(bn_BHWC.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)
  # Running averages (momentum 0.9, from mean 0 and var 1): flax keeps the biased batch variance.
  stats = state["batch_stats"]["features_1"]
  np.testing.assert_allclose(
    stats["mean"], 0.1 * conv_BHWC.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * conv_BHWC.var(axis=(0, 1, 2)), rtol=1e-4)
  assert set(state["batch_stats"]) == {f"features_{i}" for i in (1, 5, 9, 12, 16, 19, 23, 26)}


def test_batchnorm_eval_mode_uses_running_averages_and_mutates_nothing(vgg_tiny):
  variables, x = vgg_tiny
  rng = np.random.default_rng(1)
  stats = jax.tree.map(
    lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32), variables["batch_stats"]
  )
  variables = {**variables, "batch_stats": stats}
  logits, state = _vgg_apply(variables, x, jax.random.key(1), False)
  jax.tree.map(np.testing.assert_array_equal, state["batch_stats"], stats)
  inter = state["intermediates"]
  conv = np.asarray(inter["features_0"]["__call__"][0])
  bn = np.asarray(inter["features_1"]["__call__"][0])
  s = stats["features_1"]
  np.testing.assert_allclose(
    bn, (conv - s["mean"]) / np.sqrt(s["var"] + 1e-5), rtol=1e-4, atol=1e-5
  )
  # Eval mode is deterministic (no dropout): the same logits under another dropout key.
  again, _ = _vgg_apply(variables, x, jax.random.key(2), False)
  np.testing.assert_array_equal(logits, again)


def test_vgg_dropout_only_in_training(vgg_tiny):
  variables, x = vgg_tiny
  a, _ = _vgg_apply(variables, x, jax.random.key(1), True)
  b, _ = _vgg_apply(variables, x, jax.random.key(2), True)
  assert not np.allclose(a, b)


# --- Residual blocks and shortcuts ----------------------------------------------------------------


def test_zero_pad_shortcut_is_parameter_free_and_pads_channels():
  x = _images((2, 6, 6, 4))
  out = np.asarray(zero_pad_shortcut(x, 8, 2))
  assert out.shape == (2, 3, 3, 8)
  np.testing.assert_array_equal(out[..., 2:6], x[:, ::2, ::2, :])
  np.testing.assert_array_equal(out[..., :2], 0.0)
  np.testing.assert_array_equal(out[..., 6:], 0.0)
  block = BasicBlock(8, strides=2, shortcut="zero_pad")
  params = _shapes(block, (2, 6, 6, 4))["params"]
  assert set(params) == {"conv1", "bn1", "conv2", "bn2"}  # No downsample_0/1.
  with pytest.raises(ValueError, match="cannot shrink"):
    zero_pad_shortcut(x, 2, 1)


@pytest.mark.parametrize("block, in_channels", [(BasicBlock, 8), (Bottleneck, 32)])
def test_zero_init_residual_blocks_start_as_their_shortcut(block, in_channels):
  x = np.abs(_images((2, 6, 6, in_channels)))  # Inputs follow a ReLU: non-negative.
  variables = _init(block(8, zero_init_residual=True), x)
  last_bn = "bn3" if block is Bottleneck else "bn2"
  np.testing.assert_array_equal(variables["params"][last_bn]["scale"], 0.0)
  np.testing.assert_array_equal(variables["params"]["bn1"]["scale"], 1.0)
  apply = jax.jit(functools.partial(block(8).apply, train=True, mutable=["batch_stats"]))
  out, _ = apply(variables, x)
  np.testing.assert_allclose(out, x, atol=1e-6)  # The identity, in training mode too.
  # With the usual scale of 1 the residual branch contributes.
  params = {
    **variables["params"],
    last_bn: {**variables["params"][last_bn], "scale": np.ones(8 * block.expansion, np.float32)},
  }
  out, _ = apply({**variables, "params": params}, x)
  assert not np.allclose(out, x, atol=1e-3)


def test_zero_init_residual_reaches_every_block_of_a_resnet():
  model = ResNet(depth=18, width=4, num_classes=3, zero_init_residual=True)
  params = _init(model, _images((1, 32, 32, 3)))["params"]
  blocks = [k for k in params if k.startswith("layer")]
  assert len(blocks) == 8
  for name in blocks:
    np.testing.assert_array_equal(params[name]["bn2"]["scale"], 0.0)
    np.testing.assert_array_equal(params[name]["bn1"]["scale"], 1.0)
  np.testing.assert_array_equal(params["layer2_0"]["downsample_1"]["scale"], 1.0)
  assert ResNet().zero_init_residual is False  # torchvision's default.


def test_dense_layer_appends_growth_rate_channels():
  layer = DenseLayer(growth_rate=3)
  x = _images((2, 5, 5, 6))
  variables = _random_variables(layer, x.shape)
  out = jax.jit(layer.apply)(variables, x)
  assert out.shape == (2, 5, 5, 9)
  np.testing.assert_array_equal(out[..., :6], x)  # The input passes through unchanged.
  assert variables["params"]["conv1"]["kernel"].shape == (1, 1, 6, 4 * 3)


# --- Mixed precision ------------------------------------------------------------------------------


def test_bfloat16_compute_float32_params_stats_and_logits():
  x = _images((2, 16, 16, 3))
  f32 = CifarResNet(depth=8, width=4)
  bf16 = CifarResNet(depth=8, width=4, dtype=jnp.bfloat16)
  variables = _random_variables(f32, x.shape)
  apply = functools.partial(
    bf16.apply,
    train=True,
    mutable=["batch_stats", "intermediates"],
    capture_intermediates=IS_CONV_OR_BN,
  )
  logits, state = jax.jit(apply)(variables, x)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
  inter = state["intermediates"]
  assert inter["conv1"]["__call__"][0].dtype == jnp.bfloat16
  assert inter["layer3_0"]["bn2"]["__call__"][0].dtype == jnp.bfloat16
  dtypes = {x.dtype for x in jax.tree.leaves((variables, state["batch_stats"]))}
  assert dtypes == {jnp.dtype(jnp.float32)}
  # The same parameters in float32 give nearly the same logits.
  ref, _ = jax.jit(functools.partial(f32.apply, train=True, mutable=["batch_stats"]))(variables, x)
  np.testing.assert_allclose(logits, ref, rtol=0.05, atol=0.05)
  # Params created by the bf16 model are float32 too.
  assert {x.dtype for x in jax.tree.leaves(_shapes(bf16, (1, 16, 16, 3)))} == {
    jnp.dtype(jnp.float32)
  }


# --- ViT ------------------------------------------------------------------------------------------

VIT_KW = dict(
  image_size=32, patch_size=8, embed_dim=32, num_layers=2, num_heads=2, mlp_dim=64, num_classes=5
)
VIT_TINY = ViT(**VIT_KW)


def test_vit_patch_embedding_and_class_token_head():
  x = _images((2, 32, 32, 3))
  variables = _random_variables(VIT_TINY, x.shape)
  params = variables["params"]
  assert params["pos_embed"].shape == (1, 16 + 1, 32)
  capture = lambda mdl, _: mdl.name in ("patch_embed", "norm")

  def run(model):
    return jax.jit(
      functools.partial(model.apply, mutable=["intermediates"], capture_intermediates=capture)
    )(variables, x)

  logits, state = run(VIT_TINY)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  inter = state["intermediates"]
  # Patch (i, j) is image[8i:8i+8, 8j:8j+8, :] flattened (row-major) times the kernel; tokens go
  # row by row over the 4x4 grid.
  patches = x.reshape(2, 4, 8, 4, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 16, 8 * 8 * 3)
  proj = params["patch_embed"]["proj"]
  expected = patches @ proj["kernel"].reshape(8 * 8 * 3, 32) + proj["bias"]
  np.testing.assert_allclose(inter["patch_embed"]["__call__"][0], expected, rtol=1e-4, atol=1e-4)
  # The head reads the class token (position 0) after the final LayerNorm.
  tokens_BTD = np.asarray(inter["norm"]["__call__"][0])
  assert tokens_BTD.shape == (2, 16 + 1, 32)
  np.testing.assert_allclose(
    logits,
    tokens_BTD[:, 0] @ params["head"]["kernel"] + params["head"]["bias"],
    rtol=1e-4,
    atol=1e-5,
  )
  # bfloat16 compute: bfloat16 activations, float32 logits close to the float32 model's.
  bf16_logits, bf16_state = run(ViT(**{**VIT_KW, "dtype": jnp.bfloat16}))
  assert bf16_state["intermediates"]["patch_embed"]["__call__"][0].dtype == jnp.bfloat16
  assert bf16_logits.dtype == jnp.float32
  np.testing.assert_allclose(bf16_logits, logits, rtol=0.05, atol=0.05)


# --- Bad inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "model, shape, message",
  [
    (VGG(depth=12), (1, 32, 32, 3), "unknown depth 12; choose one of 11, 13, 16, 19"),
    (VGG(depth=11), (1, 28, 28, 1), "at least 32x32"),
    (ResNet(depth=20), (1, 32, 32, 3), "unknown depth 20.*CifarResNet"),
    (ResNet(stem="tiny"), (1, 32, 32, 3), "unknown stem 'tiny'"),
    (ResNet(depth=18), (32, 32, 3), r"expects images \[B, H, W, C\]"),
    (CifarResNet(depth=21), (1, 32, 32, 3), "6n \\+ 2"),
    (CifarResNet(shortcut="B"), (1, 32, 32, 3), "unknown shortcut 'B'"),
    (DenseNet(depth=100), (1, 32, 32, 3), "unknown depth 100"),
    (ViT(image_size=30, patch_size=4), (1, 30, 30, 3), "not divisible by patch_size=4"),
    (ViT(image_size=32, patch_size=4), (1, 28, 28, 3), "image_size=32"),
    (ViT(stem="conv"), (1, 224, 224, 3), "unknown stem 'conv'"),
  ],
)
def test_bad_inputs(model, shape, message):
  with pytest.raises(ValueError, match=message):
    _shapes(model, shape)
