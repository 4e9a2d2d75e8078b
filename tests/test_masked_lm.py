"""Masked language modelling (BERT's recipe): the masking against its formula, masks as a pure
function of (seed, batch index), the task's weighted loss, and a tiny BERT trained on the shipped
Shakespeare text that learns and resumes to the bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import config as config_lib
from jaxdl import data as data_lib
from jaxdl import metrics as metrics_lib
from jaxdl import models, trainer
from jaxdl.data import masking
from jaxdl.data.tokenizers import TEXT_SPECIALS
from jaxdl.errors import ConfigError, DataError
from jaxdl.train import tasks

# Ids 0..4 are [PAD] [UNK] [CLS] [SEP] [MASK]; 5..V-1 are the regular tokens.
PAD, UNK, CLS, SEP, MASK = range(len(TEXT_SPECIALS))
VOCAB = 30
REGULAR = np.arange(len(TEXT_SPECIALS), VOCAB)
SCHEME = masking.BertMasking(vocab_size=VOCAB, mask_id=MASK, special_ids=tuple(range(5)))
# How far a count may stray from its binomial mean: 5 standard deviations (p < 1e-6 per check).
Z = 5.0


def _within_binomial(count, n, p):
  return abs(count - n * p) <= Z * np.sqrt(n * p * (1 - p))


def _sequences(rng, num, length):
  """int32 [num, length]: [CLS], a random number of regular tokens, [SEP], then [PAD]s."""
  tokens = rng.choice(REGULAR, size=(num, length)).astype(np.int32)
  lengths = rng.integers(1, length - 1, size=num)  # Regular tokens per row.
  positions = np.arange(length)[None, :]
  tokens[:, 0] = CLS
  tokens[positions == lengths[:, None] + 1] = SEP
  tokens[positions > lengths[:, None] + 1] = PAD
  return tokens, lengths


# ---------------------------------------------------------------- the masking against its formula


def test_each_sequence_has_round_15_percent_of_its_tokens_chosen_at_least_one():
  tokens, lengths = _sequences(np.random.default_rng(0), 2000, 64)
  batch = SCHEME(tokens, masking.masking_rng(0, 0))
  counts = batch["weights"].sum(1)
  # Python's round (half to even), as BERT's create_pretraining_data; at least one per sequence.
  expected = [max(1, round(0.15 * n)) for n in lengths.tolist()]
  np.testing.assert_array_equal(counts, expected)
  assert np.array_equal(batch["targets"], tokens)  # The targets are the original tokens.
  # Over the lengths 1..62 the rounding evens out: the overall fraction is close to 15%.
  assert abs(counts.sum() / lengths.sum() - 0.15) < 0.005


def test_specials_are_never_chosen_nor_drawn_as_replacements():
  tokens, _ = _sequences(np.random.default_rng(1), 2000, 64)
  batch = SCHEME(tokens, masking.masking_rng(0, 1))
  special = np.isin(tokens, range(5))
  assert not batch["weights"][special].any()
  np.testing.assert_array_equal(batch["tokens"][special], tokens[special])
  changed = batch["tokens"] != tokens
  assert not changed[batch["weights"] == 0].any()  # Only chosen tokens change.
  replaced = changed & (batch["tokens"] != MASK)
  assert replaced.sum() > 500
  assert np.isin(batch["tokens"][replaced], REGULAR).all()


def test_chosen_tokens_are_80_percent_mask_10_random_10_unchanged():
  tokens, _ = _sequences(np.random.default_rng(2), 4000, 64)
  batch = SCHEME(tokens, masking.masking_rng(0, 2))
  chosen = batch["weights"] == 1
  n = int(chosen.sum())
  masked_BT, original_BT = batch["tokens"][chosen], tokens[chosen]
  # A random replacement equals the original with probability 1/R, and then looks unchanged.
  r = len(REGULAR)
  assert _within_binomial((masked_BT == MASK).sum(), n, 0.8)
  swapped = (masked_BT != MASK) & (masked_BT != original_BT)
  assert _within_binomial(swapped.sum(), n, 0.1 * (1 - 1 / r))
  assert _within_binomial((masked_BT == original_BT).sum(), n, 0.1 + 0.1 / r)
  # Replacements are uniform over the regular ids: a chi-square test (the originals are uniform,
  # so the visible replacements are too), df = R - 1, bound mean + Z standard deviations.
  counts = np.bincount(masked_BT[swapped] - len(TEXT_SPECIALS), minlength=r)
  expected = swapped.sum() / r
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < (r - 1) + Z * np.sqrt(2 * (r - 1))


def test_every_candidate_position_is_equally_likely_to_be_chosen():
  num, length = 4000, 40  # Full rows: 38 candidates, round(5.7) = 6 chosen.
  tokens = np.random.default_rng(3).choice(REGULAR, size=(num, length)).astype(np.int32)
  tokens[:, 0], tokens[:, -1] = CLS, SEP
  weights = SCHEME(tokens, masking.masking_rng(0, 3))["weights"]
  per_position = weights[:, 1:-1].sum(0)
  assert all(_within_binomial(c, num, 6 / 38) for c in per_position)


def test_mask_rate_and_missing_specials_are_checked():
  with pytest.raises(DataError, match="data.mask_rate must be"):
    data_lib.load_dataset("text", objective="masked_lm", mask_rate=1.5)
  with pytest.raises(DataError, match="data.mask_rate=0.2 is for data.objective=masked_lm"):
    data_lib.load_dataset("text", mask_rate=0.2)
  plain = data_lib.load_dataset("text", block_size=32)
  with pytest.raises(DataError, match=r"lacks \[PAD\], \[CLS\], \[SEP\], \[MASK\]"):
    masking.MaskedTextDataset(
      plain.train_tokens, plain.val_tokens, 32, plain.tokenizer, plain.source
    )


# ---------------------------------------------------------------- masks of (seed, batch index)


@pytest.fixture(scope="module")
def shakespeare():
  return data_lib.load_dataset("text", objective="masked_lm", block_size=32)


def _batches(data, count, *, seed=0, batch_size=8, **shard):
  it = iter(data.train_batches(batch_size=batch_size, seed=seed, num_threads=0, **shard))
  return [next(it) for _ in range(count)]


def test_rows_are_cls_window_sep_with_the_specials_first(shakespeare):
  tok = shakespeare.tokenizer
  assert tok.specials == TEXT_SPECIALS and tok.pad_id == 0
  assert shakespeare.model_hints == {"vocab_size": tok.vocab_size, "pad_id": 0}
  (batch,) = _batches(shakespeare, 1)
  assert (batch["targets"][:, 0] == tok.cls_id).all() and (
    batch["targets"][:, -1] == tok.sep_id
  ).all()
  # Between them, 30 consecutive characters of the training text.
  text = tok.decode(shakespeare.train_tokens)
  assert all(tok.decode(row[1:-1]) in text for row in batch["targets"])
  np.testing.assert_array_equal(batch["weights"].sum(1), 4)  # round(0.15 * 30) = round(4.5) = 4


def test_masks_are_a_function_of_seed_and_batch_index(shakespeare):
  first = _batches(shakespeare, 3)
  again = _batches(shakespeare, 3)
  for a, b in zip(first, again, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # Resuming from a saved iterator state reproduces batch 2 exactly.
  it = iter(shakespeare.train_batches(batch_size=8, seed=0, num_threads=0))
  next(it), next(it)
  state = it.get_state()
  resumed = iter(shakespeare.train_batches(batch_size=8, seed=0, num_threads=0))
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["weights"], first[2]["weights"])
  # Another batch or another seed: other masks.
  assert not np.array_equal(first[0]["weights"], first[1]["weights"])
  other_seed = _batches(shakespeare, 1, seed=1)[0]
  assert not np.array_equal(first[0]["weights"], other_seed["weights"])


def test_masks_of_two_shards_are_the_masks_of_one_process(shakespeare):
  whole = _batches(shakespeare, 2, batch_size=8)
  halves = [_batches(shakespeare, 2, batch_size=4, shard_index=s, shard_count=2) for s in (0, 1)]
  for step in range(2):
    for key in whole[step]:
      joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
      np.testing.assert_array_equal(joined, whole[step][key])


def test_evaluation_masks_are_fixed(shakespeare):
  first = list(shakespeare.eval_batches(batch_size=500))
  again = list(
    data_lib.load_dataset("text", objective="masked_lm", block_size=32).eval_batches(batch_size=500)
  )
  for a, b in zip(first, again, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  padding = ~first[-1]["mask"]
  assert padding.any() and not first[-1]["weights"][padding].any()


# ---------------------------------------------------------------- the task


def test_loss_is_the_cross_entropy_of_the_chosen_tokens():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, size=(3, 5)).astype(np.int32)
  weights = np.zeros((3, 5), np.float32)
  weights[0, 1] = weights[1, 3] = weights[1, 4] = weights[2, 0] = 1
  batch = {"tokens": targets, "targets": targets, "weights": weights}
  task = tasks.MaskedLanguageModelling()

  # By hand: -log softmax at the target, averaged over the four chosen positions.
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  expected = (nll * weights).sum() / weights.sum()
  correct = (logits.argmax(-1) == targets) * weights
  loss, metrics = task.loss(jnp.asarray(logits), jax.tree.map(jnp.asarray, batch))
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  assert float(metrics["train/accuracy"]) == pytest.approx(correct.sum() / 4)
  assert float(task.loss_weight(batch)) == 4

  class FixedLogits:
    def apply(self, variables, tokens, train):
      return jnp.asarray(logits)

  # Evaluation leaves out the padding rows (mask False) even where they carry weights.
  sums = task.eval_sums(FixedLogits(), {}, {**batch, "mask": np.array([True, True, False])})
  assert float(sums["count"]) == 3
  assert float(sums["loss_sum"]) == pytest.approx((nll * weights)[:2].sum(), rel=1e-6)


def test_the_data_choose_the_task_and_the_models_pad_id(shakespeare):
  assert isinstance(tasks.make_task(shakespeare), tasks.MaskedLanguageModelling)
  config = {"name": "bert_mlm", "num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
  model = models.build_model(config, shakespeare.model_hints)
  assert model.pad_id == shakespeare.tokenizer.pad_id
  assert model.vocab_size == shakespeare.tokenizer.vocab_size
  with pytest.raises(ConfigError, match="model.pad_id=3 contradicts the data"):
    models.build_model({**config, "pad_id": 3}, shakespeare.model_hints)


# ---------------------------------------------------------------- a tiny BERT on Shakespeare

TINY_BERT = [
  "model.num_layers=2",
  "model.num_heads=2",
  "model.hidden_dim=32",
  "model.mlp_dim=64",
  "model.max_length=32",
  "model.dropout_rate=0.1",
  "data.objective=masked_lm",
  "data.block_size=32",
  "data.val_fraction=0.02",
  "data.eval_batch_size=256",
  "train.batch_size=16",
  "train.log_every_steps=5",
  "train.eval_every_steps=1000",
  "train.checkpoint_every_steps=15",
  "optimizer.name=adamw",
  "optimizer.learning_rate=3e-3",
  "optimizer.warmup_steps=5",
  # A fixed schedule length, so that a run stopped at 15 of 30 steps and resumed follows the same
  # learning rates as one run straight to 30.
  "optimizer.decay_steps=30",
]


def _config(*overrides):
  config = config_lib.base_config()
  config.model = {"name": "bert_mlm"}
  config.data.name = "text"
  data_lib.complete_config(config.data)
  config_lib.apply_overrides(config, [*TINY_BERT, *overrides])
  return config


def _train_metrics(workdir):
  return {
    r["step"]: {k: v for k, v in r.items() if not k.startswith("perf/")}
    for r in metrics_lib.read_metrics(workdir)
    if "train/loss" in r
  }


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("bert_mlm") / "run"
  return workdir, trainer.train(_config("train.num_steps=30"), workdir, show_progress=False)


def test_tiny_bert_learns_masked_characters(bert_run, shakespeare):
  workdir, result = bert_run
  losses = [m["train/loss"] for m in _train_metrics(workdir).values()]
  vocab_size = shakespeare.tokenizer.vocab_size
  # Untrained, every token is about equally likely: loss ln(V); it soon learns the frequencies.
  assert losses[0] == pytest.approx(np.log(vocab_size), rel=0.1)
  assert losses[-1] < losses[0] - 0.5
  m = result.eval_metrics
  # Every validation window of 30 characters has round(4.5) = 4 chosen.
  windows = m["eval/num_examples"]
  assert windows == len(data_lib.load_dataset("text", val_fraction=0.02).val_tokens) // 30
  assert m["eval/num_tokens"] == 4 * windows
  assert m["eval/loss"] < np.log(vocab_size) - 0.5
  assert result.summary.startswith("masked-token loss")


def test_tiny_bert_resumes_bit_exact(bert_run, tmp_path):
  workdir, result = bert_run
  resumed = tmp_path / "resumed"
  trainer.train(_config("train.num_steps=15"), resumed, show_progress=False)
  again = trainer.train(_config("train.num_steps=30"), resumed, show_progress=False)
  assert _train_metrics(resumed) == _train_metrics(workdir)
  assert again.eval_metrics == result.eval_metrics
