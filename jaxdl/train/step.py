"""The train state and the pure train/eval step functions. Nothing here touches files."""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 [], the number of updates applied so far.
  params: Any
  model_state: Any  # Non-parameter collections, e.g. {"batch_stats": ...}; {} for most models.
  opt_state: optax.OptState


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, init_key: jax.Array,
                       example_input: jax.Array) -> TrainState:
  variables = model.init(init_key, example_input, train=False)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(variables),
                    opt_state=tx.init(params))


def cross_entropy(logits_BK: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy [B], computed in float32 whatever the logits' dtype."""
  return optax.softmax_cross_entropy_with_integer_labels(logits_BK.astype(jnp.float32), labels_B)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule) -> Callable[[TrainState, Batch, jax.Array],
                                                          tuple[TrainState, Metrics]]:
  """Returns train_step(state, batch, rng) -> (state, metrics); `rng` is the run's training key."""

  def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
    # The step's randomness depends only on the step number, never on host-side call order.
    step_rng = jax.random.fold_in(rng, state.step)
    mutable = list(state.model_state)

    def loss_fn(params):
      variables = {"params": params, **state.model_state}
      logits_BK, new_model_state = model.apply(
          variables, batch["image"], train=True, rngs={"dropout": step_rng}, mutable=mutable)
      loss = cross_entropy(logits_BK, batch["label"]).mean()
      return loss, (logits_BK, new_model_state)

    (loss, (logits_BK, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "train/loss": loss,
        "train/accuracy": jnp.mean(jnp.argmax(logits_BK, -1) == batch["label"]),
        "train/learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
        "train/grad_norm": optax.tree.norm(grads),
        "train/param_norm": optax.tree.norm(params),
        "train/update_norm": optax.tree.norm(updates),
    }
    new_state = state.replace(step=state.step + 1, params=params,
                              model_state=dict(new_model_state), opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module) -> Callable[[TrainState, Batch], Metrics]:
  """Returns eval_step(state, batch) -> sums over the batch's real (mask=True) examples."""

  def eval_step(state: TrainState, batch: Batch) -> Metrics:
    logits_BK = model.apply({"params": state.params, **state.model_state}, batch["image"],
                            train=False)
    mask_B = batch["mask"].astype(jnp.float32)
    correct_B = (jnp.argmax(logits_BK, -1) == batch["label"]).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(cross_entropy(logits_BK, batch["label"]) * mask_B),
        "correct": jnp.sum(correct_B * mask_B),
        "count": jnp.sum(mask_B),
    }

  return eval_step


# Train metrics are averaged over each logging interval on the device, so the host reads them once
# per interval. The sums are part of the checkpoint: a run resumed mid-interval logs the same means.
def init_metric_sums(metrics_shapes: Metrics) -> dict[str, Any]:
  return {
      "sums": jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), metrics_shapes),
      "count": jnp.zeros((), jnp.int32),
      "first_nonfinite_step": jnp.full((), -1, jnp.int32),  # First step with a NaN/Inf metric.
  }


def reset_metric_sums(sums: dict[str, Any]) -> dict[str, Any]:
  return {"sums": jax.tree.map(jnp.zeros_like, sums["sums"]), "count": jnp.zeros_like(sums["count"]),
          "first_nonfinite_step": jnp.full_like(sums["first_nonfinite_step"], -1)}


def accumulate_metrics(sums: dict[str, Any], metrics: Metrics, step: jax.Array) -> dict[str, Any]:
  """Adds one step's metrics; remembers the first step (state.step after it) where any metric,
  e.g. the loss or the norm of the updated parameters, is NaN or Inf."""
  bad = jnp.any(jnp.stack([~jnp.all(jnp.isfinite(m)) for m in jax.tree.leaves(metrics)]))
  first = sums["first_nonfinite_step"]
  return {
      "sums": jax.tree.map(lambda s, m: s + m.astype(jnp.float32), sums["sums"], metrics),
      "count": sums["count"] + 1,
      "first_nonfinite_step": jnp.where((first < 0) & bad, step, first),
  }
