"""jaxdl.nn.conv_layers: every kernel set computes what Flax's plain layers compute, with the same
parameters; the four fields it replaced are still read (commands, experiments, old workdirs)."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import config as config_lib
from jaxdl.nn import conv_layers
from jaxdl.nn.cnn import MnistCNN
from jaxdl.nn.vgg import VGG

FAST = ("xla", "im2col", "fused", "winograd")


def _loss_and_grads(model, params, x, labels):
  def loss(params):
    logits = model.apply(params, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)), logits

  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, logits, grads


@pytest.fixture(scope="module")
def seed_cnn_plain():
  x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
  labels = jax.random.randint(jax.random.key(1), (8,), 0, 10)
  params = jax.jit(MnistCNN(kernels="plain").init)(jax.random.key(2), x)
  return x, labels, params, _loss_and_grads(MnistCNN(kernels="plain"), params, x, labels)


@pytest.mark.parametrize("kernels", FAST)
def test_seed_cnn_kernels_compute_what_the_plain_layers_do(kernels, seed_cnn_plain):
  """The same parameters (names, shapes, initial values); xla's pool is plain's to the bit, and
  the im2col, fused and Winograd paths equal it up to float32 rounding."""
  x, labels, params, (loss_p, logits_p, grads_p) = seed_cnn_plain
  model = MnistCNN(kernels=kernels)
  same = jax.tree.map(np.array_equal, params, jax.jit(model.init)(jax.random.key(2), x))
  assert all(jax.tree.leaves(same))
  loss, logits, grads = _loss_and_grads(model, params, x, labels)
  if kernels == "xla":
    np.testing.assert_array_equal(logits, logits_p)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_p)):
      np.testing.assert_array_equal(g, w)
    return
  np.testing.assert_allclose(logits, logits_p, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss, loss_p, rtol=1e-5)
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(grads_p)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_vgg_has_torchvisions_layer_names_under_every_kernel_set(batch_norm):
  x = jnp.zeros((1, 32, 32, 3))
  trees = {
    k: jax.eval_shape(VGG(depth=11, batch_norm=batch_norm, kernels=k).init, jax.random.key(0), x)
    for k in ("plain",) + FAST
  }
  for kernels, tree in trees.items():
    assert jax.tree.structure(tree) == jax.tree.structure(trees["plain"]), kernels
  convs = [name for name in trees["plain"]["params"] if name.startswith("features_")]
  # torchvision's vgg11 (8 convolutions): features.0, 3, 6, 8, 11, 13, 16, 18; vgg11_bn has
  # conv, BatchNorm, ReLU per layer: 0, 4, 8, 11, 15, 18, 22, 25 (and BatchNorm at + 1).
  expected = (
    [0, 3, 6, 8, 11, 13, 16, 18]
    if not batch_norm
    else sorted([0, 4, 8, 11, 15, 18, 22, 25] + [1, 5, 9, 12, 16, 19, 23, 26])
  )
  assert sorted(int(n.split("_")[1]) for n in convs) == expected


def test_vgg_fused_forward_equals_plain():
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  small = dict(depth=11, num_classes=10, width_multiplier=0.125, hidden_dim=16, pool_size=1)
  params = jax.jit(VGG(**small, kernels="plain").init)(jax.random.key(1), x)
  want = jax.jit(VGG(**small, kernels="plain").apply)(params, x)
  got = jax.jit(VGG(**small, kernels="winograd").apply)(params, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_auto_on_one_cpu_device_and_bad_names():
  assert conv_layers.resolve("auto") == "winograd"  # tests run on one CPU device (conftest)
  assert conv_layers.resolve("plain") == "plain"
  with pytest.raises(ValueError, match="Unknown kernels 'im2col_fast'; choose one of auto"):
    conv_layers.resolve("im2col_fast")


@pytest.mark.parametrize(
  "legacy, kernels",
  [
    ({}, "auto"),
    ({"conv_impl": "xla"}, "xla"),
    ({"conv_impl": "xla", "pool_impl": "reduce_window"}, "plain"),
    ({"conv_impl": "im2col"}, "winograd"),  # The fused op with its auto algorithm (default).
    ({"conv_impl": "im2col", "fuse_conv_pool": False}, "im2col"),
    ({"conv_impl": "im2col", "pool_impl": "reduce_window"}, "im2col"),
    ({"conv_pool_impl": "im2col"}, "fused"),
    ({"conv_impl": "im2col", "conv_pool_impl": "winograd"}, "winograd"),
  ],
)
def test_the_four_old_fields_map_to_the_kernel_set_they_ran(legacy, kernels):
  assert config_lib.kernels_from_legacy(legacy) == kernels


def test_old_key_names_on_the_command_line_are_read_with_a_note(caplog):
  config = config_lib.load_experiment("experiments/mnist_cnn.py")
  with caplog.at_level(logging.WARNING, logger="jaxdl"):
    config_lib.apply_overrides(config, ["model.conv_impl=im2col", "model.fuse_conv_pool=false"])
  assert config.runtime.kernels == "im2col"
  assert "conv_impl" not in config.model and "fuse_conv_pool" not in config.model
  (record,) = caplog.records
  assert "read as runtime.kernels=im2col" in record.getMessage()


def test_a_workdir_written_with_the_old_fields_resumes(tmp_path):
  """A run whose config.json holds model.conv_pool_impl (as jaxdl wrote it before `kernels`)
  resumes with the command that started it, and with the new name."""
  from jaxdl import metrics as metrics_lib
  from jaxdl import trainer

  overrides = [
    "train.batch_size=32",
    "train.num_steps=4",
    "train.log_every_steps=2",
    "train.eval_every_steps=4",
    "data.eval_batch_size=500",
  ]
  config = config_lib.load_experiment("experiments/mnist_cnn.py")
  config_lib.apply_overrides(config, overrides + ["model.conv_pool_impl=im2col"])
  trainer.train(config, tmp_path, show_progress=False)
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["runtime"]["kernels"]
  saved["model"]["conv_pool_impl"] = "im2col"  # What the older jaxdl wrote.
  (tmp_path / "config.json").write_text(json.dumps(saved))
  for more, num_steps in ((["model.conv_pool_impl=im2col"], 6), (["runtime.kernels=fused"], 8)):
    config = config_lib.load_experiment("experiments/mnist_cnn.py")
    config_lib.apply_overrides(config, overrides + more + [f"train.num_steps={num_steps}"])
    assert trainer.train(config, tmp_path, show_progress=False).step == num_steps
  steps = [r["step"] for r in metrics_lib.read_metrics(tmp_path) if "train/loss" in r]
  assert steps == [2, 4, 6, 8]
