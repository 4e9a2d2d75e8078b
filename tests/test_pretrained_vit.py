"""Hugging Face ViT and timm ViT checkpoints <-> jaxdl's ViT (jaxdl.pretrained.hf_vit, timm_vit).

References with random weights: transformers' ViTForImageClassification and ViTModel, and timm's
VisionTransformer as tests/reference/timm_vit.py rebuilds it (timm itself needs torchvision).
Every parameter is drawn at random, biases and LayerNorm scales included, so that a tensor mapped
to the wrong place shows in the outputs.
"""

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

import flax.linen as nn  # noqa: E402

from jaxdl import models  # noqa: E402
from jaxdl.errors import CheckpointError  # noqa: E402
from jaxdl.nn import vit  # noqa: E402
from jaxdl.nn.vit import VIT_PRESETS, ViT  # noqa: E402
import jaxdl.pretrained as pretrained  # noqa: E402
from jaxdl.pretrained import files, rules, timm_vit  # noqa: E402
from jaxdl.pretrained.hf_vit import HF_VIT  # noqa: E402
from jaxdl.pretrained.timm_vit import TIMM_VIT  # noqa: E402
from jaxdl.train import param_paths  # noqa: E402
from tests.reference import timm_vit as timm_reference  # noqa: E402

SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2)
SMALL.update(num_attention_heads=4, intermediate_size=37)
# The same sizes as timm's model_args (mlp_ratio 37 / 32 gives int(32 * ratio) = 37).
TIMM_SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=37 / 32)


def _randomize(model: "torch.nn.Module", seed: int = 0) -> "torch.nn.Module":
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  return model.eval()


def _images(channels: int = 3) -> np.ndarray:
  return np.random.default_rng(1).standard_normal((3, 32, 32, channels)).astype(np.float32)


def _nchw(x_BHWC: np.ndarray) -> "torch.Tensor":
  return torch.from_numpy(np.ascontiguousarray(x_BHWC.transpose(0, 3, 1, 2)))


def _assert_close(got, want, rtol=1e-5):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  error = np.abs(got - want).max() / np.abs(want).max()
  assert error <= rtol, f"largest difference {error:.2e} of the largest value"


def _hf_classifier(tmp_path, **config):
  ref = transformers.ViTForImageClassification(
    transformers.ViTConfig(**{**SMALL, "num_labels": 5, **config})
  )
  _randomize(ref).save_pretrained(tmp_path / "hf")
  return ref, tmp_path / "hf"


def _hf_logits(ref, x_BHWC):
  with torch.no_grad():
    return ref(pixel_values=_nchw(x_BHWC)).logits.numpy()


def _timm_folder(tmp_path, num_classes=5, name="timm", **model_args):
  """A folder as timm's save_for_hf writes it (config.json as timm 1.0.31 wrote it for this
  model), and the reference model."""
  args = {**TIMM_SMALL, "num_classes": num_classes, **model_args}
  ref = _randomize(timm_reference.create("vit_tiny_patch16_224", **args))
  folder = tmp_path / name
  folder.mkdir()
  config = {
    "architecture": "vit_tiny_patch16_224",
    "num_classes": num_classes,
    "num_features": args["embed_dim"],
    "global_pool": "token",
    "model_args": {**args, "img_size": [args["img_size"]] * 2, "in_chans": 3},
    "pretrained_cfg": {"input_size": [3, 32, 32], "fixed_input_size": True, "classifier": "head"},
  }
  (folder / "config.json").write_text(json.dumps(config))
  safetensors_torch.save_file(ref.state_dict(), str(folder / "model.safetensors"))
  return ref, folder


def _timm_out(ref, x_BHWC):
  with torch.no_grad():
    return ref(_nchw(x_BHWC)).numpy()


# Hugging Face ------------------------------------------------------------------------------------


def test_hf_classifier_logits_match_transformers(tmp_path):
  ref, folder = _hf_classifier(tmp_path)
  model, variables = pretrained.load(folder)
  assert isinstance(model, ViT) and model.num_classes == 5 and model.layer_norm_epsilon == 1e-12
  x = _images()
  _assert_close(model.apply(variables, x), _hf_logits(ref, x))


def test_hf_vit_model_features_are_the_normed_class_token(tmp_path):
  # eps 0.1 so that a LayerNorm eps left at its default shows in the features.
  config = transformers.ViTConfig(**SMALL, layer_norm_eps=0.1)
  ref = _randomize(transformers.ViTModel(config))
  ref.save_pretrained(tmp_path / "hf")
  assert "pooler.dense.weight" in files.read_tensors(tmp_path / "hf")  # Ignored by jaxdl.
  model, variables = pretrained.load(tmp_path / "hf")
  assert model.num_classes == 0
  x = _images()
  with torch.no_grad():
    want = ref(pixel_values=_nchw(x)).last_hidden_state[:, 0].numpy()
  _assert_close(model.apply(variables, x), want)


def test_hf_export_reloads_in_transformers_with_the_same_tensors(tmp_path):
  ref, folder = _hf_classifier(tmp_path)
  model, variables = pretrained.load(folder)
  pretrained.save(model, variables, tmp_path / "out", format="hf")
  original, exported = files.read_tensors(folder), files.read_tensors(tmp_path / "out")
  assert sorted(exported) == sorted(original)
  for name in original:
    np.testing.assert_array_equal(exported[name], original[name], err_msg=name)
  back = transformers.ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
  x = _images()
  np.testing.assert_array_equal(_hf_logits(back, x), _hf_logits(ref, x))


def test_hf_headless_export_reloads_as_vit_model(tmp_path):
  ref = _randomize(transformers.ViTModel(transformers.ViTConfig(**SMALL)))
  ref.save_pretrained(tmp_path / "hf")
  model, variables = pretrained.load(tmp_path / "hf")
  pretrained.save(model, variables, tmp_path / "out", format="hf")
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert config["architectures"] == ["ViTModel"]
  back = transformers.ViTModel.from_pretrained(tmp_path / "out").eval()
  x = _images()
  with torch.no_grad():
    got = back(pixel_values=_nchw(x)).last_hidden_state.numpy()
    want = ref(pixel_values=_nchw(x)).last_hidden_state.numpy()
  np.testing.assert_array_equal(got, want)


def test_hf_grayscale_checkpoint_keeps_its_channels(tmp_path):
  ref, folder = _hf_classifier(tmp_path, num_channels=1)
  model, variables = pretrained.load(folder)
  assert model.num_channels == 1
  x = _images(channels=1)
  _assert_close(model.apply(variables, x), _hf_logits(ref, x))
  pretrained.save(model, variables, tmp_path / "out", format="hf")
  assert json.loads((tmp_path / "out" / "config.json").read_text())["num_channels"] == 1


def test_export_refuses_channels_the_config_would_not_say(tmp_path):
  model = ViT(**{**_jaxdl_small(), "num_classes": 5})
  variables = model.init(jax.random.key(0), _images(channels=1))
  with pytest.raises(CheckpointError, match="1-channel images.*with num_channels=1"):
    pretrained.save(model, variables, tmp_path / "out", format="hf")
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("format", ["hf", "timm"])
def test_export_refuses_another_stem(tmp_path, monkeypatch, format):
  # A stem other than the patch projection, even one whose parameters have the same names.
  monkeypatch.setitem(vit.STEMS, "other", vit.PatchEmbed)
  model = ViT(**_jaxdl_small(), stem="other")
  variables = model.init(jax.random.key(0), _images())
  with pytest.raises(CheckpointError, match="stem='other'"):
    pretrained.save(model, variables, tmp_path / "out", format=format)


def test_hf_scanned_model_loads_and_saves(tmp_path):
  ref, folder = _hf_classifier(tmp_path)
  model, variables = pretrained.load(folder, scan_layers=True)
  assert model.scan_layers and "blocks_0" not in variables["params"]
  x = _images()
  _assert_close(model.apply(variables, x), _hf_logits(ref, x))
  pretrained.save(model, variables, tmp_path / "out", format="hf")
  exported, original = files.read_tensors(tmp_path / "out"), files.read_tensors(folder)
  assert all(np.array_equal(exported[n], original[n]) for n in original)


@pytest.mark.parametrize(
  "change, message",
  [
    ({"hidden_act": "gelu_new"}, "hidden_act='gelu_new'"),
    ({"qkv_bias": False}, "qkv_bias=False"),
    ({"image_size": [32, 48]}, "image_size=\\[32, 48\\]"),
  ],
)
def test_hf_refuses_other_architectures(tmp_path, change, message):
  _, folder = _hf_classifier(tmp_path)
  config = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**config, **change}))
  with pytest.raises(CheckpointError, match=message):
    pretrained.load(folder)


def test_hf_missing_tensor_is_named(tmp_path):
  _, folder = _hf_classifier(tmp_path)
  tensors = files.read_tensors(folder)
  del tensors["vit.encoder.layer.1.output.dense.bias"]
  files.write_safetensors(tensors, folder / "model.safetensors")
  with pytest.raises(CheckpointError, match="'vit.encoder.layer.1.output.dense.bias' is missing"):
    pretrained.load(folder)


# timm --------------------------------------------------------------------------------------------


def test_reference_has_timms_published_names_and_shapes():
  published = json.loads(timm_reference.PUBLISHED_KEYS.read_text())["keys"]
  state = timm_reference.create("vit_tiny_patch16_224").state_dict()
  assert [[k, list(v.shape)] for k, v in state.items()] == published


@pytest.mark.parametrize("num_classes", [5, 0])
def test_timm_outputs_match_the_reference(tmp_path, num_classes):
  ref, folder = _timm_folder(tmp_path, num_classes)
  model, variables = pretrained.load(folder)
  assert model.num_classes == num_classes and model.num_heads == 4
  x = _images()
  _assert_close(model.apply(variables, x), _timm_out(ref, x))


def test_timm_heads_come_from_the_architecture_name(tmp_path):
  ref = _randomize(timm_reference.create("vit_tiny_patch16_224", img_size=32, depth=1))
  folder = tmp_path / "timm"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224"}))
  safetensors_torch.save_file(ref.state_dict(), str(folder / "model.safetensors"))
  model, variables = pretrained.load(folder)
  assert (model.num_heads, model.num_classes, model.image_size) == (3, 1000, 32)
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
  _assert_close(model.apply(variables, x), _timm_out(ref, x))


@pytest.mark.parametrize("num_classes", [5, 0])
def test_timm_export_reloads_in_timm_with_the_same_tensors(tmp_path, num_classes):
  ref, folder = _timm_folder(tmp_path, num_classes)
  model, variables = pretrained.load(folder)
  pretrained.save(model, variables, tmp_path / "out", format="timm")
  original, exported = files.read_tensors(folder), files.read_tensors(tmp_path / "out")
  assert sorted(exported) == sorted(original)
  for name in original:
    np.testing.assert_array_equal(exported[name], original[name], err_msg=name)
  back = timm_reference.from_folder(tmp_path / "out").eval()
  x = _images()
  np.testing.assert_array_equal(_timm_out(back, x), _timm_out(ref, x))


def test_timm_export_names_a_registered_architecture():
  tiny = ViT(**VIT_PRESETS["vit_tiny_patch16_224"])
  assert timm_vit.architecture(tiny) == "vit_tiny_patch16_224"
  small = ViT(**_jaxdl_small())
  assert timm_vit.architecture(small) == "vit_base_patch16_224"  # Its model_args say all sizes.


def test_timm_scanned_model_loads(tmp_path):
  ref, folder = _timm_folder(tmp_path)
  model, variables = pretrained.load(folder, scan_layers=True)
  x = _images()
  _assert_close(model.apply(variables, x), _timm_out(ref, x))


def test_timm_bare_state_dict_asks_for_a_config(tmp_path):
  _, folder = _timm_folder(tmp_path)
  with pytest.raises(CheckpointError, match="number of attention heads.*config.json"):
    pretrained.load(folder / "model.safetensors")


@pytest.mark.parametrize(
  "extra, missing, message",
  [
    ({"fc_norm.weight": (32,), "fc_norm.bias": (32,)}, (), "fc_norm.*'fc_norm.bias'"),
    ({"reg_token": (1, 4, 32)}, (), "register tokens.*'reg_token'"),
    ({"blocks.0.ls1.gamma": (32,)}, (), "layer scale.*'blocks.0.ls1.gamma'"),
    ({}, ("blocks.0.attn.qkv.bias",), "qkv_bias=False.*'blocks.0.attn.qkv.bias' is missing"),
    ({}, ("cls_token",), "no class token.*'cls_token' is missing"),
  ],
)
def test_timm_refuses_other_vits_naming_the_tensors(tmp_path, extra, missing, message):
  _, folder = _timm_folder(tmp_path)
  tensors = files.read_tensors(folder)
  tensors.update({name: np.zeros(shape, np.float32) for name, shape in extra.items()})
  for name in missing:
    del tensors[name]
  files.write_safetensors(tensors, folder / "model.safetensors")
  with pytest.raises(CheckpointError, match=message):
    pretrained.load(folder)


@pytest.mark.parametrize(
  "change, message",
  [
    ({"global_pool": "avg"}, "global_pool='avg'"),
    ({"architecture": "vit_base_patch16_clip_quickgelu_224"}, "not a plain ViT"),
    ({"model_args": {"num_heads": 4, "act_layer": "quick_gelu"}}, "act_layer='quick_gelu'"),
    ({"model_args": {"num_heads": 4, "embed_dim": 64}}, "embed_dim=64 but the tensors show 32"),
  ],
)
def test_timm_refuses_other_config_values(tmp_path, change, message):
  _, folder = _timm_folder(tmp_path)
  config = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**config, **change}))
  with pytest.raises(CheckpointError, match=message):
    pretrained.load(folder)


def test_timm_missing_block_tensor_is_named(tmp_path):
  _, folder = _timm_folder(tmp_path)
  tensors = files.read_tensors(folder)
  del tensors["blocks.1.mlp.fc2.weight"]
  files.write_safetensors(tensors, folder / "model.safetensors")
  with pytest.raises(CheckpointError, match="'blocks.1.mlp.fc2.weight' is missing"):
    pretrained.load(folder)


def test_timm_export_refuses_another_layer_norm_eps(tmp_path):
  model = ViT(**{**_jaxdl_small(), "layer_norm_epsilon": 1e-12})
  variables = model.init(jax.random.key(0), _images())
  with pytest.raises(CheckpointError, match="layer_norm_epsilon=1e-12"):
    pretrained.save(model, variables, tmp_path / "out", format="timm")


# Full size, by shape only ------------------------------------------------------------------------


def _jaxdl_small():
  return dict(image_size=32, patch_size=8, embed_dim=32, num_layers=2, num_heads=4, mlp_dim=37)


def _convert_by_shape(family, config, state_dict_shapes):
  """The family's variables for zero tensors of the given shapes (broadcast: no memory)."""
  tensors = {n: np.broadcast_to(np.zeros((), np.float32), s) for n, s in state_dict_shapes.items()}
  tensors = family.normalize(tensors)
  model = models.build_model(family.model_config(config, tensors))
  example = family.example_input(model)
  shapes = jax.eval_shape(
    lambda: nn.unbox(model.init(jax.random.key(0), jax.numpy.zeros(example.shape)))
  )
  variables = rules.to_variables(
    family.rules(model),
    tensors,
    param_paths.named_leaves(shapes),
    what="by shape",
    ignore=family.ignore,
  )
  return sum(np.size(a) for a in jax.tree.leaves(variables))


def _saved_names(model):
  """The state dict under the names save_pretrained writes (transformers 5 renames modules in
  memory, "vit.layers.0.attention.q_proj", and reverts the renaming when it saves)."""
  try:
    from transformers.core_model_loading import revert_weight_conversion
  except ImportError:  # transformers 4: the names in memory are those saved.
    return model.state_dict()
  return revert_weight_conversion(model, model.state_dict())


def test_vit_base_sizes_load_by_shape():
  with torch.device("meta"):
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000))
    timm_base = timm_reference.create("vit_base_patch16_224")
  hf_config = json.loads(hf.config.to_json_string())
  hf_shapes = {n: tuple(t.shape) for n, t in _saved_names(hf).items()}
  assert _convert_by_shape(HF_VIT, hf_config, hf_shapes) == sum(p.numel() for p in hf.parameters())
  timm_shapes = {n: tuple(t.shape) for n, t in timm_base.state_dict().items()}
  count = _convert_by_shape(TIMM_VIT, {"architecture": "vit_base_patch16_224"}, timm_shapes)
  assert count == sum(p.numel() for p in timm_base.parameters()) == 86_567_656
