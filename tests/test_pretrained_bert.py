"""jaxdl.pretrained's Hugging Face BERT family against transformers' BERT (random weights)."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxdl import models, pretrained
from jaxdl.errors import CheckpointError
from jaxdl.nn import MODELS
from jaxdl.pretrained import files, rules
from jaxdl.train import param_paths

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SIZES = dict(
  vocab_size=99,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=37,
  max_position_embeddings=64,
)
PAD = 0
TOKENS_BT = np.array([[2, 5, 7, 9, 11, 3, 17, 40], [2, 8, 4, 98, 3, PAD, PAD, PAD]], np.int32)
SEGMENTS_BT = np.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0, 0]], np.int32)

# transformers' class -> (the jaxdl model it loads as, the class it is exported as).
LOADS_AS = {
  "BertForMaskedLM": ("bert_mlm", "BertForMaskedLM"),
  "BertForPreTraining": ("bert_mlm", "BertForMaskedLM"),
  "BertForSequenceClassification": ("bert_classifier", "BertForSequenceClassification"),
  "BertModel": ("bert_encoder", "BertModel"),
}
_DECODER = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
# State-dict tensors an export leaves out: the decoder is tied to the word embeddings and the
# output bias (transformers ties them back); jaxdl has no next-sentence head, and no pooler
# outside its classifier.
ABSENT = {
  "BertForMaskedLM": _DECODER,
  "BertForPreTraining": _DECODER
  | {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
  | {"cls.seq_relationship.weight", "cls.seq_relationship.bias"},
  "BertForSequenceClassification": set(),
  "BertModel": {"pooler.dense.weight", "pooler.dense.bias"},
}
RTOL = 1e-5


def _reference(architecture: str, **config) -> "torch.nn.Module":
  """A small transformers model in eval mode, every parameter (biases and LayerNorms included)
  drawn at random so that a swapped or dropped tensor shows in the outputs."""
  torch.manual_seed(0)
  model = getattr(transformers, architecture)(transformers.BertConfig(**SIZES, **config)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  return model


def _reference_output(model, tokens_BT=TOKENS_BT) -> np.ndarray:
  """The logits (or hidden states, for BertModel) for attention_mask = (tokens != pad)."""
  with torch.no_grad():
    out = model(
      input_ids=torch.tensor(tokens_BT, dtype=torch.long),
      token_type_ids=torch.tensor(SEGMENTS_BT, dtype=torch.long),
      attention_mask=torch.tensor(tokens_BT != PAD, dtype=torch.long),
    )
  for key in ("logits", "prediction_logits", "last_hidden_state"):
    if out.get(key) is not None:
      return out[key].numpy()
  raise AssertionError(f"no output among {list(out)}")


def _output(model, variables) -> np.ndarray:
  return np.asarray(model.apply(variables, TOKENS_BT, segment_ids_BT=SEGMENTS_BT))


def _assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
  """Largest difference relative to the reference's largest magnitude (an element-wise ratio is
  meaningless where the reference crosses zero)."""
  assert ours.shape == ref.shape
  error = np.abs(ours - ref).max() / np.abs(ref).max()
  assert error <= RTOL, f"relative error {error:.2e} > {RTOL}"


def _saved(tmp_path, architecture: str, **config):
  reference = _reference(architecture, **config)
  reference.save_pretrained(tmp_path / "ref")
  return reference, tmp_path / "ref"


@pytest.mark.parametrize("architecture", sorted(LOADS_AS))
def test_load_gives_transformers_outputs(tmp_path, architecture):
  reference, folder = _saved(tmp_path, architecture, num_labels=3)
  model, variables = pretrained.load(folder)
  assert type(model) is MODELS[LOADS_AS[architecture][0]]
  if architecture == "BertForSequenceClassification":
    assert model.num_classes == 3
  _assert_close(_output(model, variables), _reference_output(reference))


@pytest.mark.parametrize("architecture", sorted(LOADS_AS))
def test_export_writes_the_checkpoints_tensors_and_transformers_reads_it(tmp_path, architecture):
  reference, folder = _saved(tmp_path, architecture, num_labels=3)
  model, variables = pretrained.load(folder)
  pretrained.save(model, variables, tmp_path / "out", format="hf")

  exported = files.read_tensors(tmp_path / "out")
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  assert ABSENT[architecture] <= set(state)
  assert set(exported) == set(state) - ABSENT[architecture]
  for name, tensor in exported.items():
    np.testing.assert_array_equal(tensor, state[name], err_msg=name)

  exported_as = LOADS_AS[architecture][1]
  reloaded = getattr(transformers, exported_as).from_pretrained(tmp_path / "out").eval()
  assert reloaded.config.architectures == [exported_as]
  if architecture == "BertForSequenceClassification":
    assert reloaded.config.num_labels == 3
  _assert_close(_reference_output(reloaded), _reference_output(reference))


@pytest.mark.parametrize("architecture", ["BertForMaskedLM", "BertForSequenceClassification"])
def test_scanned_layers_load_and_export_the_same(tmp_path, architecture):
  reference, folder = _saved(tmp_path, architecture)
  model, variables = pretrained.load(folder, scan_layers=True)
  assert model.scan_layers and "layers" in variables["params"]["encoder"]
  _assert_close(_output(model, variables), _reference_output(reference))

  pretrained.save(model, variables, tmp_path / "out", format="hf")
  exported = files.read_tensors(tmp_path / "out")
  original = files.read_tensors(folder)
  assert set(exported) == set(original)
  for name, tensor in exported.items():
    np.testing.assert_array_equal(tensor, original[name], err_msg=name)


def _rewritten(tmp_path, reference, rename, *, drop_architectures: bool) -> None:
  """`reference` saved as an older tool would: its whole state dict (tied decoder included)
  under renamed names, in pytorch_model.bin."""
  state = {rename(k): v.clone() for k, v in reference.state_dict().items()}
  torch.save(state, tmp_path / "pytorch_model.bin")
  config = reference.config.to_dict()
  if drop_architectures:
    config.pop("architectures")
  (tmp_path / "config.json").write_text(json.dumps(config))


def _old_layer_norm_names(name: str) -> str:
  return name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
    "LayerNorm.bias", "LayerNorm.beta"
  )


@pytest.mark.parametrize(
  "architecture, rename",
  [
    ("BertForMaskedLM", _old_layer_norm_names),
    ("BertForPreTraining", _old_layer_norm_names),
    ("BertModel", lambda name: f"bert.{name}"),
    ("BertForSequenceClassification", lambda name: name.removeprefix("bert.")),
  ],
  ids=["gamma_beta", "gamma_beta_pretraining", "base_with_bert_prefix", "head_without_prefix"],
)
def test_old_names_and_stored_tied_decoder_load(tmp_path, architecture, rename):
  reference = _reference(architecture, num_labels=3)
  _rewritten(tmp_path, reference, rename, drop_architectures=architecture != "BertForPreTraining")
  model, variables = pretrained.load(tmp_path)
  assert type(model) is MODELS[LOADS_AS[architecture][0]]
  _assert_close(_output(model, variables), _reference_output(reference))


def test_an_untied_decoder_is_refused(tmp_path):
  reference = _reference("BertForMaskedLM")
  state = {k: v.numpy().copy() for k, v in reference.state_dict().items()}
  state["cls.predictions.decoder.weight"] += 1.0
  files.write_safetensors(state, tmp_path / "model.safetensors")
  (tmp_path / "config.json").write_text(json.dumps(reference.config.to_dict()))
  with pytest.raises(CheckpointError, match="'cls.predictions.decoder.weight' differs from"):
    pretrained.load(tmp_path)


def test_bert_base_shapes_convert_with_the_reference_parameter_count():
  """bert-base-uncased as published: BertForPreTraining's tensors ("bert." prefix, pooler,
  next-sentence head, "LayerNorm.gamma") under architectures ["BertForMaskedLM"]. Built on the
  meta device: names and shapes without weights."""
  with torch.device("meta"):
    published = transformers.BertForPreTraining(transformers.BertConfig())
    masked_lm = transformers.BertForMaskedLM(transformers.BertConfig())
  zero = np.zeros((), np.float32)
  tensors = {
    _old_layer_norm_names(k): np.broadcast_to(zero, tuple(v.shape))
    for k, v in published.state_dict().items()
  }
  config = {**transformers.BertConfig().to_dict(), "architectures": ["BertForMaskedLM"]}
  family = pretrained.FAMILIES["hf_bert"]
  assert family.detect(config, set(tensors))
  tensors = family.normalize(tensors)
  model = models.build_model(family.model_config(config, tensors))
  shapes = param_paths.named_leaves(
    jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), np.zeros((1, 1), np.int32))))
  )
  variables = rules.to_variables(
    family.rules(model), tensors, shapes, what="bert-base", ignore=family.ignore
  )
  count = sum(int(np.prod(s.shape)) for s in shapes.values())
  assert len(param_paths.named_leaves(variables)) == len(shapes)
  assert count == sum(p.numel() for p in masked_lm.parameters()) == 109_514_298


def test_unsupported_config_values_are_named_in_one_error(tmp_path):
  _, folder = _saved(tmp_path, "BertForMaskedLM")
  config = json.loads((folder / "config.json").read_text())
  config.update(
    hidden_act="relu",
    position_embedding_type="relative_key",
    is_decoder=True,
    architectures=["BertForTokenClassification"],
  )
  (folder / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError) as error:
    pretrained.load(folder)
  for part in (
    "hidden_act='relu'",
    "position_embedding_type='relative_key'",
    "is_decoder=True",
    "BertForTokenClassification",
  ):
    assert part in str(error.value)


def test_a_missing_tensor_is_named(tmp_path):
  _, folder = _saved(tmp_path, "BertForSequenceClassification")
  tensors = files.read_tensors(folder)
  del tensors["bert.encoder.layer.1.attention.self.key.weight"]
  files.write_safetensors(tensors, folder / "model.safetensors")
  with pytest.raises(CheckpointError, match=r"'bert.encoder.layer.1.attention.self.key.weight'"):
    pretrained.load(folder)
