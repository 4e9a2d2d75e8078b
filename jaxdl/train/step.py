"""The train state and the pure train/eval step functions. Nothing here touches files."""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdl.train import collectives as collectives_lib
from jaxdl.train import lora as lora_lib
from jaxdl.train import tasks

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
cross_entropy = tasks.cross_entropy


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 [], the number of updates applied so far.
  params: Any  # The model's parameters; under LoRA the frozen base.
  model_state: Any  # Non-parameter collections, e.g. {"batch_stats": ...}; {} for most models.
  opt_state: optax.OptState  # Of the trained tree: the parameters, or the adapters under LoRA.
  # Exponential moving average of the trained tree, which evaluation then uses; None when off.
  ema_params: Any = None
  # LoRA's adapters (jaxdl.train.lora), the only trained arrays; None when LoRA is off.
  adapters: Any = None


def trained(state: TrainState) -> Any:
  """What the optimizer updates: the adapters under LoRA, else the parameters."""
  return state.params if state.adapters is None else state.adapters


def model_params(state: TrainState, lora: lora_lib.LoRA | None = None) -> Any:
  """The parameters the model evaluates with: the moving average when kept, with the adapters
  merged into the base under LoRA."""
  averaged = trained(state) if state.ema_params is None else state.ema_params
  return averaged if lora is None else lora_lib.merge(state.params, averaged, lora)


def create_train_state(
  model: nn.Module,
  tx: optax.GradientTransformation,
  init_key: jax.Array,
  *example_inputs: jax.Array,
  ema: bool = False,
  lora: lora_lib.LoRA | None = None,
) -> TrainState:
  """Initialises the model on `example_inputs` (the task's model inputs; a batch of 1 will do).

  With `ema`, the state also holds a moving average of the trained tree, starting at it. With
  `lora`, the state holds adapters (drawn from fold_in(init_key, 1)), the only trained arrays.
  """
  # Unboxed: models name their parameters' axes (jaxdl.nn.partitioning), which `init` returns
  # boxed; the layout reads the names apart (jaxdl.train.shardings.param_axes), the state holds
  # the arrays.
  boxed = model.init(init_key, *example_inputs, train=False)
  variables = nn.unbox(boxed)
  params = variables.pop("params")
  adapters = None
  if lora is not None:  # The boxes' axis names tell each kernel's in axes from its out axes.
    adapters = lora_lib.init_adapters(boxed["params"], lora, jax.random.fold_in(init_key, 1))
  trainable = params if adapters is None else adapters
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    model_state=dict(variables),
    opt_state=tx.init(trainable),
    ema_params=jax.tree.map(jnp.copy, trainable) if ema else None,
    adapters=adapters,
  )


def _loss_weight_fn(task: Any) -> Callable[[Batch], jax.Array] | None:
  """batch -> what the task's loss (and each of its metrics) is a mean over, counted in the batch;
  None when that is the same for every equal-sized batch (one label per example, LM tokens).

  Averaging two micro-batches' means gives the mean of their union only if weighted by these
  counts: seq2seq losses are means over the non-padding target tokens, whose number differs between
  micro-batches (and devices). Such a task states its weight with a `loss_weight(batch)` method
  returning a count that adds up over examples (the weight of a batch is the sum of its parts').
  """
  return getattr(task, "loss_weight", None)


def split_micro_batches(batch: Batch, num_micro_batches: int) -> Batch:
  """[B, ...] arrays -> [k, B/k, ...]; micro-batch i holds examples i, i + k, i + 2k, ...

  Strided rather than contiguous so that, with the batch split over devices along B, every device
  holds its share of every micro-batch (a contiguous split would leave devices idle).
  """
  k = num_micro_batches
  sizes = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(batch)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
      f"Gradient accumulation splits every batch array along its leading (batch) "
      f"axis, but the arrays' leading sizes are {sorted(map(str, sizes))}; give "
      "every entry of the batch the same leading size B."
    )
  (size,) = sizes
  if size % k:
    raise ValueError(
      f"grad_accum_steps={k} does not divide the batch of {size} examples (per "
      f"device under pmap) into equal micro-batches; use a batch size that is a "
      f"multiple of {k} (e.g. {max(k, size // k * k)}) or fewer accumulation steps."
    )
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(size // k, k, *x.shape[1:]), 0, 1), batch)


def make_train_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  task: Any = tasks.Classification(),
  ema_decay: float = 0.0,
  *,
  grad_accum_steps: int = 1,
  grad_accum_unroll: bool = False,
  collectives: collectives_lib.Collectives = collectives_lib.GLOBAL,
  lora: lora_lib.LoRA | None = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """Returns train_step(state, batch, rng) -> (state, metrics); `rng` is the run's training key.

  `ema_decay` > 0 updates `state.ema_params` (which must exist) after every step:
  ema <- decay * ema + (1 - decay) * params.

  `grad_accum_steps` = k > 1 splits the batch [B, ...] into k micro-batches of B/k examples
  (`split_micro_batches`: micro-batch i is examples i, i + k, ...), averages their gradients in a
  `lax.scan` (memory of one micro-batch) and applies ONE optimizer update. The task's metrics are
  averaged over the micro-batches, weighted by what each loss is a mean over (`_loss_weight_fn`), so
  loss, accuracy and gradient equal the big batch's up to rounding, seq2seq padding included.
  What differs from one step on the big batch: micro-batch i draws dropout from
  fold_in(step_rng, i), so the masks differ (equal in distribution); and BatchNorm normalises with
  micro-batch statistics and updates its running averages k times, in order, so BatchNorm models
  train differently (like a smaller batch), not only by rounding. k = 1 is exactly the plain step.
  `grad_accum_unroll` unrolls that scan into k copies of the micro-step: the same arithmetic in the
  same order (equal to float rounding: XLA may fuse the copies differently), more to compile, and
  XLA may keep more than one micro-batch's activations alive. XLA:CPU needs it: convolutions inside
  a loop body run ~17x slower there (the seed CNN, 4 x 64 examples: 1.57 s looped, 89 ms
  unrolled, 132 ms as one batch of 256).

  `collectives` (jaxdl.train.collectives; the layout's) says what the step does across devices:
  nothing for one program over global arrays (GLOBAL, the default); with `OverAxis(name)`, for
  `jax.pmap(train_step, axis_name=name)` with each device holding a shard of the global batch,
  BatchNorm statistics are computed over the global (micro-)batch; gradients and the task's
  metrics are averaged over the axis (weighted like the micro-batches) before the update, so every
  device applies the same update and keeps identical parameters, optimizer and BatchNorm state;
  each device folds its axis index into the step's key, so dropout masks differ between devices
  while `rng` is the same on all of them.

  With `lora` (jaxdl.train.lora), the gradient, the optimizer, the moving average and the
  grad/param/update norms are the adapters' (`trained(state)`); the model runs on the base with
  them merged in, and the base never changes.
  """
  if (
    isinstance(grad_accum_steps, bool)
    or not isinstance(grad_accum_steps, int)
    or grad_accum_steps < 1
  ):
    raise ValueError(
      f"grad_accum_steps must be a positive integer (1: no accumulation), got {grad_accum_steps!r}."
    )
  loss_weight = _loss_weight_fn(task)

  def grads_and_metrics(params, base, model_state, batch, rng):
    """The gradient (of `params`, the trained tree), the task's metrics and the new non-parameter
    state of one (micro-)batch; `base` is the frozen base under LoRA."""
    mutable = list(model_state)

    def loss_fn(params):
      model_params = params if lora is None else lora_lib.merge(base, params, lora)
      variables = {"params": model_params, **model_state}
      with collectives.batch_norm():
        outputs, new_model_state = model.apply(
          variables, *task.model_inputs(batch), train=True, rngs={"dropout": rng}, mutable=mutable
        )
      loss, metrics = task.loss(outputs, batch)
      return loss, (metrics, new_model_state)

    (_, (metrics, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, metrics, dict(new_model_state)

  def accumulated_grads_and_metrics(params, base, model_state, batch, step_rng):
    """The (weighted) means over the k micro-batches, and the model state after the last one."""
    micro_batches = split_micro_batches(batch, grad_accum_steps)
    weights_k = (
      jax.vmap(loss_weight)(micro_batches)
      if loss_weight is not None
      else jnp.ones(grad_accum_steps, jnp.float32)
    )
    metric_shapes = jax.eval_shape(
      grads_and_metrics,
      params,
      base,
      model_state,
      jax.tree.map(lambda x: x[0], micro_batches),
      step_rng,
    )[1]
    # Sums in float32 whatever the parameters' dtype, so that k small terms are not lost.
    zeros = lambda t: jax.tree.map(
      lambda x: jnp.zeros(x.shape, jnp.promote_types(x.dtype, jnp.float32)), t
    )

    def add_micro_batch(carry, xs):
      grad_sum, metric_sum, model_state = carry
      micro_batch, weight, i = xs
      grads, metrics, model_state = grads_and_metrics(
        params, base, model_state, micro_batch, jax.random.fold_in(step_rng, i)
      )
      add = lambda s, x: s + weight * x.astype(s.dtype)
      return (
        jax.tree.map(add, grad_sum, grads),
        jax.tree.map(add, metric_sum, metrics),
        model_state,
      ), None

    (grad_sum, metric_sum, model_state), _ = jax.lax.scan(
      add_micro_batch,
      (zeros(params), zeros(metric_shapes), model_state),
      (micro_batches, weights_k, jnp.arange(grad_accum_steps)),
      unroll=bool(grad_accum_unroll),
    )
    total_weight = jnp.sum(weights_k)
    grads = jax.tree.map(
      lambda g, p: g.astype(p.dtype), collectives_lib.weighted_mean(grad_sum, total_weight), params
    )
    return grads, collectives_lib.weighted_mean(metric_sum, total_weight), model_state

  def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
    # The step's randomness depends only on the step number, never on host-side call order.
    step_rng = collectives.device_key(jax.random.fold_in(rng, state.step))
    params = trained(state)
    if grad_accum_steps == 1:
      grads, metrics, new_model_state = grads_and_metrics(
        params, state.params, state.model_state, batch, step_rng
      )
    else:
      grads, metrics, new_model_state = accumulated_grads_and_metrics(
        params, state.params, state.model_state, batch, step_rng
      )
    # Every device applies the mean update of the global batch.
    weight = None if loss_weight is None else lambda: loss_weight(batch)
    grads, metrics = collectives.mean((grads, metrics), weight)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {
      **metrics,
      "train/learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
      "train/grad_norm": optax.tree.norm(grads),
      "train/param_norm": optax.tree.norm(params),
      "train/update_norm": optax.tree.norm(updates),
    }
    ema_params = state.ema_params
    if ema_decay:
      ema_params = jax.tree.map(
        lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema_params, params
      )
    new_state = state.replace(
      step=state.step + 1,
      model_state=dict(new_model_state),
      opt_state=opt_state,
      ema_params=ema_params,
      **({"params": params} if lora is None else {"adapters": params}),
    )
    return new_state, metrics

  return train_step


def make_eval_step(
  model: nn.Module, task: Any = tasks.Classification(), lora: lora_lib.LoRA | None = None
) -> Callable[[TrainState, Batch], Metrics]:
  """Returns eval_step(state, batch) -> sums over the batch's real (mask=True) examples.

  Evaluates `model_params(state, lora)`: the moving average when the state keeps one, with LoRA's
  adapters merged in.
  """

  def eval_step(state: TrainState, batch: Batch) -> Metrics:
    params = model_params(state, lora)
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
  return {
    "sums": jax.tree.map(jnp.zeros_like, sums["sums"]),
    "count": jnp.zeros_like(sums["count"]),
    "first_nonfinite_step": jnp.full_like(sums["first_nonfinite_step"], -1),
  }


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


def steps_in_one_call(update: Callable) -> Callable:
  """`update`, (state, sums, batch, rng) -> (state, sums, loss), turned into one call of several
  steps: (state, sums, batches [K, ...], n, rng) -> the state and sums after the first n of the
  K stacked batches, and the last step's loss. n (<= K) is an argument, not a shape, so a call
  that must stop short of K steps (at a logging or checkpoint step) runs the same program.

  One dispatch then covers n steps, with bit-identical results: what a call costs besides its
  step (passing the state's buffers, allocating outputs, waking XLA's threads) is paid once
  (`runtime.steps_per_call`; what it buys: benchmarks/README.md, "Steps per call").
  """

  def update_steps(state, sums, batches, num_steps, rng):
    def one_step(i, carry):
      state, sums, _ = carry
      batch = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), batches)
      return update(state, sums, batch, rng)

    loss_shapes = jax.eval_shape(update, state, sums, jax.tree.map(lambda x: x[0], batches), rng)[2]
    no_loss = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), loss_shapes)
    return jax.lax.fori_loop(0, num_steps, one_step, (state, sums, no_loss))

  return update_steps
