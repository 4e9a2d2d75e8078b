"""The experiments whose models are assembled from jaxdl.nn parts in the experiment file (named by
`model.cls`): each trains a few steps of a shrunken copy on the shipped MNIST subset or on a tiny
generated review corpus, and learns something."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import config as config_lib
from jaxdl import metrics as metrics_lib
from jaxdl import models, trainer
from jaxdl.errors import ConfigError
from tests.conftest import REPO

EXPERIMENTS = REPO / "experiments"
SHORT_RUN = [
  "train.num_steps=30",
  "train.log_every_steps=10",
  "train.eval_every_steps=1000",
  "train.checkpoint_every_steps=1000",
  "train.batch_size=32",
  "data.eval_batch_size=500",
  "optimizer.learning_rate=3e-3",
  "optimizer.schedule=constant",
]


def _config(experiment, *overrides):
  config = config_lib.load_experiment(EXPERIMENTS / experiment)
  config_lib.apply_overrides(config, [*SHORT_RUN, *overrides])
  return config


def _train_losses(workdir):
  return [r["train/loss"] for r in metrics_lib.read_metrics(workdir) if "train/loss" in r]


def _train(config, workdir):
  result = trainer.train(config, workdir, show_progress=False)
  losses = _train_losses(workdir)
  assert len(losses) == 3 and all(np.isfinite(losses))
  return result, losses


def test_mnist_cnn_rnn_learns(tmp_path):
  config = _config("mnist_cnn_rnn.py", "model.features=32", "data.download=false")
  assert config.model.cls.endswith("mnist_cnn_rnn.py:make_model")
  result, losses = _train(config, tmp_path / "run")
  # Ten classes: about ln 10 = 2.30 untrained; thirty steps of Adam get well below it.
  assert losses[0] == pytest.approx(np.log(10), abs=0.4)
  assert losses[-1] < losses[0] - 0.3
  assert result.eval_metrics["eval/accuracy"] > 0.3  # Chance: 0.1.


# The patch stem is ViT's (tested with experiments/mnist_vit.py); the conv stem, with BatchNorm
# inside a Sequential, is the new part, so it is the one in the fast suite.
@pytest.mark.parametrize("variant", [pytest.param("patch", marks=pytest.mark.slow), "conv"])
def test_mnist_vit_stems_learn(variant, tmp_path):
  config = _config(
    f"mnist_vit_conv_stem.py:{variant}",
    "model.dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.mlp_dim=32",
    "optimizer.warmup_steps=3",
    "data.download=false",
  )
  assert config.model.stem == variant
  result, losses = _train(config, tmp_path / variant)
  assert losses[-1] < losses[0] - 0.15
  assert result.eval_metrics["eval/accuracy"] > 0.2  # Chance: 0.1.


def test_mnist_vit_refuses_an_unknown_stem():
  with pytest.raises(ConfigError, match="unknown variant 'resnet'"):
    config_lib.load_experiment(f"{EXPERIMENTS / 'mnist_vit_conv_stem.py'}:resnet")


def _write_reviews(path, num_reviews=240, seed=0):
  """A corpus where "good"/"great" mean fresh and "bad"/"awful" rotten, in filler of any length."""
  rng = np.random.default_rng(seed)
  filler = ["the", "movie", "plot", "actor", "film", "story", "was", "quite", "and", "a"]
  lines = ["category,text,movie_name,has_plot_and_reviews"]
  for i in range(num_reviews):
    fresh = i % 2 == 0
    words = list(rng.choice(filler, rng.integers(2, 12)))
    words.insert(
      int(rng.integers(0, len(words) + 1)),
      rng.choice(["good", "great"] if fresh else ["bad", "awful"]),
    )
    lines.append(f"{'fresh' if fresh else 'rotten'},{' '.join(words)},m{i},False")
  path.write_text("\n".join(lines) + "\n")
  return path


def test_reviews_lstm_attention_learns(tmp_path):
  corpus = _write_reviews(tmp_path / "reviews.csv")
  config = _config(
    "reviews_lstm_attention.py",
    f"data.dir={corpus}",
    "data.max_length=16",
    "data.vocab_size=300",
    "data.test_fraction=0.25",
    "model.embed_dim=16",
    "model.features=16",
    "model.attention_dim=16",
    "model.dropout_rate=0.0",
    "data.eval_batch_size=20",
    "optimizer.learning_rate=1e-2",
  )
  result, losses = _train(config, tmp_path / "run")
  assert losses[0] == pytest.approx(np.log(2), abs=0.15)
  assert losses[-1] < 0.3
  # Held-out reviews: the sentiment word is found wherever it is, whatever the padding.
  assert result.eval_metrics["eval/num_examples"] > 30
  assert result.eval_metrics["eval/accuracy"] > 0.85


def test_reviews_model_ignores_padding():
  """The model masks [PAD] itself: more padding after a review leaves its logits unchanged."""
  module = config_lib.load_experiment(EXPERIMENTS / "reviews_lstm_attention.py")
  model_cls = models.import_model(module.model.cls)
  model = model_cls(vocab_size=20, embed_dim=8, features=8, attention_dim=8)
  tokens = jnp.array([[3, 7, 9, 4, 0, 0], [5, 6, 0, 0, 0, 0]], jnp.int32)
  params = model.init(jax.random.key(0), tokens)["params"]
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(1), p.shape), params)
  apply = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
  logits = apply(tokens)
  np.testing.assert_allclose(apply(jnp.pad(tokens, ((0, 0), (0, 5)))), logits, rtol=1e-5, atol=1e-6)
  assert not np.allclose(apply(tokens.at[1, 2].set(8)), logits)  # A real token does count.
