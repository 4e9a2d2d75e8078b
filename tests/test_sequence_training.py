"""The training loop on sequence tasks: language models on the shipped Shakespeare corpus (GPT and
LSTM), sequence-to-sequence on generated data, review classification; resume to the bit, the saved
vocabulary, and sampling with `jaxdl generate`.
"""

import json
import shutil

import jax
import numpy as np
import pytest

from jaxdl import cli, models, sampling, trainer
from jaxdl import config as config_lib
from jaxdl import metrics as metrics_lib
from jaxdl import workdir as workdir_lib
from jaxdl.checkpoint import Checkpointer
from jaxdl.errors import CheckpointError, ConfigError, UserError
from tests.conftest import REPO, SHARED_DATA, needs_data

EXPERIMENTS = REPO / "experiments"
TINY_GPT = [
  "model.num_layers=2",
  "model.num_heads=2",
  "model.embed_dim=32",
  "model.block_size=32",
  "data.block_size=32",
  "train.batch_size=8",
  "data.eval_batch_size=64",
  "train.log_every_steps=10",
  "train.eval_every_steps=1000",
  "train.checkpoint_every_steps=20",
  "optimizer.warmup_steps=5",
  "optimizer.learning_rate=3e-3",
  # A fixed schedule length, so that a run stopped at 20 of 40 steps and resumed follows
  # the same learning rates as one run straight to 40.
  "optimizer.decay_steps=40",
]
TINY_LSTM = [
  "model.embed_dim=16",
  "model.features=32",
  "data.block_size=32",
  "train.batch_size=8",
  "data.eval_batch_size=64",
  "train.log_every_steps=10",
  "train.eval_every_steps=1000",
  "train.checkpoint_every_steps=20",
  "optimizer.warmup_steps=5",
  "optimizer.learning_rate=3e-3",
]


def _config(experiment, *overrides):
  config = config_lib.load_experiment(EXPERIMENTS / experiment)
  config_lib.apply_overrides(config, list(overrides))
  return config


def _train_metrics(workdir):
  """{step: train metrics}, timings left out."""
  return {
    r["step"]: {k: v for k, v in r.items() if not k.startswith("perf/")}
    for r in metrics_lib.read_metrics(workdir)
    if "train/loss" in r
  }


def _saved_params(workdir):
  checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
  try:
    return checkpointer.restore_as_saved(checkpointer.latest_step())["state"]["params"]
  finally:
    checkpointer.close()


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("gpt") / "run"
  config = _config("shakespeare_char_gpt.py:cpu", *TINY_GPT, "train.num_steps=40")
  return workdir, trainer.train(config, workdir, show_progress=False)


def test_gpt_learns_characters_and_saves_its_vocabulary(gpt_run):
  workdir, result = gpt_run
  vocab = json.loads((workdir / "tokenizer.json").read_text())
  assert vocab  # The vocabulary is in the workdir, for evaluation and sampling.
  losses = [r["train/loss"] for r in _train_metrics(workdir).values()]
  vocab_size = trainer.load_data(
    config_lib.from_json((workdir / "config.json").read_text())
  ).model_hints["vocab_size"]
  # Untrained, every character is about equally likely: loss ln(V). Forty steps learn the
  # character frequencies at least.
  assert losses[0] == pytest.approx(np.log(vocab_size), rel=0.25)
  assert losses[-1] < losses[0] - 0.5
  m = result.eval_metrics
  assert m["eval/perplexity"] == pytest.approx(np.exp(m["eval/loss"]), rel=1e-6)
  assert m["eval/num_tokens"] == m["eval/num_examples"] * 32
  first = metrics_lib.read_metrics(workdir)[0]
  assert first["perf/tokens_per_sec"] == pytest.approx(first["perf/examples_per_sec"] * 32)


def test_eval_command_reproduces_the_final_evaluation(gpt_run, capsys):
  workdir, result = gpt_run
  step, metrics, summary = trainer.evaluate_workdir(workdir)
  assert step == 40 and metrics == result.eval_metrics
  assert cli.main(["eval", str(workdir)]) == 0
  assert capsys.readouterr().out.strip() == f"step 40: {summary}"
  assert summary.startswith("validation loss")


def test_eval_takes_run_keys_and_refuses_recipe_keys(gpt_run):
  workdir, result = gpt_run
  step, metrics, _ = trainer.evaluate_workdir(workdir, None, ["data.eval_batch_size=32"])
  assert step == 40 and metrics["eval/loss"] == pytest.approx(result.eval_metrics["eval/loss"])
  with pytest.raises(ConfigError, match="model.num_layers belong to the recipe"):
    trainer.evaluate_workdir(workdir, None, ["model.num_layers=3"])


def test_gpt_resume_is_bit_exact(gpt_run, tmp_path):
  """Also whatever the steps per call (runtime.steps_per_call): the reference run takes the CPU
  default (calls of up to 16 steps), this one 1 step a call, then 3."""
  workdir, _ = gpt_run
  resumed = tmp_path / "resumed"
  trainer.train(
    _config(
      "shakespeare_char_gpt.py:cpu", *TINY_GPT, "train.num_steps=20", "runtime.steps_per_call=1"
    ),
    resumed,
    show_progress=False,
  )
  trainer.train(
    _config(
      "shakespeare_char_gpt.py:cpu", *TINY_GPT, "train.num_steps=40", "runtime.steps_per_call=3"
    ),
    resumed,
    show_progress=False,
  )
  assert _train_metrics(resumed) == _train_metrics(workdir)


def test_scanned_rematted_gpt_resumes_bit_exact_and_may_change_its_remat(tmp_path):
  """model.scan_layers and model.remat through the trainer. Remat is a runtime choice: a resumed
  run may take another policy, which XLA fuses otherwise, so it follows to float rounding."""
  scan = ["model.scan_layers=true", "model.remat=full", "runtime.steps_per_call=1"]
  straight, resumed, switched = tmp_path / "straight", tmp_path / "resumed", tmp_path / "switched"
  run = lambda workdir, *keys: trainer.train(
    _config("shakespeare_char_gpt.py:cpu", *TINY_GPT, *scan, *keys), workdir, show_progress=False
  )
  run(straight, "train.num_steps=40")
  run(resumed, "train.num_steps=20")
  shutil.copytree(resumed, switched)
  run(resumed, "train.num_steps=40")
  assert _train_metrics(resumed) == _train_metrics(straight)
  run(switched, "train.num_steps=40", "model.remat=dots_saveable")
  for step, metrics in _train_metrics(switched).items():
    assert metrics == pytest.approx(_train_metrics(straight)[step], rel=1e-5)
  saved = json.loads((straight / "config.json").read_text())["model"]
  assert saved["scan_layers"] is True and saved["remat"] == "full"


def test_an_unrolled_checkpoint_initialises_a_scanned_gpt(gpt_run, tmp_path):
  """init.checkpoint converts block_0, block_1, ... into the scanned stack's layers/: with a
  learning rate of 0, the scanned model's first evaluation is the unrolled run's last."""
  workdir, result = gpt_run
  config = _config(
    "shakespeare_char_gpt.py:cpu",
    *TINY_GPT,
    "train.num_steps=1",
    "train.eval_every_steps=1",
    "model.scan_layers=true",
    "optimizer.learning_rate=0.0",
    f"init.checkpoint={workdir}",
  )
  scanned = trainer.train(config, tmp_path / "scanned", show_progress=False)
  assert scanned.eval_metrics["eval/loss"] == pytest.approx(result.eval_metrics["eval/loss"], 1e-5)
  assert scanned.eval_metrics["eval/loss"] < np.log(65) - 0.5  # Trained weights, not fresh ones.


def test_generate_is_deterministic_for_a_seed(gpt_run):
  workdir, _ = gpt_run
  sample = lambda seed: sampling.generate_from_workdir(
    workdir, "ROMEO:", max_new_tokens=40, temperature=1.0, top_k=10, seed=seed
  )
  first = sample(0)
  assert first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 40
  assert sample(0) == first
  assert sample(1) != first
  # Longer than the 32-token context: the sampler re-reads the newest half and goes on.
  long = sampling.generate_from_workdir(workdir, "\n", max_new_tokens=80, temperature=0.0)
  assert len(long) == 81


def test_generate_rejects_characters_outside_the_vocabulary(gpt_run):
  workdir, _ = gpt_run
  with pytest.raises(UserError, match="€"):
    sampling.generate_from_workdir(workdir, "price: 5€", max_new_tokens=5)


def test_generate_command(gpt_run, capsys):
  """`jaxdl generate` at temperature 0 prints the prompt and the greedy continuation computed here
  by hand (the saved parameters, the workdir's vocabulary, argmax of the full forward pass);
  top-k 1 is greedy whatever the seed; a seed fixes a sample and another seed changes it."""
  workdir, _ = gpt_run
  num_new = 24  # With the prompt, 28 tokens: within the 32-token context.

  def generate(*args):
    argv = ["generate", str(workdir), "--prompt", "KING", "--max-new-tokens", str(num_new)]
    assert cli.main([*argv, *args]) == 0
    return capsys.readouterr().out

  tokenizer = workdir_lib.load_tokenizer(workdir)
  config = workdir_lib.load_config(workdir)
  model = models.build_model(config.model, {"vocab_size": tokenizer.vocab_size})
  params = _saved_params(workdir)
  forward = jax.jit(lambda params, tokens_1T: model.apply({"params": params}, tokens_1T))
  ids = list(tokenizer.encode("KING"))
  for _ in range(num_new):
    # One shape, so one compile: the model is causal, and the padding after the text is unread.
    tokens_1T = np.zeros((1, config.model.block_size), np.int32)
    tokens_1T[0, : len(ids)] = ids
    ids.append(int(np.argmax(forward(params, tokens_1T)[0, len(ids) - 1])))
  greedy = generate("--temperature", "0")
  assert greedy == tokenizer.decode(np.asarray(ids)) + "\n"
  assert greedy.startswith("KING")
  assert generate("--top-k", "1", "--seed", "5") == greedy
  sampled = generate("--seed", "3")
  assert sampled.startswith("KING") and len(sampled) == len("KING") + num_new + 1
  assert generate("--seed", "3") == sampled
  assert generate("--seed", "4") != sampled


def test_greedy_sampling_equals_argmax_of_full_forward(gpt_run):
  """Greedy decoding with the KV cache picks, at every step, the argmax of a full forward pass
  over everything so far."""
  workdir, _ = gpt_run
  config = config_lib.from_json((workdir / "config.json").read_text())
  data = trainer.load_data(config)
  model = models.build_model(config.model, data.model_hints)
  params = _saved_params(workdir)
  prompt = data.tokenizer.encode("First Citizen:")
  new = sampling.generate(model, params, prompt, max_new_tokens=10, temperature=0.0)
  # One causal forward pass over prompt + generated text scores every prefix at once: position t
  # sees tokens 0..t only, exactly what the cached decoder saw when it picked token t + 1.
  tokens = np.asarray([list(prompt) + [int(t) for t in new]], np.int32)
  logits = jax.jit(model.apply)({"params": params}, tokens)
  for i, token in enumerate(new):
    assert int(np.argmax(logits[0, len(prompt) - 1 + i])) == int(token)


def test_lstm_language_model_trains_and_samples_with_its_carry(tmp_path):
  workdir = tmp_path / "lstm"
  config = _config("shakespeare_char_lstm.py", *TINY_LSTM, "train.num_steps=30")
  trainer.train(config, workdir, show_progress=False)
  losses = [r["train/loss"] for r in _train_metrics(workdir).values()]
  assert losses[-1] < losses[0]
  text = sampling.generate_from_workdir(workdir, "To be", max_new_tokens=25, seed=7)
  assert text.startswith("To be") and len(text) == 30
  assert sampling.generate_from_workdir(workdir, "To be", max_new_tokens=25, seed=7) == text
  # One step per call computes the run that calls of up to 16 steps (the CPU default) computed.
  config.runtime.steps_per_call = 1
  trainer.train(config, tmp_path / "one_step_per_call", show_progress=False)
  assert _train_metrics(tmp_path / "one_step_per_call") == _train_metrics(workdir)


def test_vocabulary_change_is_refused_on_resume(gpt_run, tmp_path):
  workdir, _ = gpt_run
  other_text = tmp_path / "other.txt"
  other_text.write_text("a small text with another alphabet " * 400)
  config = _config(
    "shakespeare_char_gpt.py:cpu", *TINY_GPT, "train.num_steps=60", f"data.dir={other_text}"
  )
  with pytest.raises(CheckpointError):
    trainer.train(config, workdir, show_progress=False)


def test_config_contradicting_the_data_is_refused(tmp_path):
  config = _config("shakespeare_char_gpt.py:cpu", *TINY_GPT, "train.num_steps=2")
  config.model.vocab_size = 50
  with pytest.raises(ConfigError, match="vocab_size"):
    trainer.train(config, tmp_path / "w", show_progress=False)
  assert not (tmp_path / "w").exists()


def test_context_longer_than_the_model_is_a_config_error(tmp_path):
  config = _config("shakespeare_char_gpt.py:cpu", *TINY_GPT, "data.block_size=64")
  with pytest.raises(ConfigError, match="block_size"):
    trainer.train(config, tmp_path / "w", show_progress=False)


def test_unknown_data_option_names_the_options():
  config = config_lib.load_experiment(EXPERIMENTS / "shakespeare_char_gpt.py")
  with pytest.raises(ConfigError, match="Did you mean data.block_size"):
    config.data.blok_size = 3
    trainer.train(config, "/nonexistent/never/written", show_progress=False)


def test_seq2seq_reports_exact_match_of_greedy_decoding(tmp_path):
  """The reported exact match is that of a greedy decoding done here by hand: from [BOS], the
  teacher-forced model is run on the tokens so far and its argmax appended, until EOS."""
  config = _config(
    "reverse_transformer.py",
    # Sequences of 1 to 4 symbols, which 100 steps at a high rate half learn: an exact match
    # strictly between 0 and 1 tells a right count from one stuck at either end.
    "data.min_length=1",
    "data.max_length=4",
    "train.num_steps=100",
    "optimizer.learning_rate=1e-2",
    "model.dropout_rate=0.0",
    "data.num_train=2000",
    "data.num_test=100",
    "model.num_layers=1",
    "model.embed_dim=32",
    "model.mlp_dim=64",
    "data.eval_batch_size=50",
    "train.log_every_steps=50",
    "optimizer.warmup_steps=5",
  )
  result = trainer.train(config, tmp_path / "s2s", show_progress=False)
  data = trainer.load_data(config)
  model = models.build_model(config.model, data.model_hints)
  (batch,) = data.eval_batches(batch_size=100)
  src_BS, targets_BT = batch["src"], batch["tgt"][:, 1:]
  num, length = targets_BT.shape
  forward = jax.jit(lambda params, tgt_in_BT: model.apply({"params": params}, src_BS, tgt_in_BT))
  params = _saved_params(tmp_path / "s2s")
  # Padded to the full length in one shape (one compile): the decoder is causal, so position t
  # reads tokens 0..t only.
  tgt_in_BT = np.full((num, length), data.pad_id, np.int32)
  tgt_in_BT[:, 0] = data.bos_id
  decoded_BT = np.full((num, length), data.pad_id, np.int32)
  done_B = np.zeros(num, bool)
  for t in range(length):
    next_B = np.argmax(np.asarray(forward(params, tgt_in_BT))[:, t], axis=-1)
    decoded_BT[:, t] = np.where(done_B, data.pad_id, next_B)  # After EOS: padding, as targets.
    done_B |= next_B == data.eos_id
    if t + 1 < length:
      tgt_in_BT[:, t + 1] = next_B
  exact = np.all(decoded_BT == targets_BT, axis=1)
  m = result.eval_metrics
  assert m["eval/num_examples"] == 100
  assert m["eval/exact_match"] == exact.sum() / 100
  assert 0 < exact.sum() < 100
  assert m["eval/exact_match"] <= m["eval/accuracy"]
  assert "exact match" in result.summary


@pytest.mark.slow  # BERT on real reviews, a minute on 2 cores; CI runs it.
@needs_data(
  (SHARED_DATA / "rotten_tomatoes").is_dir(),
  "the review corpus lives in ../shared/data (jaxdl dev machines only)",
)
def test_bert_classifies_reviews(tmp_path):
  """The reported accuracy is that of the saved parameters, evaluated here by hand (model.apply
  and argmax over the whole test split), and well above always guessing the commoner label."""
  config = _config(
    "reviews_bert.py",
    f"data.dir={SHARED_DATA / 'rotten_tomatoes'}",
    # A small BERT at a high rate gets past always guessing "fresh" (58%) from about step 50:
    # 70-74% at step 100 for seeds 0 to 2, 75.5% at 150; the recipe's model takes hundreds of steps.
    "model.num_layers=1",
    "model.hidden_dim=64",
    "model.mlp_dim=128",
    "model.num_heads=2",
    "model.max_length=32",
    "data.max_length=32",
    "optimizer.learning_rate=3e-3",
    "optimizer.warmup_steps=5",
    "train.num_steps=150",
    "train.log_every_steps=50",
  )
  result = trainer.train(config, tmp_path / "bert", show_progress=False)
  data = trainer.load_data(config)
  model = models.build_model(config.model, data.model_hints)
  (batch,) = data.eval_batches(batch_size=data.source["num_test"])
  logits_BK = jax.jit(model.apply)({"params": _saved_params(tmp_path / "bert")}, batch["tokens"])
  correct = int(np.sum(np.argmax(logits_BK, -1) == batch["label"]))
  num = len(batch["label"])
  m = result.eval_metrics
  assert m["eval/num_examples"] == num > 1000
  assert m["eval/accuracy"] == pytest.approx(correct / num, abs=0.5 / num)  # The same count.
  majority = max(np.mean(batch["label"]), 1 - np.mean(batch["label"]))
  assert m["eval/accuracy"] > majority + 0.08


@pytest.mark.slow  # A sweep of two GPTs; CI runs it.
def test_generate_from_a_sweep_member(tmp_path):
  """A sweep's checkpoint holds every member; `--member` picks whose parameters sample."""
  workdir = tmp_path / "sweep"
  trainer.train(
    _config("shakespeare_char_gpt.py:cpu", *TINY_GPT, "train.num_steps=3", "sweep.seeds=2"),
    workdir,
    show_progress=False,
  )
  sample = lambda member: sampling.generate_from_workdir(
    workdir, "ROMEO:", max_new_tokens=20, temperature=0.0, member=member
  )
  assert sample(0) != sample(1)  # Different seeds, different weights.
  with pytest.raises(UserError, match="--member 2: the sweep .* has members 0 to 1"):
    sample(2)
