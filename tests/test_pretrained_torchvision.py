"""torchvision's ResNet, VGG and DenseNet state dicts in and out (jaxdl.pretrained.torchvision_cnn).

The reference models are tests/reference/torchvision_models.py, torchvision's code copied (its
wheels need a CUDA torch); tools/torchvision_reference.py checked them against torchvision 0.28.0
(same keys and shapes, logits equal to the bit) and recorded the keys in
tests/data/torchvision_keys.json, which the first test holds them to.
"""

import json
from pathlib import Path
import re

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from jaxdl import pretrained  # noqa: E402
from jaxdl.errors import CheckpointError  # noqa: E402
from jaxdl.nn.resnet import ResNet  # noqa: E402
from jaxdl.pretrained import files  # noqa: E402
from tests.reference import torchvision_models as tvm  # noqa: E402
from tests.reference.randomize import randomized as _randomized  # noqa: E402

KEYS = json.loads((Path(__file__).parent / "data" / "torchvision_keys.json").read_text())


@pytest.mark.parametrize("name", sorted(KEYS))
def test_reference_models_have_torchvisions_state_dict(name):
  with torch.device("meta"):
    model = getattr(tvm, name)()
  assert [(k, list(t.shape)) for k, t in model.state_dict().items()] == list(KEYS[name].items())


def _small_classifier(model, hidden=32, classes=10):
  """torchvision's VGG with 4096-wide hidden layers replaced by narrow ones (jaxdl reads the
  widths off the weights), so that the test holds 40 MB, not 500."""
  nn = torch.nn
  model.classifier = nn.Sequential(
    nn.Linear(512 * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, hidden),
    nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, classes),
  )  # fmt: skip
  return model


# name -> (reference model, image side). 32x32 is the smallest size these models take; VGG gets
# 64x64 so that its last map is 2x2, not 1x1: pooled to 7x7, a 1x1 map is the same number in every
# cell, and a classifier kernel with its 7x7 positions mixed up (H for W) would go unnoticed.
CASES = {
  "resnet18": (lambda: tvm.resnet18(num_classes=10), 32),
  "resnet50": (lambda: tvm.resnet50(num_classes=10), 32),
  "vgg11": (lambda: _small_classifier(tvm.vgg11()), 64),
  "vgg11_bn": (lambda: _small_classifier(tvm.vgg11_bn()), 64),
  "densenet121": (lambda: tvm.densenet121(num_classes=10), 32),
}


def _logits(model, variables, images_BCHW):
  images_BHWC = np.transpose(images_BCHW, (0, 2, 3, 1))
  # XLA:CPU's optimisations take ~20 s to compile DenseNet-121; unoptimised code computes the
  # same function, which is what is compared here, and compiles in a few seconds.
  lowered = jax.jit(model.apply).lower(variables, images_BHWC)
  compiled = lowered.compile({"xla_backend_optimization_level": 0})
  return np.asarray(compiled(variables, images_BHWC))


# One model per kind in the default suite; the rest (each a distinct family) in the slow set.
SLOW_CASES = ("densenet121", "resnet50", "vgg11")


@pytest.mark.parametrize(
  "name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW_CASES else []) for n in CASES]
)
def test_import_and_export_match_torchvision(name, tmp_path):
  build, side = CASES[name]
  torch.manual_seed(0)
  reference = _randomized(build())
  state = reference.state_dict()
  images = np.random.default_rng(0).standard_normal((2, 3, side, side)).astype(np.float32)
  with torch.no_grad():
    want = reference(torch.from_numpy(images)).numpy()
  torch.save(state, tmp_path / "model.pth")
  safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"))

  model, variables = pretrained.load(tmp_path / "model.pth")
  _, from_safetensors = pretrained.load(tmp_path / "model.safetensors")
  jax.tree.map(np.testing.assert_array_equal, from_safetensors, variables)
  got = _logits(model, variables, images)
  assert got.shape == want.shape
  # float32 rounding: measured up to 3e-6 of the largest logit (vgg11_bn at 64x64).
  assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()

  written = pretrained.save(model, variables, tmp_path / "out", format="torchvision")
  assert sorted(p.name for p in written) == ["model.pth", "model.safetensors"]
  exported = torch.load(tmp_path / "out" / "model.pth", weights_only=True)
  assert list(exported) == list(state)  # torchvision's order too
  for key, tensor in state.items():  # num_batches_tracked: 0 in both (written as 0)
    assert exported[key].dtype == tensor.dtype, key
    torch.testing.assert_close(exported[key], tensor, rtol=0, atol=0, msg=key)
  from_file = files.read_tensors(tmp_path / "out" / "model.safetensors")
  assert {k: a.shape for k, a in from_file.items()} == {k: tuple(t.shape) for k, t in state.items()}

  fresh = _randomized(build(), seed=1)
  fresh.load_state_dict(exported, strict=True)
  with torch.no_grad():
    np.testing.assert_array_equal(fresh(torch.from_numpy(images)).numpy(), want)


def _meta_tensors(model) -> dict[str, np.ndarray]:
  """Zero arrays of the state dict's shapes and dtypes that hold no memory (stride 0)."""
  dtypes = {torch.float32: np.float32, torch.int64: np.int64}
  return {
    name: np.broadcast_to(np.zeros((), dtypes[t.dtype]), tuple(t.shape))
    for name, t in model.state_dict().items()
  }


def _load_tensors(monkeypatch, tensors, name="model.pth"):
  monkeypatch.setattr(files, "read_tensors", lambda path: tensors)
  return pretrained.load(name)


# Full-size models, by shape only. The counts are torchvision's published ones (num_params).
FULL_SIZE = {
  "resnet18": ({"name": "resnet", "depth": 18}, 11_689_512),
  "resnet50": ({"name": "resnet", "depth": 50}, 25_557_032),
  "vgg16": ({"name": "vgg", "depth": 16, "batch_norm": False}, 138_357_544),
  "densenet121": ({"name": "densenet", "depth": 121, "bn_size": 4}, 7_978_856),
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_models_load_with_torchvisions_parameter_count(name, monkeypatch):
  section, count = FULL_SIZE[name]
  with torch.device("meta"):
    reference = getattr(tvm, name)()
  model, variables = _load_tensors(monkeypatch, _meta_tensors(reference))
  assert {k: getattr(model, k) for k in section if k != "name"} == {
    k: v for k, v in section.items() if k != "name"
  }
  assert model.num_classes == 1000
  assert sum(np.size(a) for a in jax.tree.leaves(variables["params"])) == count


ARCHITECTURES = {
  **{f"resnet{d}": {"name": "resnet", "depth": d} for d in (18, 34, 50, 101, 152)},
  **{
    f"vgg{d}{suffix}": {"name": "vgg", "depth": d, "batch_norm": bool(suffix)}
    for d in (11, 13, 16, 19)
    for suffix in ("", "_bn")
  },
  **{f"densenet{d}": {"name": "densenet", "depth": d} for d in (121, 161, 169, 201)},
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_is_read_off_the_state_dict(name, monkeypatch):
  with torch.device("meta"):
    reference = getattr(tvm, name)()
  monkeypatch.setattr(files, "read_tensors", lambda path: _meta_tensors(reference))
  section = pretrained.model_config_of("model.pth")
  assert {k: section[k] for k in ARCHITECTURES[name]} == ARCHITECTURES[name]
  assert section["num_classes"] == 1000


def test_old_densenet_names_are_renamed(monkeypatch):
  """torchvision's own DenseNet downloads say "denselayer1.norm.1.weight" for norm1.weight (and,
  older than BatchNorm's counter, have no num_batches_tracked)."""
  with torch.device("meta"):
    reference = tvm.densenet121()
  tensors = _meta_tensors(reference)
  old = {
    re.sub(r"(denselayer\d+\.(norm|conv))([12])\.", r"\1.\3.", k): v
    for k, v in tensors.items()
    if not k.endswith("num_batches_tracked")
  }
  assert old.keys() != tensors.keys()
  model, variables = _load_tensors(monkeypatch, old)
  assert sum(np.size(a) for a in jax.tree.leaves(variables["params"])) == 7_978_856


def test_other_state_dicts_are_refused_by_name(monkeypatch, tmp_path):
  torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.pth")
  with pytest.raises(CheckpointError, match="no checkpoint jaxdl can read.*torchvision_resnet"):
    pretrained.load(tmp_path / "linear.pth")
  with torch.device("meta"):
    small = tvm.ResNet(tvm.Bottleneck, [1, 1, 1, 1])
  with pytest.raises(CheckpointError, match=r"Bottleneck blocks \[1, 1, 1, 1\].*none of"):
    _load_tensors(monkeypatch, _meta_tensors(small))
  with torch.device("meta"):
    wide = _meta_tensors(tvm.resnet50())  # wide_resnet50_2's first block: 128 channels, not 64
  wide["layer1.0.conv1.weight"] = np.broadcast_to(np.float32(0), (128, 64, 1, 1))
  with pytest.raises(CheckpointError, match="first block 128 channels.*not wide ResNets"):
    _load_tensors(monkeypatch, wide)
  with torch.device("meta"):
    vgg = tvm.VGG(tvm.make_layers([64, "M", 128, "M", 256, "M", 512, "M", 512, "M"]))
  with pytest.raises(CheckpointError, match="none of torchvision's VGG-11/13/16/19"):
    _load_tensors(monkeypatch, _meta_tensors(vgg))
  with torch.device("meta"):
    densenet = tvm.DenseNet(block_config=(2, 2, 2, 2))
  with pytest.raises(CheckpointError, match=r"\[2, 2, 2, 2\] layers per dense block"):
    _load_tensors(monkeypatch, _meta_tensors(densenet))


def test_a_missing_tensor_is_named(monkeypatch):
  with torch.device("meta"):
    reference = tvm.resnet18()
  tensors = _meta_tensors(reference)
  del tensors["layer2.0.downsample.1.running_var"]
  with pytest.raises(CheckpointError, match=r"'layer2.0.downsample.1.running_var' is missing"):
    _load_tensors(monkeypatch, tensors)


def test_resnets_torchvision_cannot_hold_are_not_exported(tmp_path):
  with pytest.raises(CheckpointError, match="stem='cifar'.*no torchvision form"):
    pretrained.save(ResNet(depth=18, stem="cifar"), {}, tmp_path, format="torchvision")
