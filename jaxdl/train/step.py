"""The train state and the pure train/eval step functions. Nothing here touches files."""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdl.train import tasks

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
cross_entropy = tasks.cross_entropy


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 [], the number of updates applied so far.
  params: Any
  model_state: Any  # Non-parameter collections, e.g. {"batch_stats": ...}; {} for most models.
  opt_state: optax.OptState
  # Exponential moving average of the parameters, which evaluation then uses; None when off.
  ema_params: Any = None


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, init_key: jax.Array,
                       *example_inputs: jax.Array, ema: bool = False) -> TrainState:
  """Initialises the model on `example_inputs` (the task's model inputs; a batch of 1 will do).

  With `ema`, the state also holds a moving average of the parameters, starting at them.
  """
  variables = model.init(init_key, *example_inputs, train=False)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=dict(variables),
                    opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params) if ema else None)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    task: Any = tasks.Classification(), ema_decay: float = 0.0) -> Callable[
                        [TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """Returns train_step(state, batch, rng) -> (state, metrics); `rng` is the run's training key.

  `ema_decay` > 0 updates `state.ema_params` (which must exist) after every step:
  ema <- decay * ema + (1 - decay) * params.
  """

  def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
    # The step's randomness depends only on the step number, never on host-side call order.
    step_rng = jax.random.fold_in(rng, state.step)
    mutable = list(state.model_state)

    def loss_fn(params):
      variables = {"params": params, **state.model_state}
      outputs, new_model_state = model.apply(
          variables, *task.model_inputs(batch), train=True, rngs={"dropout": step_rng},
          mutable=mutable)
      loss, metrics = task.loss(outputs, batch)
      return loss, (metrics, new_model_state)

    (_, (metrics, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        **metrics,
        "train/learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
        "train/grad_norm": optax.tree.norm(grads),
        "train/param_norm": optax.tree.norm(params),
        "train/update_norm": optax.tree.norm(updates),
    }
    ema_params = state.ema_params
    if ema_decay:
      ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema_params,
                                params)
    new_state = state.replace(step=state.step + 1, params=params,
                              model_state=dict(new_model_state), opt_state=opt_state,
                              ema_params=ema_params)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, task: Any = tasks.Classification()) -> Callable[
    [TrainState, Batch], Metrics]:
  """Returns eval_step(state, batch) -> sums over the batch's real (mask=True) examples.

  Evaluates the moving average of the parameters when the state keeps one.
  """

  def eval_step(state: TrainState, batch: Batch) -> Metrics:
    params = state.params if state.ema_params is None else state.ema_params
    return task.eval_sums(model, {"params": params, **state.model_state}, batch)

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
