"""Gradient accumulation and the collective train step (jaxdl.train.collectives.OverAxis) of
jaxdl.train.step.

References: one step on the whole batch, a copy of the plain step, and numpy formulas for the
BatchNorm running averages. Collectives run under `jax.vmap(..., axis_name=...)`, which supports
them, so one CPU device stands in for several.
"""

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl.train import collectives, tasks
from jaxdl.train import step as step_lib

LR = 0.05
SCHEDULE = optax.constant_schedule(LR)
OPTIMIZERS = {"sgd": optax.sgd(LR, momentum=0.9), "adam": optax.adam(LR)}


class _MLP(nn.Module):
  """Deterministic: the big-batch gradient is the mean of the micro-batch gradients."""

  @nn.compact
  def __call__(self, x_BD, *, train=False):
    del train
    return nn.Dense(3)(nn.tanh(nn.Dense(16)(x_BD)))


class _BNNet(nn.Module):
  """BatchNorm straight on the input, so its running averages are numpy formulas of the batch.

  The biases in front of a BatchNorm have a true gradient of 0 (BatchNorm removes any shift), so
  theirs is rounding noise, which adam scales up to +-lr: compare BatchNorm steps under SGD.
  """

  @nn.compact
  def __call__(self, x_BD, *, train=False):
    x_BD = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x_BD)
    x_BH = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x_BD)))
    return nn.Dense(3)(x_BH)


class _DropoutNet(nn.Module):
  @nn.compact
  def __call__(self, x_BD, *, train=False):
    return nn.Dense(3)(nn.Dropout(0.5, deterministic=not train)(nn.Dense(16)(x_BD)))


class _Seq2Seq(nn.Module):
  """logits [B, T, V] from the target prefix and the mean of the source embeddings."""

  @nn.compact
  def __call__(self, src_BS, tgt_BT, *, train=False):
    del train
    embed = nn.Embed(7, 8)
    x_BTD = embed(tgt_BT) + embed(src_BS).mean(axis=1, keepdims=True)
    return nn.Dense(7)(nn.tanh(x_BTD))


def _batch(seed, size=16):
  rng = np.random.default_rng(seed)  # numpy, not jax.random: nothing to compile.
  return {
    "image": rng.normal(1.0, 2.0, (size, 4)).astype(np.float32),
    "label": rng.integers(0, 3, size).astype(np.int32),
  }


# Tests share initial states and compiled steps (modules and tasks are hashable), so that the file
# stays fast on a CPU.
@functools.cache
def _state(model, opt, task=tasks.Classification()):
  example = (
    {"src": jnp.zeros((1, 5), jnp.int32), "tgt": jnp.zeros((1, 6), jnp.int32)}
    if isinstance(task, tasks.SequenceToSequence)
    else _batch(0, size=1)
  )
  return jax.jit(
    lambda key: step_lib.create_train_state(
      model, OPTIMIZERS[opt], key, *task.model_inputs(example)
    )
  )(jax.random.key(0))


@functools.cache
def _step(model, opt, task=tasks.Classification(), **kwargs):
  return jax.jit(step_lib.make_train_step(model, OPTIMIZERS[opt], SCHEDULE, task, **kwargs))


def _run(step_fn, state, batches, rng=jax.random.key(7)):
  metrics = None
  for batch in batches:
    state, metrics = step_fn(state, batch, rng)
  return state, metrics


def _assert_close(actual, expected, rtol=1e-5, atol=1e-6):
  jax.tree.map(
    lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol), actual, expected
  )


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_accumulation_equals_the_big_batch_step(opt):
  model, state = _MLP(), _state(_MLP(), opt)
  batches = [_batch(s) for s in range(3)]
  big_state, big_metrics = _run(_step(model, opt), state, batches)
  accum_state, accum_metrics = _run(_step(model, opt, grad_accum_steps=4), state, batches)
  _assert_close(accum_state.params, big_state.params)
  _assert_close(accum_state.opt_state, big_state.opt_state)
  assert int(accum_state.step) == 3  # One optimizer update per call, not four.
  assert accum_metrics.keys() == big_metrics.keys()
  _assert_close(accum_metrics, big_metrics)


@pytest.mark.parametrize("model", [_MLP(), _BNNet()], ids=["mlp", "batchnorm"])
def test_unrolled_accumulation_equals_the_loop(model):
  """runtime.grad_accum_unroll (auto on CPU) only changes how XLA runs the micro-batches."""
  state, batches = _state(model, "adam"), [_batch(s) for s in range(3)]
  looped = _run(_step(model, "adam", grad_accum_steps=4), state, batches)
  unrolled = _run(_step(model, "adam", grad_accum_steps=4, grad_accum_unroll=True), state, batches)
  _assert_close(unrolled, looped, rtol=1e-6, atol=1e-7)
  step_fn = step_lib.make_train_step(
    model, OPTIMIZERS["adam"], SCHEDULE, grad_accum_steps=4, grad_accum_unroll=True
  )
  compiled = jax.jit(step_fn).lower(state, batches[0], jax.random.key(0)).compile().as_text()
  assert " while(" not in compiled  # No loop left for XLA to run.


def _plain_step(model, tx, task=tasks.Classification()):
  """The train step as it was before accumulation existed: k = 1 must stay exactly this."""

  def train_step(state, batch, rng):
    step_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      outputs, new_model_state = model.apply(
        {"params": params, **state.model_state},
        *task.model_inputs(batch),
        train=True,
        rngs={"dropout": step_rng},
        mutable=list(state.model_state),
      )
      loss, metrics = task.loss(outputs, batch)
      return loss, (metrics, new_model_state)

    (_, (metrics, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
      **metrics,
      "train/learning_rate": jnp.asarray(SCHEDULE(state.step), jnp.float32),
      "train/grad_norm": optax.tree.norm(grads),
      "train/param_norm": optax.tree.norm(params),
      "train/update_norm": optax.tree.norm(updates),
    }
    return state.replace(
      step=state.step + 1, params=params, model_state=dict(new_model_state), opt_state=opt_state
    ), metrics

  return train_step


@pytest.mark.parametrize("model", [_DropoutNet(), _BNNet()], ids=["dropout", "batchnorm"])
def test_one_accumulation_step_is_bit_identical_to_the_plain_step(model):
  state, batches = _state(model, "sgd"), [_batch(s) for s in range(2)]
  new = _run(_step(model, "sgd", grad_accum_steps=1), state, batches)
  old = _run(jax.jit(_plain_step(model, OPTIMIZERS["sgd"])), state, batches)
  jax.tree.map(np.testing.assert_array_equal, new, old)


def test_bad_accumulation_steps_are_explained():
  model, tx = _MLP(), OPTIMIZERS["sgd"]
  step_fn = step_lib.make_train_step(model, tx, SCHEDULE, grad_accum_steps=4)
  with pytest.raises(ValueError, match=r"grad_accum_steps=4 does not divide the batch of 10 "):
    jax.eval_shape(step_fn, _state(model, "sgd"), _batch(0, size=10), jax.random.key(0))
  with pytest.raises(ValueError, match="positive integer"):
    step_lib.make_train_step(model, tx, SCHEDULE, grad_accum_steps=0)
  with pytest.raises(ValueError, match="leading sizes"):
    step_lib.split_micro_batches({"image": jnp.zeros((8, 4)), "label": jnp.zeros(6)}, 2)


def test_micro_batches_are_strided():
  x = np.arange(12)
  split = step_lib.split_micro_batches({"x": x, "y": x.reshape(12, 1) * 10}, 3)
  np.testing.assert_array_equal(split["x"], [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])
  assert split["y"].shape == (3, 4, 1)
  np.testing.assert_array_equal(split["y"][1, :, 0], [10, 40, 70, 100])


def test_batch_norm_statistics_are_updated_once_per_micro_batch():
  model, k = _BNNet(), 4
  state, batch = _state(model, "sgd"), _batch(0)
  new_state, metrics = _step(model, "sgd", grad_accum_steps=k)(state, batch, jax.random.key(0))
  x = np.asarray(batch["image"], np.float64)
  mean, var = np.zeros(4), np.ones(4)  # Flax's initial running averages.
  for i in range(k):  # Micro-batch i is examples i, i + k, ...; momentum 0.9, in order.
    mean = 0.9 * mean + 0.1 * x[i::k].mean(0)
    var = 0.9 * var + 0.1 * x[i::k].var(0)
  stats = new_state.model_state["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5)
  np.testing.assert_allclose(stats["var"], var, rtol=1e-5)

  # The loss: the mean over micro-batches, each normalised with its own statistics.
  @jax.jit
  def micro_batch_loss(x_BD, labels_B):
    logits_BK, _ = model.apply(
      {"params": state.params, **state.model_state}, x_BD, train=True, mutable=["batch_stats"]
    )
    return tasks.cross_entropy(logits_BK, labels_B).mean()

  losses = [micro_batch_loss(batch["image"][i::k], batch["label"][i::k]) for i in range(k)]
  assert float(metrics["train/loss"]) == pytest.approx(float(np.mean(losses)), rel=1e-5)


def test_dropout_keys_are_fold_in_of_micro_batch_and_device():
  """Device d, micro-batch i of step s: dropout key fold_in(fold_in(fold_in(rng, s), d), i)."""
  model, k, devices = _DropoutNet(), 2, 2
  state = _state(model, "sgd").replace(step=jnp.asarray(5, jnp.int32))
  batch, rng = _batch(1, size=8), jax.random.key(3)
  step_fn = step_lib.make_train_step(
    model, OPTIMIZERS["sgd"], SCHEDULE, grad_accum_steps=k, collectives=collectives.OverAxis("d")
  )
  new_state, _ = jax.jit(jax.vmap(step_fn, in_axes=(None, 0, None), axis_name="d"))(
    state, jax.tree.map(lambda x: x.reshape(devices, -1, *x.shape[1:]), batch), rng
  )

  @jax.jit
  def grad(x_BD, labels_B, key):
    loss = lambda p: tasks.cross_entropy(
      model.apply({"params": p}, x_BD, train=True, rngs={"dropout": key}), labels_B
    ).mean()
    return jax.grad(loss)(state.params)

  grads = []
  for d in range(devices):
    x, labels = batch["image"][4 * d : 4 * d + 4], batch["label"][4 * d : 4 * d + 4]
    for i in range(k):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, 5), d), i)
      grads.append(grad(x[i::k], labels[i::k], key))
  # Momentum SGD's first update from a zero trace is -LR * gradient.
  expected = jax.tree.map(lambda p, *g: p - LR * np.mean(g, axis=0), state.params, *grads)
  for d in range(devices):
    _assert_close(jax.tree.map(lambda p: p[d], new_state.params), expected)


def test_seq2seq_micro_batches_are_weighted_by_their_tokens():
  """Padding leaves the micro-batches different token counts; the loss is still the big batch's."""
  model, task = _Seq2Seq(), tasks.SequenceToSequence()
  rng = np.random.default_rng(1)
  src, tgt = (rng.integers(3, 7, shape).astype(np.int32) for shape in [(8, 5), (8, 6)])
  tgt[:, 0] = task.bos_id
  for row, length in enumerate([5, 1, 5, 2, 4, 1, 5, 3]):  # Micro-batches (k=2): 19 vs 7 tokens.
    tgt[row, 1 + length :] = task.pad_id
  batch = {"src": src, "tgt": tgt}
  state = _state(model, "sgd", task)
  big_state, big_metrics = _step(model, "sgd", task)(state, batch, jax.random.key(0))
  accum_state, accum_metrics = _step(model, "sgd", task, grad_accum_steps=2)(
    state, batch, jax.random.key(0)
  )
  _assert_close(accum_state.params, big_state.params)
  _assert_close(accum_metrics, big_metrics)
  # Over 4 devices (6, 7, 5 and 8 tokens) x 2 micro-batches of one sequence each: the same.
  collective = step_lib.make_train_step(
    model,
    OPTIMIZERS["sgd"],
    SCHEDULE,
    task,
    grad_accum_steps=2,
    collectives=collectives.OverAxis("batch"),
  )
  shard_state, shard_metrics = _over_devices(collective, state, batch)
  _assert_close(shard_state.params, big_state.params)
  _assert_close(shard_metrics, big_metrics)
  # Not a coincidence of equal counts: the plain mean of the micro-batch losses is different.
  loss = jax.jit(
    lambda b: task.loss(model.apply({"params": state.params}, *task.model_inputs(b)), b)[0]
  )
  micro_losses = [loss(jax.tree.map(lambda x: x[i::2], batch)) for i in range(2)]
  assert abs(float(np.mean(micro_losses)) - float(big_metrics["train/loss"])) > 1e-3


def _over_devices(step_fn, state, batch, devices=4):
  """step_fn on `devices` shards of `batch`, as under pmap; checks every device ends equal."""
  shards = jax.tree.map(lambda x: x.reshape(devices, -1, *x.shape[1:]), batch)
  new_state, metrics = jax.jit(jax.vmap(step_fn, in_axes=(None, 0, None), axis_name="batch"))(
    state, shards, jax.random.key(0)
  )
  for d in range(1, devices):
    jax.tree.map(lambda x: np.testing.assert_array_equal(x[d], x[0]), (new_state, metrics))
  return jax.tree.map(lambda x: x[0], (new_state, metrics))


# BatchNorm models are compared under SGD, not adam; see _BNNet.
def test_over_axis_syncs_batch_norm_and_averages_gradients():
  model = _BNNet()
  state, batch = _state(model, "sgd"), _batch(0)
  big_state, big_metrics = _step(model, "sgd")(state, batch, jax.random.key(0))
  collective = step_lib.make_train_step(
    model, OPTIMIZERS["sgd"], SCHEDULE, collectives=collectives.OverAxis("batch")
  )
  shard_state, shard_metrics = _over_devices(collective, state, batch)
  _assert_close(shard_state.params, big_state.params)
  _assert_close(shard_state.model_state, big_state.model_state)
  _assert_close(shard_metrics, big_metrics)


def test_without_synced_batch_norm_the_devices_disagree(monkeypatch):
  """The interceptor matters: per-device BatchNorm statistics give a different update."""
  model = _BNNet()
  state, batch = _state(model, "sgd"), _batch(0)
  big_state, _ = _step(model, "sgd")(state, batch, jax.random.key(0))
  monkeypatch.setattr(collectives, "sync_batch_norm", lambda axis_name: contextlib.nullcontext())
  unsynced = step_lib.make_train_step(
    model, OPTIMIZERS["sgd"], SCHEDULE, collectives=collectives.OverAxis("batch")
  )
  shards = jax.tree.map(lambda x: x.reshape(4, 4, *x.shape[1:]), batch)
  new_state, _ = jax.jit(jax.vmap(unsynced, in_axes=(None, 0, None), axis_name="batch"))(
    state, shards, jax.random.key(0)
  )
  diff = jax.tree.map(
    lambda a, b: float(np.max(np.abs(a[0] - b))), new_state.params, big_state.params
  )
  assert max(jax.tree.leaves(diff)) > 1e-3
  running_mean = new_state.model_state["batch_stats"]["BatchNorm_0"]["mean"]
  assert float(np.max(np.abs(running_mean[0] - running_mean[1]))) > 1e-3


@pytest.mark.parametrize("model", [_MLP(), _BNNet()], ids=["mlp", "batchnorm"])
def test_over_axis_with_accumulation(model):
  """4 devices x 2 micro-batches equals one device x 2 micro-batches: with strided micro-batches
  and synced BatchNorm, global micro-batch i is the single device's micro-batch i (examples
  i, i + 2, ...), so even the BatchNorm statistics agree. Without BatchNorm: the big-batch step."""
  bn = isinstance(model, _BNNet)
  opt = "sgd" if bn else "adam"
  state, batch = _state(model, opt), _batch(0)
  ref_state, ref_metrics = _step(model, opt, grad_accum_steps=2 if bn else 1)(
    state, batch, jax.random.key(0)
  )
  collective = step_lib.make_train_step(
    model, OPTIMIZERS[opt], SCHEDULE, grad_accum_steps=2, collectives=collectives.OverAxis("batch")
  )
  shard_state, shard_metrics = _over_devices(collective, state, batch)
  _assert_close(shard_state, ref_state)
  _assert_close(shard_metrics, ref_metrics)


def test_sync_batch_norm_leaves_other_modules_and_named_axes_alone():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      a = nn.BatchNorm(use_running_average=False)(x)
      b = nn.BatchNorm(use_running_average=False, axis_name="other")(x)
      return a, b, nn.LayerNorm()(x)

  x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)  # [other, batch, feat]
  variables = jax.jit(Net().init)(jax.random.key(1), x[0, :1])

  def apply(x_BD):
    with collectives.sync_batch_norm("batch"):
      return Net().apply(variables, x_BD, mutable=["batch_stats"])[0]

  a, b, ln = jax.jit(jax.vmap(jax.vmap(apply, axis_name="batch"), axis_name="other"))(x[:, :, None])
  # a: normalised over the whole "batch" axis; b over its own axis; LayerNorm over features.
  normalise = lambda x, axis, eps: (
    (x - x.mean(axis, keepdims=True)) / np.sqrt(x.var(axis, keepdims=True) + eps)
  )  # Flax's epsilons: BatchNorm 1e-5, LayerNorm 1e-6.
  np.testing.assert_allclose(a[:, :, 0], normalise(x, 1, 1e-5), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(b[:, :, 0], normalise(x, 0, 1e-5), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ln[:, :, 0], normalise(x, 2, 1e-6), rtol=1e-4, atol=1e-4)
