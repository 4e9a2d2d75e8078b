"""Tasks: how a batch becomes the model's inputs, a loss, and metrics.

The train and eval steps (jaxdl.train.step) are the same for every model; what differs between
image classification, language modelling (next-token or masked) and sequence-to-sequence learning
is only which batch entries the model reads, what it predicts, and what is worth measuring. A
dataset names its task (`Dataset.task`) and `make_task` builds it. A task is a frozen dataclass
(hashable, so jit can close over it) with four pure methods plus host-side reporting.

Losses and softmaxes are float32 whatever the model's compute dtype.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

Batch = dict[str, jax.Array]


def cross_entropy(
  logits_BK: jax.Array, labels_B: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example softmax cross-entropy (any leading shape), in float32.

  With `label_smoothing` = a, the target is (1 - a) * one_hot + a / K (Szegedy et al. 2016).
  """
  logits_BK = logits_BK.astype(jnp.float32)
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BK, labels_B)
  targets_BK = optax.smooth_labels(jax.nn.one_hot(labels_B, logits_BK.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits_BK, targets_BK)


def token_metrics(sums: dict[str, Any]) -> dict[str, float]:
  """Per-token evaluation metrics from the sums of an evaluation: loss_sum, correct and count over
  the scored tokens, examples over the sequences."""
  count = float(sums["count"])
  loss = float(sums["loss_sum"]) / count
  return {
    "eval/loss": loss,
    "eval/perplexity": math.exp(min(loss, 700.0)),
    "eval/accuracy": float(sums["correct"]) / count,
    "eval/num_tokens": count,
    "eval/num_examples": float(sums["examples"]),
  }


@dataclasses.dataclass(frozen=True)
class Classification:
  """One label per example: `model(batch[input_key]) -> logits [B, K]`, scored on batch["label"]."""

  input_key: str = "image"
  label_smoothing: float = 0.0  # Training loss only; evaluation reports the plain cross-entropy.
  name: str = "classify"

  def model_inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
    return (batch[self.input_key],)

  def loss(self, outputs_BK: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    loss = cross_entropy(outputs_BK, batch["label"], self.label_smoothing).mean()
    accuracy = jnp.mean(jnp.argmax(outputs_BK, -1) == batch["label"])
    return loss, {"train/loss": loss, "train/accuracy": accuracy}

  def eval_sums(self, model, variables, batch: Batch) -> dict[str, jax.Array]:
    logits_BK = model.apply(variables, *self.model_inputs(batch), train=False)
    mask_B = batch["mask"].astype(jnp.float32)
    correct_B = (jnp.argmax(logits_BK, -1) == batch["label"]).astype(jnp.float32)
    return {
      "loss_sum": jnp.sum(cross_entropy(logits_BK, batch["label"]) * mask_B),
      "correct": jnp.sum(correct_B * mask_B),
      "count": jnp.sum(mask_B),
    }

  def eval_metrics(self, sums: dict[str, Any]) -> dict[str, float]:
    count = float(sums["count"])
    return {
      "eval/loss": float(sums["loss_sum"]) / count,
      "eval/accuracy": float(sums["correct"]) / count,
      "eval/num_examples": count,
    }

  def summary(self, m: dict[str, float]) -> str:
    n = int(m["eval/num_examples"])
    return (
      f"test accuracy {m['eval/accuracy']:.4f} ({int(round(m['eval/accuracy'] * n))}/{n}), "
      f"test loss {m['eval/loss']:.4f}"
    )

  def tokens_per_example(self, example_batch: dict) -> int | None:
    del example_batch
    return None


@dataclasses.dataclass(frozen=True)
class LanguageModelling:
  """Next-token prediction: `model(tokens[:, :-1]) -> logits [B, T, V]` predicts tokens[:, 1:]."""

  name: str = "lm"

  def model_inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
    return (batch["tokens"][:, :-1],)

  def loss(self, outputs_BTV: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    targets_BT = batch["tokens"][:, 1:]
    loss = cross_entropy(outputs_BTV, targets_BT).mean()
    accuracy = jnp.mean(jnp.argmax(outputs_BTV, -1) == targets_BT)
    return loss, {"train/loss": loss, "train/accuracy": accuracy}

  def eval_sums(self, model, variables, batch: Batch) -> dict[str, jax.Array]:
    logits_BTV = model.apply(variables, *self.model_inputs(batch), train=False)
    targets_BT = batch["tokens"][:, 1:]
    mask_BT = jnp.broadcast_to(batch["mask"][:, None], targets_BT.shape).astype(jnp.float32)
    correct_BT = (jnp.argmax(logits_BTV, -1) == targets_BT).astype(jnp.float32)
    return {
      "loss_sum": jnp.sum(cross_entropy(logits_BTV, targets_BT) * mask_BT),
      "correct": jnp.sum(correct_BT * mask_BT),
      "count": jnp.sum(mask_BT),
      "examples": jnp.sum(batch["mask"].astype(jnp.float32)),
    }

  def eval_metrics(self, sums: dict[str, Any]) -> dict[str, float]:
    return token_metrics(sums)

  def summary(self, m: dict[str, float]) -> str:
    return (
      f"validation loss {m['eval/loss']:.4f} (perplexity {m['eval/perplexity']:.2f}), "
      f"next-token accuracy {m['eval/accuracy']:.4f}"
    )

  def tokens_per_example(self, example_batch: dict) -> int | None:
    return example_batch["tokens"].shape[1] - 1


@dataclasses.dataclass(frozen=True)
class MaskedLanguageModelling:
  """BERT's masked LM: `model(tokens) -> logits [B, T, V]` predicts batch["targets"] where
  batch["weights"] is 1 (the chosen positions; jaxdl.data.masking); loss and accuracy are means
  over those positions."""

  name: str = "masked_lm"

  def model_inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
    return (batch["tokens"],)

  def _token_loss(self, logits_BTV, batch):
    targets_BT = batch["targets"]
    correct_BT = (jnp.argmax(logits_BTV, -1) == targets_BT).astype(jnp.float32)
    return cross_entropy(logits_BTV, targets_BT), correct_BT, batch["weights"].astype(jnp.float32)

  def loss(self, outputs_BTV: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    loss_BT, correct_BT, weights_BT = self._token_loss(outputs_BTV, batch)
    num_chosen = jnp.maximum(weights_BT.sum(), 1.0)
    loss = jnp.sum(loss_BT * weights_BT) / num_chosen
    return loss, {
      "train/loss": loss,
      "train/accuracy": jnp.sum(correct_BT * weights_BT) / num_chosen,
    }

  def loss_weight(self, batch: Batch) -> jax.Array:
    """What the loss is a mean over: the batch's chosen tokens (their number may differ between
    micro-batches when sequences hold padding)."""
    return jnp.sum(batch["weights"].astype(jnp.float32))

  def eval_sums(self, model, variables, batch: Batch) -> dict[str, jax.Array]:
    logits_BTV = model.apply(variables, *self.model_inputs(batch), train=False)
    loss_BT, correct_BT, weights_BT = self._token_loss(logits_BTV, batch)
    mask_B = batch["mask"].astype(jnp.float32)
    weights_BT = weights_BT * mask_B[:, None]
    return {
      "loss_sum": jnp.sum(loss_BT * weights_BT),
      "correct": jnp.sum(correct_BT * weights_BT),
      "count": jnp.sum(weights_BT),
      "examples": jnp.sum(mask_B),
    }

  def eval_metrics(self, sums: dict[str, Any]) -> dict[str, float]:
    return token_metrics(sums)

  def summary(self, m: dict[str, float]) -> str:
    return (
      f"masked-token loss {m['eval/loss']:.4f} (perplexity {m['eval/perplexity']:.2f}), "
      f"masked-token accuracy {m['eval/accuracy']:.4f} over {int(m['eval/num_tokens'])} tokens"
    )

  def tokens_per_example(self, example_batch: dict) -> int | None:
    return example_batch["tokens"].shape[1]


@dataclasses.dataclass(frozen=True)
class SequenceToSequence:
  """`model(src, tgt[:, :-1]) -> logits [B, T, V]` predicts tgt[:, 1:]; padding (pad_id) is not
  scored. Evaluation also decodes greedily from the source alone and counts exact matches, the
  measure that matters for tasks like reversing or sorting a sequence."""

  bos_id: int = 1
  eos_id: int = 2
  pad_id: int = 0
  label_smoothing: float = 0.0  # Training loss only, as in "Attention is all you need" (0.1).
  name: str = "seq2seq"

  def model_inputs(self, batch: Batch) -> tuple[jax.Array, ...]:
    return (batch["src"], batch["tgt"][:, :-1])

  def _token_loss(self, logits_BTV, batch, label_smoothing=0.0):
    targets_BT = batch["tgt"][:, 1:]
    weights_BT = (targets_BT != self.pad_id).astype(jnp.float32)
    correct_BT = (jnp.argmax(logits_BTV, -1) == targets_BT).astype(jnp.float32)
    return cross_entropy(logits_BTV, targets_BT, label_smoothing), correct_BT, weights_BT

  def loss(self, outputs_BTV: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    loss_BT, correct_BT, weights_BT = self._token_loss(outputs_BTV, batch, self.label_smoothing)
    num_tokens = jnp.maximum(weights_BT.sum(), 1.0)
    loss = jnp.sum(loss_BT * weights_BT) / num_tokens
    return loss, {
      "train/loss": loss,
      "train/accuracy": jnp.sum(correct_BT * weights_BT) / num_tokens,
    }

  def loss_weight(self, batch: Batch) -> jax.Array:
    """What the loss is a mean over: the batch's scored (non-padding) target tokens. Gradient
    accumulation and pmap weight each part's mean by it, to get the whole batch's mean."""
    return jnp.sum(batch["tgt"][:, 1:] != self.pad_id).astype(jnp.float32)

  def eval_sums(self, model, variables, batch: Batch) -> dict[str, jax.Array]:
    logits_BTV = model.apply(variables, *self.model_inputs(batch), train=False)
    loss_BT, correct_BT, weights_BT = self._token_loss(logits_BTV, batch)
    mask_B = batch["mask"].astype(jnp.float32)
    weights_BT = weights_BT * mask_B[:, None]
    # Exact match: greedy decoding from the source alone must reproduce the whole target.
    targets_BT = batch["tgt"][:, 1:]
    decoded_BT = model.apply(
      variables,
      batch["src"],
      max_length=targets_BT.shape[1],
      bos_id=self.bos_id,
      eos_id=self.eos_id,
      method="generate",
    )
    exact_B = jnp.all(decoded_BT == targets_BT, axis=-1).astype(jnp.float32)
    return {
      "loss_sum": jnp.sum(loss_BT * weights_BT),
      "correct": jnp.sum(correct_BT * weights_BT),
      "count": jnp.sum(weights_BT),
      "exact": jnp.sum(exact_B * mask_B),
      "examples": jnp.sum(mask_B),
    }

  def eval_metrics(self, sums: dict[str, Any]) -> dict[str, float]:
    count, examples = float(sums["count"]), float(sums["examples"])
    return {
      "eval/loss": float(sums["loss_sum"]) / count,
      "eval/accuracy": float(sums["correct"]) / count,
      "eval/exact_match": float(sums["exact"]) / examples,
      "eval/num_examples": examples,
    }

  def summary(self, m: dict[str, float]) -> str:
    return (
      f"exact match {m['eval/exact_match']:.4f} (greedy decoding), token accuracy "
      f"{m['eval/accuracy']:.4f}, loss {m['eval/loss']:.4f}"
    )

  def tokens_per_example(self, example_batch: dict) -> int | None:
    return example_batch["tgt"].shape[1] - 1


TASKS = {
  "classify": Classification,
  "lm": LanguageModelling,
  "masked_lm": MaskedLanguageModelling,
  "seq2seq": SequenceToSequence,
}


def make_task(dataset, *, label_smoothing: float = 0.0) -> Any:
  """The task a dataset asks for, configured from its attributes (input key, special ids)."""
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label smoothing must be in [0, 1), got {label_smoothing}.")
  if dataset.task == "classify":
    return Classification(input_key=dataset.input_key, label_smoothing=label_smoothing)
  if dataset.task in ("lm", "masked_lm"):
    if label_smoothing:
      raise ValueError(
        "label smoothing is for classification and seq2seq, not language models "
        "(it would blur the token distribution the loss measures)."
      )
    return TASKS[dataset.task]()
  if dataset.task == "seq2seq":
    return SequenceToSequence(
      bos_id=dataset.bos_id,
      eos_id=dataset.eos_id,
      pad_id=dataset.pad_id,
      label_smoothing=label_smoothing,
    )
  raise ValueError(f"Dataset task {dataset.task!r} is not one of {sorted(TASKS)}.")
