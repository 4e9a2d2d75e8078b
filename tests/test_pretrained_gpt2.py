"""Hugging Face GPT-2 in and out (jaxdl.pretrained.hf_gpt2), against transformers' own model:
logits, greedy decoding, export and reload, sharded and .bin checkpoints, the full-size layout.
Reference models have random weights from GPT2Config (no download)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxdl import pretrained, sampling  # noqa: E402
from jaxdl.errors import CheckpointError, ConfigError  # noqa: E402
from jaxdl.pretrained import files, hf_gpt2, rules  # noqa: E402

SMALL = dict(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4)


def _reference(**overrides):
  torch.manual_seed(0)
  return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**SMALL, **overrides})).eval()


def _tokens(shape=(2, 16), vocab=97):
  return np.random.default_rng(0).integers(0, vocab, shape)


def _logits(reference, tokens):
  with torch.no_grad():
    return reference(torch.tensor(tokens)).logits.numpy()


def _assert_close(ours, theirs):
  """Within 1e-5 of the logits' scale (float32)."""
  scale = np.abs(theirs).max()
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = tmp_path_factory.mktemp("gpt2")
  _reference().save_pretrained(path)
  return path


def test_logits_equal_transformers(folder):
  model, variables = pretrained.load(folder)
  assert model.num_layers == 2 and model.embed_dim == 48 and model.vocab_size == 97
  tokens = _tokens()
  _assert_close(model.apply(variables, jnp.asarray(tokens)), _logits(_reference(), tokens))


def test_untied_head_and_scanned_layers(tmp_path):
  reference = _reference(tie_word_embeddings=False)
  with torch.no_grad():  # Make the head differ from the embedding, so a mix-up shows.
    reference.lm_head.weight.normal_()
  reference.save_pretrained(tmp_path)
  tokens = _tokens()
  for scan in (False, True):
    model, variables = pretrained.load(tmp_path, scan_layers=scan)
    assert not model.tie_embeddings and model.scan_layers == scan
    _assert_close(model.apply(variables, jnp.asarray(tokens)), _logits(reference, tokens))


def test_sharded_safetensors_and_torch_bin_load_the_same(folder, tmp_path):
  reference = _reference()
  reference.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
  assert (tmp_path / "sharded" / files.SAFETENSORS_INDEX).is_file()
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "config.json").write_text((folder / "config.json").read_text())
  torch.save(reference.state_dict(), tmp_path / "bin" / files.TORCH_BIN)
  tokens = _tokens()
  expected = _logits(reference, tokens)
  for path in (tmp_path / "sharded", tmp_path / "bin"):
    model, variables = pretrained.load(path)
    _assert_close(model.apply(variables, jnp.asarray(tokens)), expected)


def test_greedy_decoding_matches_transformers_generate(folder):
  reference = _reference()
  prompt = _tokens((1, 5))
  with torch.no_grad():
    theirs = reference.generate(
      torch.tensor(prompt), max_new_tokens=20, do_sample=False, pad_token_id=0
    )[0, 5:].numpy()
  model, variables = pretrained.load(folder)
  ours = sampling.generate(
    model, variables["params"], prompt[0], max_new_tokens=20, temperature=0.0
  )
  np.testing.assert_array_equal(ours, theirs)


def test_export_reloads_in_transformers_with_the_same_tensors(folder, tmp_path):
  model, variables = pretrained.load(folder)
  written = pretrained.save(model, variables, tmp_path / "out")
  assert sorted(p.name for p in written) == ["config.json", "model.safetensors"]
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
  tokens = _tokens()
  np.testing.assert_array_equal(_logits(reloaded, tokens), _logits(_reference(), tokens))
  # Import then export gives every tensor back, bit for bit, under GPT-2's own names.
  original = hf_gpt2.GPT2.normalize(files.read_tensors(folder))
  exported = files.read_tensors(tmp_path / "out")
  assert sorted(exported) == sorted(original)
  for name, array in original.items():
    np.testing.assert_array_equal(exported[name], array, err_msg=name)


def test_export_never_overwrites(folder, tmp_path):
  model, variables = pretrained.load(folder)
  pretrained.save(model, variables, tmp_path)
  before = (tmp_path / "model.safetensors").read_bytes()
  with pytest.raises(CheckpointError, match="overwrite"):
    pretrained.save(model, variables, tmp_path)
  assert (tmp_path / "model.safetensors").read_bytes() == before
  pretrained.save(model, variables, tmp_path, overwrite=True)


@pytest.mark.parametrize(
  "name, config, count",
  [
    ("gpt2", {}, 124_439_808),
    pytest.param(
      "gpt2-medium",
      dict(n_embd=1024, n_layer=24, n_head=16),
      354_823_168,
      marks=pytest.mark.slow,  # 1.4 GB of zeros cast to float32; CI runs it.
    ),
  ],
)
def test_full_size_layouts_load_by_shape(name, config, count):
  """GPT-2 small and medium: every tensor of transformers' model (built on the meta device, no
  weights) has a place of the right shape in jaxdl's GPT, read from zero-stride arrays."""
  with torch.device("meta"):
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config))
  shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
  tensors = {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in shapes.items()}
  tensors = hf_gpt2.GPT2.normalize(tensors)
  hf_config = reference.config.to_dict()
  section = hf_gpt2.GPT2.model_config(hf_config, tensors)
  from jaxdl import models

  model = models.build_model(section)
  shapes_jax = pretrained._shapes(model, hf_gpt2.GPT2)
  variables = rules.to_variables(
    hf_gpt2.GPT2.rules(model), tensors, shapes_jax, what=name, ignore=hf_gpt2.GPT2.ignore
  )
  num_params = sum(np.prod(s.shape) for s in shapes_jax.values())
  reference_count = sum(
    v.numel() for k, v in reference.state_dict().items() if k != "lm_head.weight"
  )
  assert num_params == reference_count
  if count:
    assert num_params == count
  assert set(variables) == {"params"}


def test_unsupported_config_names_every_difference(tmp_path):
  _reference().save_pretrained(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  config.update(activation_function="relu", scale_attn_by_inverse_layer_idx=True)
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match="activation_function='relu'.*inverse_layer_idx"):
    pretrained.load(tmp_path)


def test_missing_and_extra_tensors_are_named(folder, tmp_path):
  tensors = files.read_tensors(folder)
  del tensors["transformer.h.1.mlp.c_fc.bias"]
  tensors["transformer.h.9.extra.weight"] = np.zeros(3, np.float32)
  (tmp_path / "config.json").write_text((folder / "config.json").read_text())
  files.write_safetensors(tensors, tmp_path / "model.safetensors")
  with pytest.raises(CheckpointError) as error:
    pretrained.load(tmp_path)
  assert "'h.1.mlp.c_fc.bias' is missing" in str(error.value)
  assert "'h.9.extra.weight'" in str(error.value)


def test_architecture_overrides_are_refused(folder):
  with pytest.raises(ConfigError, match="num_layers"):
    pretrained.load(folder, num_layers=3)


def test_model_section_fills_and_checks_the_config(folder):
  section = pretrained.model_section(folder, {"name": "gpt", "dropout_rate": 0.0})
  assert section["num_layers"] == 2 and section["dropout_rate"] == 0.0
  with pytest.raises(ConfigError) as error:
    pretrained.model_section(folder, {"name": "gpt", "num_layers": 3, "embed_dim": 64})
  assert "model.embed_dim=64" in str(error.value) and "model.num_layers=3" in str(error.value)
  with pytest.raises(ConfigError, match="has no argument"):
    pretrained.model_section(folder, {"name": "resnet18"})


def test_a_hugging_face_cache_entry_loads_at_its_main_snapshot(folder, tmp_path):
  """~/.cache/huggingface/hub/models--NAME: refs/main names the snapshot to read."""
  import shutil

  entry = tmp_path / "models--gpt2"
  shutil.copytree(folder, entry / "snapshots" / "abc123")
  (entry / "snapshots" / "old999").mkdir()
  (entry / "refs").mkdir()
  (entry / "refs" / "main").write_text("abc123\n")
  model, variables = pretrained.load(entry)
  tokens = _tokens()
  _assert_close(model.apply(variables, jnp.asarray(tokens)), _logits(_reference(), tokens))
  (entry / "refs" / "main").unlink()
  with pytest.raises(CheckpointError, match="2 snapshots"):
    pretrained.load(entry)


@pytest.mark.parametrize(
  "missing, file, extra",
  [("torch", "model.pth", "torch"), ("safetensors", "model.safetensors", "hf")],
)
def test_a_missing_package_is_one_line_naming_the_install(
  monkeypatch, tmp_path, missing, file, extra
):
  import importlib

  real = importlib.import_module

  def without(name, *args):
    if name == missing or name.startswith(missing + "."):
      raise ImportError(f"No module named {name!r}")
    return real(name, *args)

  monkeypatch.setattr(importlib, "import_module", without)
  (tmp_path / file).write_bytes(b"")
  with pytest.raises(ConfigError) as error:
    files.read_tensors(tmp_path / file)
  message = str(error.value)
  assert "\n" not in message and f"pip install 'jaxdl[{extra}]'" in message
