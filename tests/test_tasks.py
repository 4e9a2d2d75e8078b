"""Tasks: which batch entries reach the model, and losses and metrics against numpy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.train import tasks


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_language_modelling_predicts_the_next_token():
  tokens = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], np.int32)
  task = tasks.LanguageModelling()
  (inputs,) = task.model_inputs({"tokens": tokens})
  np.testing.assert_array_equal(inputs, tokens[:, :-1])
  logits = np.random.default_rng(0).normal(size=(2, 4, 10)).astype(np.float32)
  loss, metrics = task.loss(jnp.asarray(logits), {"tokens": tokens})
  targets = tokens[:, 1:]
  logp = _log_softmax(logits.astype(np.float64))
  expected = -np.take_along_axis(logp, targets[..., None], -1).mean()
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(metrics["train/accuracy"]) == pytest.approx(np.mean(logits.argmax(-1) == targets))


class _Echo:
  """A stand-in model whose logits are fixed; `apply` ignores its variables."""

  def __init__(self, logits):
    self.logits = logits

  def apply(self, variables, *inputs, train=False, method=None, **kwargs):
    del variables, inputs, train, method, kwargs
    return self.logits


def test_language_modelling_eval_ignores_padded_rows():
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, 7, size=(3, 6)).astype(np.int32)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
  task = tasks.LanguageModelling()
  sums = task.eval_sums(
    _Echo(jnp.asarray(logits)), {}, {"tokens": tokens, "mask": np.array([True, True, False])}
  )
  logp = _log_softmax(logits[:2].astype(np.float64))
  nll = -np.take_along_axis(logp, tokens[:2, 1:, None], -1)
  metrics = task.eval_metrics(jax.device_get(sums))
  assert metrics["eval/num_tokens"] == 10 and metrics["eval/num_examples"] == 2
  assert metrics["eval/loss"] == pytest.approx(nll.mean(), rel=1e-5)
  assert metrics["eval/perplexity"] == pytest.approx(np.exp(nll.mean()), rel=1e-5)


def test_seq2seq_loss_skips_padding_and_feeds_the_shifted_target():
  src = np.array([[5, 6, 2, 0]], np.int32)
  tgt = np.array([[1, 6, 5, 2, 0, 0]], np.int32)  # bos, answer, eos, padding
  task = tasks.SequenceToSequence(bos_id=1, eos_id=2, pad_id=0)
  model_src, model_tgt = task.model_inputs({"src": src, "tgt": tgt})
  np.testing.assert_array_equal(model_src, src)
  np.testing.assert_array_equal(model_tgt, tgt[:, :-1])
  logits = np.random.default_rng(2).normal(size=(1, 5, 8)).astype(np.float32)
  loss, _ = task.loss(jnp.asarray(logits), {"src": src, "tgt": tgt})
  targets = tgt[0, 1:]
  real = targets != 0  # The three answer-and-eos positions; the two pads are not scored.
  nll = -np.take_along_axis(_log_softmax(logits[0].astype(np.float64)), targets[:, None], -1)[:, 0]
  assert float(loss) == pytest.approx(nll[real].mean(), rel=1e-5)


def test_classification_reads_the_datasets_input_key():
  task = tasks.Classification(input_key="tokens")
  (inputs,) = task.model_inputs({"tokens": np.ones((2, 3)), "label": np.zeros(2)})
  assert inputs.shape == (2, 3)


def test_unknown_task_is_refused():
  class Weird:
    task = "regression"

  with pytest.raises(ValueError, match="regression"):
    tasks.make_task(Weird())
