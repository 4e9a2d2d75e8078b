"""The fine-tuning experiments end to end on small random checkpoints the tests write (no
download): experiments/shakespeare_gpt2_finetune.py (all weights and LoRA) and
experiments/reviews_bert_finetune.py; init.pretrained, `jaxdl export` back to transformers, and
exact resume."""

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import flax.linen as nn  # noqa: E402

from jaxdl import cli, pretrained, sampling, trainer  # noqa: E402
from jaxdl import config as config_lib  # noqa: E402
from jaxdl import export as export_lib  # noqa: E402
from jaxdl import metrics as metrics_lib  # noqa: E402
from jaxdl.checkpoint import Checkpointer  # noqa: E402
from jaxdl.data import text as text_lib  # noqa: E402
from jaxdl.errors import ConfigError  # noqa: E402
from jaxdl.train import lora as lora_lib  # noqa: E402
from jaxdl.train import param_paths  # noqa: E402
from tests.conftest import REPO, SHARED_DATA, needs_data  # noqa: E402

GPT2_SMALL = [
  "data.block_size=32",
  "train.batch_size=8",
  "data.eval_batch_size=64",
  "train.log_every_steps=2",
  "train.eval_every_steps=4",
  "train.checkpoint_every_steps=4",
  "optimizer.learning_rate=1e-3",
]


def _config(experiment, *overrides):
  config = config_lib.load_experiment(REPO / "experiments" / experiment)
  config_lib.apply_overrides(config, list(overrides))
  return config


def _train_metrics(workdir):
  return {
    r["step"]: {k: v for k, v in r.items() if not k.startswith("perf/")}
    for r in metrics_lib.read_metrics(workdir)
    if "train/loss" in r
  }


def _saved_state(workdir, step=None):
  checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
  try:
    return checkpointer.restore_as_saved(step or checkpointer.latest_step())["state"]
  finally:
    checkpointer.close()


def _bpe_tokenizer(folder, vocab_size=300):
  """A GPT-2-style byte-level BPE learnt from the shipped Shakespeare, saved as tokenizer.json."""
  from tokenizers import decoders, models, pre_tokenizers, trainers

  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  text, _ = text_lib.load_shipped_corpus()
  trainer_ = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=["<|endoftext|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
  )
  tokenizer.train_from_iterator([text[i : i + 10_000] for i in range(0, 200_000, 10_000)], trainer_)
  tokenizer.save(str(folder / "tokenizer.json"))
  return tokenizer.get_vocab_size()


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("gpt2")
  vocab_size = _bpe_tokenizer(folder)
  torch.manual_seed(0)
  config = transformers.GPT2Config(
    vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2
  )
  transformers.GPT2LMHeadModel(config).save_pretrained(folder)
  return folder


def test_gpt2_finetune_starts_from_the_checkpoint_bit_for_bit(gpt2_folder, tmp_path):
  """With a zero learning rate the saved parameters are the checkpoint's own, and the model
  section saved in the workdir is the checkpoint's architecture."""
  workdir = tmp_path / "run"
  trainer.train(
    _config(
      "shakespeare_gpt2_finetune.py",
      f"init.pretrained={gpt2_folder}",
      *GPT2_SMALL,
      "train.num_steps=1",
      "optimizer.learning_rate=0.0",
    ),
    workdir,
    show_progress=False,
  )
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["num_layers"] == 2 and saved["model"]["embed_dim"] == 32
  assert saved["data"]["tokenizer"] == str(gpt2_folder)
  _, variables = pretrained.load(gpt2_folder)
  params = param_paths.named_leaves(_saved_state(workdir)["params"])
  expected = param_paths.named_leaves(variables["params"])
  assert params.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_array_equal(params[path], value, err_msg=path)


@pytest.mark.slow  # Several short runs; CI runs it.
@pytest.mark.parametrize("variant", ["", ":lora"])
def test_gpt2_finetune_trains_and_resumes_bit_exactly(gpt2_folder, tmp_path, variant):
  experiment = f"shakespeare_gpt2_finetune.py{variant}"
  run = lambda workdir, steps: trainer.train(
    _config(experiment, f"init.pretrained={gpt2_folder}", *GPT2_SMALL, f"train.num_steps={steps}"),
    workdir,
    show_progress=False,
  )
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  result = run(straight, 8)
  run(resumed, 4)
  run(resumed, 8)
  assert _train_metrics(resumed) == _train_metrics(straight)
  losses = [m["train/loss"] for m in _train_metrics(straight).values()]
  assert losses[-1] < losses[0]
  assert np.isfinite(result.eval_metrics["eval/loss"])


@pytest.mark.slow  # Several short runs; CI runs it.
def test_gpt2_finetune_exports_to_transformers(gpt2_folder, tmp_path, capsys):
  workdir = tmp_path / "run"
  trainer.train(
    _config(
      "shakespeare_gpt2_finetune.py",
      f"init.pretrained={gpt2_folder}",
      *GPT2_SMALL,
      "train.num_steps=4",
    ),
    workdir,
    show_progress=False,
  )
  out = tmp_path / "export"
  assert cli.main(["export", str(workdir), "--format", "hf", "--out", str(out)]) == 0
  assert "model.safetensors" in capsys.readouterr().out
  reference = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  model, variables = pretrained.load(out)
  trained = _saved_state(workdir)["params"]
  np.testing.assert_array_equal(
    np.asarray(variables["params"]["wte"]["embedding"]), trained["wte"]["embedding"]
  )
  tokens = np.random.default_rng(0).integers(0, model.vocab_size, (2, 16))
  with torch.no_grad():
    theirs = reference(torch.tensor(tokens)).logits.numpy()
  ours = np.asarray(model.apply(variables, jax.numpy.asarray(tokens)))
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())
  # The tokenizer travels with the weights, and transformers reads it.
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  ids = hf_tokenizer("To be, or not to be").input_ids
  assert ids == pretrained_tokenizer_ids(gpt2_folder, "To be, or not to be")
  # A second export into the same folder keeps the first.
  assert cli.main(["export", str(workdir), "--format", "hf", "--out", str(out)]) == 2


def pretrained_tokenizer_ids(folder, text):
  from jaxdl.data.pretrained_tokenizer import load_pretrained_tokenizer

  return load_pretrained_tokenizer(folder).encode(text).tolist()


def test_pretrained_tokenizer_needs_init_pretrained(tmp_path):
  with pytest.raises(ConfigError, match="init.pretrained"):
    trainer.train(
      _config("shakespeare_gpt2_finetune.py", *GPT2_SMALL, "train.num_steps=1"),
      tmp_path / "run",
      show_progress=False,
    )


REVIEWS = SHARED_DATA / "rotten_tomatoes"


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
  """A small random BERT published the way bert-base-uncased is (BertForPreTraining, with
  vocab.txt: a WordPiece vocabulary learnt from the shipped Shakespeare)."""
  folder = tmp_path_factory.mktemp("bert")
  wordpiece = tokenizers.BertWordPieceTokenizer(lowercase=True)
  text, _ = text_lib.load_shipped_corpus()
  wordpiece.train_from_iterator([text[i : i + 10_000] for i in range(0, 300_000, 10_000)], 600)
  wordpiece.save_model(str(folder))
  torch.manual_seed(0)
  config = transformers.BertConfig(
    vocab_size=wordpiece.get_vocab_size(),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    architectures=["BertForPreTraining"],
  )
  transformers.BertForPreTraining(config).save_pretrained(folder)
  return folder


@pytest.mark.slow  # Three runs on the review corpus; CI runs it.
@needs_data(REVIEWS.is_dir(), "the review corpus lives in ../shared/data (jaxdl dev machines only)")
def test_bert_finetune_copies_the_encoder_trains_resumes_and_exports(bert_folder, tmp_path):
  small = [
    f"init.pretrained={bert_folder}",
    f"data.dir={REVIEWS}",
    "data.max_length=32",
    "train.batch_size=16",
    "train.log_every_steps=2",
    "train.eval_every_steps=4",
    "train.checkpoint_every_steps=4",
    "optimizer.warmup_steps=2",
    "optimizer.decay_steps=8",
    "optimizer.learning_rate=1e-3",
  ]
  run = lambda workdir, steps: trainer.train(
    _config("reviews_bert_finetune.py", *small, f"train.num_steps={steps}"),
    workdir,
    show_progress=False,
  )
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  result = run(straight, 8)
  run(resumed, 4)
  run(resumed, 8)
  assert _train_metrics(resumed) == _train_metrics(straight)
  assert result.eval_metrics["eval/num_examples"] > 1000
  # Step 0 held the checkpoint's encoder: a zero-rate run keeps it bit for bit.
  zero = tmp_path / "zero"
  trainer.train(
    _config("reviews_bert_finetune.py", *small, "train.num_steps=1", "optimizer.learning_rate=0.0"),
    zero,
    show_progress=False,
  )
  _, variables = pretrained.load(bert_folder)
  expected = param_paths.named_leaves(variables["params"]["encoder"])
  encoder = param_paths.named_leaves(_saved_state(zero)["params"]["encoder"])
  assert encoder.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_array_equal(encoder[path], value, err_msg=path)
  # Exported, the classifier is transformers' BertForSequenceClassification, same logits.
  out = tmp_path / "export"
  export_lib.export_workdir(straight, out, "hf")
  reference = transformers.BertForSequenceClassification.from_pretrained(out).eval()
  model, variables = pretrained.load(out)
  tokens = np.random.default_rng(0).integers(1, model.vocab_size, (3, 20))
  with torch.no_grad():
    theirs = reference(torch.tensor(tokens)).logits.numpy()
  ours = np.asarray(model.apply(variables, jax.numpy.asarray(tokens)))
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert hf_tokenizer.encode("a fine film", add_special_tokens=False) == (
    pretrained_tokenizer_ids(bert_folder, "a fine film")
  )


def test_bert_mlm_continues_from_a_published_checkpoint(bert_folder, tmp_path):
  """experiments/shakespeare_bert_mlm.py:pretrained: BERT's masked-LM weights and WordPiece
  tokenizer, continued on Shakespeare; the loss at step 0 is the checkpoint's own."""
  small = [
    f"init.pretrained={bert_folder}",
    "data.block_size=32",
    "data.val_fraction=0.02",
    "train.batch_size=8",
    "train.log_every_steps=1",
    "train.eval_every_steps=1000",
    "optimizer.learning_rate=1e-3",
    "optimizer.warmup_steps=1",
  ]
  workdir = tmp_path / "run"
  trainer.train(
    _config("shakespeare_bert_mlm.py:pretrained", *small, "train.num_steps=6"),
    workdir,
    show_progress=False,
  )
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["hidden_dim"] == 32 and saved["data"]["objective"] == "masked_lm"
  losses = [m["train/loss"] for m in _train_metrics(workdir).values()]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_bert_mlm_from_scratch_experiment_builds(tmp_path):
  config = _config("shakespeare_bert_mlm.py")
  assert config.model.name == "bert_mlm" and config.data.objective == "masked_lm"
  with pytest.raises(ConfigError, match="unknown variant"):
    _config("shakespeare_bert_mlm.py:gpu")


@pytest.mark.slow  # Several short runs; CI runs it.
def test_a_lora_run_exports_samples_and_transfers_its_merged_weights(gpt2_folder, tmp_path):
  """What leaves a LoRA run is the base with the adapters merged: `jaxdl export` (from the moving
  average, as eval uses it), `jaxdl generate`, and init.checkpoint into a plain run."""
  workdir = tmp_path / "lora"
  overrides = [f"init.pretrained={gpt2_folder}", *GPT2_SMALL, "train.num_steps=4"]
  trainer.train(
    # A large rate: the adapters move the model enough to change its greedy choices.
    _config(
      "shakespeare_gpt2_finetune.py:lora",
      *overrides,
      "train.ema_decay=0.5",
      "optimizer.learning_rate=0.05",
    ),
    workdir,
    show_progress=False,
  )
  config = config_lib.from_json((workdir / "config.json").read_text())
  state = _saved_state(workdir)
  _, base = pretrained.load(gpt2_folder)
  query = "block_0/self_attn/query/kernel"
  flat = lambda tree: param_paths.named_leaves(tree)
  # The base never moved; the adapters did.
  np.testing.assert_array_equal(flat(state["params"])[query], flat(base["params"])[query])
  averaged = lora_lib.saved_params(state, config.model)
  assert not np.array_equal(flat(averaged)[query], flat(base["params"])[query])

  out = tmp_path / "export"
  export_lib.export_workdir(workdir, out, "hf")
  _, exported = pretrained.load(out)
  for path, value in flat(averaged).items():
    np.testing.assert_array_equal(flat(exported["params"])[path], value, err_msg=path)

  raw = lora_lib.merge(state["params"], state["adapters"], config.model.lora)
  model, _ = pretrained.load(gpt2_folder)
  prompt = "ROMEO:"
  tokenizer_ids = pretrained_tokenizer_ids(gpt2_folder, prompt)
  expected = sampling.generate(model, raw, tokenizer_ids, max_new_tokens=8, temperature=0.0)
  unadapted = sampling.generate(
    model, state["params"], tokenizer_ids, max_new_tokens=8, temperature=0.0
  )
  assert not np.array_equal(expected, unadapted)
  text = sampling.generate_from_workdir(workdir, prompt, max_new_tokens=8, temperature=0.0)
  from jaxdl.data.pretrained_tokenizer import load_pretrained_tokenizer

  assert text == prompt + load_pretrained_tokenizer(gpt2_folder).decode(expected)

  plain = tmp_path / "plain"
  trainer.train(
    _config(
      "shakespeare_gpt2_finetune.py",
      f"data.tokenizer={gpt2_folder}",
      f"init.checkpoint={workdir}",
      *[f"model.{k}={config.model[k]}" for k in ("num_layers", "num_heads", "embed_dim")],
      f"model.block_size={config.model.block_size}",
      *GPT2_SMALL,
      "train.num_steps=1",
      "optimizer.learning_rate=0.0",
    ),
    plain,
    show_progress=False,
  )
  copied = flat(_saved_state(plain)["params"])
  for path, value in flat(raw).items():
    np.testing.assert_array_equal(copied[path], value, err_msg=path)


@pytest.mark.slow  # A training run; CI runs it.
def test_an_image_run_exports_without_a_tokenizer(tmp_path, capsys):
  """An image run has no tokenizer.json: its export writes the weights and exits 0, and
  transformers computes the logits of the saved parameters."""
  workdir = tmp_path / "run"
  config = _config(
    "mnist_vit.py",
    "data.download=false",
    "model.num_channels=1",
    "model.embed_dim=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.mlp_dim=32",
    "train.batch_size=16",
    "train.num_steps=2",
    "optimizer.warmup_steps=0",
  )
  trainer.train(config, workdir, show_progress=False)
  out = tmp_path / "export"
  assert cli.main(["export", str(workdir), "--format", "hf", "--out", str(out)]) == 0
  assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
  model, variables = pretrained.load(out)
  trained = _saved_state(workdir)["params"]
  jax.tree.map(np.testing.assert_array_equal, nn.unbox(variables["params"]), trained)
  images = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype(np.float32)
  reference = transformers.ViTForImageClassification.from_pretrained(out).eval()
  with torch.no_grad():
    theirs = reference(torch.tensor(images.transpose(0, 3, 1, 2))).logits.numpy()
  ours = np.asarray(model.apply(variables, images))
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())
