"""The seed CNN: architecture, Keras initialisation, and the forward pass against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import models
from jaxdl.errors import ConfigError
from jaxdl.nn import MnistCNN


@pytest.fixture(scope="module")
def params():
  # Jitted: run op by op, the fused convolution-and-pool layers compile each small op apart (~10 s).
  return jax.jit(MnistCNN().init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]


def test_parameter_count_matches_keras(params):
  assert sum(p.size for p in jax.tree.leaves(params)) == 93_322


def test_layer_shapes(params):
  shapes = jax.tree.map(jnp.shape, params)
  assert shapes == {
    "conv1": {"kernel": (3, 3, 1, 32), "bias": (32,)},
    "conv2": {"kernel": (3, 3, 32, 64), "bias": (64,)},
    "conv3": {"kernel": (3, 3, 64, 64), "bias": (64,)},
    "dense1": {"kernel": (576, 64), "bias": (64,)},
    "logits": {"kernel": (64, 10), "bias": (10,)},
  }


def test_keras_initialisation(params):
  """Glorot-uniform kernels: U(-l, l), l = sqrt(6 / (fan_in + fan_out)); zero biases."""
  for name, layer in params.items():
    kernel = np.asarray(layer["kernel"])
    receptive = int(np.prod(kernel.shape[:-2]))
    fan_in, fan_out = receptive * kernel.shape[-2], receptive * kernel.shape[-1]
    limit = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(kernel).max() <= limit, name
    # A uniform on [-l, l] has variance l^2 / 3; with >= 288 samples this is within 25%.
    assert kernel.var() == pytest.approx(limit**2 / 3, rel=0.25), name
    np.testing.assert_array_equal(layer["bias"], 0.0)


def _conv_valid(x_BHWC, kernel_HWIO, bias_O):
  """Plain numpy 'valid' convolution (cross-correlation, as in Keras and Flax)."""
  kh, kw, _, _ = kernel_HWIO.shape
  b, h, w, _ = x_BHWC.shape
  out = np.zeros((b, h - kh + 1, w - kw + 1, kernel_HWIO.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      out += np.einsum(
        "bhwc,co->bhwo", x_BHWC[:, i : i + h - kh + 1, j : j + w - kw + 1], kernel_HWIO[i, j]
      )
  return out + bias_O


def _max_pool_2x2(x_BHWC):
  b, h, w, c = x_BHWC.shape
  x = x_BHWC[:, : h // 2 * 2, : w // 2 * 2]  # 'valid' pooling drops the odd row and column.
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def test_forward_matches_numpy_reference():
  model = MnistCNN()
  x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
  params = jax.jit(model.init)(jax.random.key(2), x)["params"]
  # Non-zero biases, so that the test also checks where they are added.
  params = jax.tree.map(lambda p: p + 0.01 if p.ndim == 1 else p, params)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  relu = lambda a: np.maximum(a, 0)
  h = np.asarray(x, np.float64)
  h = _max_pool_2x2(relu(_conv_valid(h, p["conv1"]["kernel"], p["conv1"]["bias"])))
  h = _max_pool_2x2(relu(_conv_valid(h, p["conv2"]["kernel"], p["conv2"]["bias"])))
  h = relu(_conv_valid(h, p["conv3"]["kernel"], p["conv3"]["bias"]))
  h = relu(h.reshape(3, -1) @ p["dense1"]["kernel"] + p["dense1"]["bias"])
  expected = h @ p["logits"]["kernel"] + p["logits"]["bias"]
  logits = jax.jit(model.apply)({"params": params}, x)
  assert logits.shape == (3, 10)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_registry_builds_by_name_and_rejects_typos():
  model = models.build_model({"name": "mnist_cnn", "num_classes": 5})
  x = jnp.zeros((2, 28, 28, 1))
  out = jax.jit(model.apply)(jax.jit(model.init)(jax.random.key(0), x), x)
  assert out.shape == (2, 5)
  with pytest.raises(ConfigError, match="Did you mean mnist_cnn"):
    models.build_model({"name": "mnist_cn"})
  with pytest.raises(ConfigError, match="num_clases.*did you mean num_classes"):
    models.build_model({"name": "mnist_cnn", "num_clases": 5})


def test_model_code_is_pure():
  """jaxdl.nn imports jax and flax only: no optimizers, checkpoints, data or files."""
  import pathlib
  import re

  nn_dir = pathlib.Path(__file__).resolve().parents[1] / "jaxdl" / "nn"
  for path in nn_dir.glob("*.py"):
    for line in path.read_text().splitlines():
      m = re.match(r"\s*(?:import|from)\s+([\w.]+)", line)
      if m:
        root = m.group(1).split(".")[0]
        assert root in {
          "jax",
          "flax",
          "jaxdl",
          "dataclasses",
          "difflib",
          "typing",
          "functools",
          "math",
          "itertools",
          "contextlib",
          "contextvars",
        }, f"{path.name} imports {m.group(1)}"
