"""The training loop: config -> data -> model and optimizer -> resume -> train, log, eval, save.

Read it top to bottom; each banner is one stage of a run. The pure pieces live elsewhere: the model
in jaxdl.nn, the train and eval steps in jaxdl.train, checkpoint I/O in jaxdl.checkpoint.
"""

import collections
import dataclasses
import functools
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl import data as data_lib
from jaxdl import metrics as metrics_lib
from jaxdl import nn as nn_lib
from jaxdl import workdir as workdir_lib
from jaxdl.checkpoint import Checkpointer
from jaxdl.errors import CheckpointError, ConfigError, NonFiniteLossError
from jaxdl.progress import Progress
from jaxdl.train import mesh as mesh_lib
from jaxdl.train import optim
from jaxdl.train import step as step_lib
from jaxdl.train import tasks

logger = logging.getLogger("jaxdl")

MAX_STEPS_AHEAD = 2  # Train steps the host may dispatch before the device has finished them.


@dataclasses.dataclass
class TrainResult:
  step: int  # The step training reached (and saved).
  eval_metrics: dict[str, float]  # The last evaluation, {"eval/loss": ..., "eval/accuracy": ...}.
  interrupted_by: int | None = None  # The signal that stopped training early, if any.
  summary: str = ""  # The last evaluation in words, e.g. "test accuracy 0.9905 (9905/10000), ...".


@dataclasses.dataclass
class Setup:
  """What a run needs besides its loop: everything derivable from the config and the data."""
  model: Any
  task: Any  # jaxdl.train.tasks: which batch entries the model reads, the loss, the metrics.
  tx: Any
  schedule: Any
  mesh: Any
  train_step: Any  # The pure step function, not yet jitted.
  init_loop: Any  # Jitted () -> the loop state of step 0: {"state", "metric_sums", "rng"}.
  total_steps: int
  steps_per_epoch: int


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  return data_lib.load_from_config(config.data,
                                   allow_download=None if config.data.download else False)


def build_model(config: ml_collections.ConfigDict, model_hints: dict[str, Any]) -> Any:
  """The configured model, with the arguments the data dictates (number of classes, vocabulary
  size) filled in where the config leaves them unset (0 or None), and checked where it sets them."""
  try:
    cls, preset = nn_lib.registry.resolve(config.model.name)
    kwargs = nn_lib.model_kwargs(config.model)
    fields = nn_lib.registry.model_fields(cls)
    for key, value in model_hints.items():
      if key not in fields:
        continue
      configured = kwargs.get(key, preset.get(key))
      if configured in (None, 0):
        kwargs[key] = value
      elif configured != value:
        raise ConfigError(
            f"model.{key}={configured} contradicts the data, which has {key}={value}; remove "
            f"model.{key} from the config (it is taken from the data) or set it to {value}.")
    return nn_lib.build_model(config.model.name, **kwargs)
  except ValueError as e:
    raise ConfigError(f"model: {e}") from e


def build(config: ml_collections.ConfigDict, data: data_lib.Dataset) -> Setup:
  mesh = mesh_lib.make_mesh()
  mesh_lib.check_batch_size(config.train.batch_size, mesh, "train.batch_size")
  mesh_lib.check_batch_size(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  steps_per_epoch = data.steps_per_epoch(config.train.batch_size)
  if steps_per_epoch == 0:
    raise ConfigError(f"train.batch_size={config.train.batch_size} exceeds the "
                      f"{data.source.get('num_train')} training examples of {config.data.name} "
                      f"({data.source.get('kind')}), so not one batch fits; use a smaller batch "
                      "or more data.")
  total_steps = config.train.num_steps or config.train.num_epochs * steps_per_epoch
  if total_steps <= 0:
    raise ConfigError("Nothing to train: set train.num_steps or train.num_epochs to more than 0.")
  model = build_model(config, data.model_hints)
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise ConfigError(f"train.ema_decay={config.train.ema_decay} must be in [0, 1); 0 turns the "
                      "moving average off, 0.999 is typical.")
  try:
    task = tasks.make_task(data, label_smoothing=config.train.label_smoothing)
  except ValueError as e:
    raise ConfigError(f"train.label_smoothing: {e}") from e
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps)
  train_step = step_lib.make_train_step(model, tx, schedule, task, config.train.ema_decay)
  batch_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                              data.example_batch(config.train.batch_size))
  example_inputs = task.model_inputs(data.example_batch(1))

  def init_loop():
    """Everything a resumed run needs to continue bit for bit, besides the data iterator."""
    root_key = jax.random.key(config.seed)
    state = step_lib.create_train_state(model, tx, jax.random.fold_in(root_key, 0),
                                        *example_inputs, ema=config.train.ema_decay > 0)
    rng = jax.random.fold_in(root_key, 1)
    metric_shapes = jax.eval_shape(train_step, state, batch_shapes, rng)[1]
    return {"state": state, "metric_sums": step_lib.init_metric_sums(metric_shapes),
            "rng": jax.random.key_data(rng)}  # Raw key data: checkpoints store plain arrays.

  try:  # Tracing the model once turns a misfit (e.g. a context longer than GPT's block_size)
    jax.eval_shape(init_loop)  # into a config error now rather than a traceback later.
  except ValueError as e:
    raise ConfigError(f"model {config.model.name!r} does not fit the data: {e}") from e
  init_loop = jax.jit(init_loop, out_shardings=mesh_lib.replicated(mesh))
  return Setup(model, task, tx, schedule, mesh, train_step, init_loop, total_steps,
               steps_per_epoch)


def abstract_loop(setup: Setup) -> Any:
  """Shapes, dtypes and shardings of the loop state, to restore a checkpoint into."""
  sharding = mesh_lib.replicated(setup.mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      jax.eval_shape(setup.init_loop))


def evaluate(eval_step, state, data: data_lib.Dataset, task, batch_size: int,
             mesh) -> dict[str, float]:
  """The task's metrics over every example of the evaluation split, each counted exactly once."""
  sums = None
  for batch in data.eval_batches(batch_size=batch_size):
    out = eval_step(state, mesh_lib.shard_batch(batch, mesh))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  return task.eval_metrics(jax.device_get(sums))


class _StopSignal:
  """Turns the first SIGTERM/SIGINT into a request to save and stop after the current step."""

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    # A second Ctrl-C stops at once, the usual way.
    signal.signal(signal.SIGINT, signal.default_int_handler)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _raise_if_nonfinite(sums: dict[str, Any]) -> None:
  bad_step = int(jax.device_get(sums["first_nonfinite_step"]))
  if bad_step >= 0:
    raise NonFiniteLossError(f"Training diverged at step {bad_step}: the loss, gradients or "
                             "parameters became NaN or Inf.")


def _interval_means(sums: dict[str, Any]) -> dict[str, float]:
  """Host-side means of accumulated train metrics; stops the run on a NaN or Inf loss."""
  sums = jax.device_get(sums)
  _raise_if_nonfinite(sums)
  return {k: float(v) / int(sums["count"]) for k, v in sums["sums"].items()}


def train(config: ml_collections.ConfigDict, workdir: str | Path, *,
          command: list[str] | None = None, show_progress: bool = True) -> TrainResult:
  workdir = Path(workdir)

  # ---------------------------------------------------------------- Workdir and data
  workdir_lib.check_can_train(workdir, config)
  data = load_data(config)
  saved_source = (workdir_lib.last_data_source(workdir) if workdir_lib.has_checkpoints(workdir)
                  else None)
  if saved_source and saved_source.get("num_train") != data.source.get("num_train"):
    raise CheckpointError(
        f"Workdir {workdir} was trained on {saved_source.get('num_train')} training examples "
        f"(or tokens, for text) from {saved_source.get('path', 'its data')} "
        f"({saved_source.get('kind')}); this run has {data.source.get('num_train')} "
        f"({data.source.get('kind')}); the saved data position would not fit. Point data.dir at "
        "the data it was trained on, or use a new --workdir.")

  # ---------------------------------------------------------------- Mesh, model, optimizer
  setup = build(config, data)

  # ---------------------------------------------------------------- Input
  # The data seed must fit 32 bits; derive it from the run seed, apart from the model's keys.
  data_seed = int(np.random.SeedSequence([config.seed, 1]).generate_state(1)[0])
  train_iter = iter(data.train_batches(
      batch_size=config.train.batch_size // jax.process_count(), seed=data_seed,
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      num_threads=config.data.num_threads, prefetch=config.data.prefetch))

  # ---------------------------------------------------------------- Workdir files, step functions
  workdir_lib.check_tokenizer(workdir, data.tokenizer)
  workdir_lib.write_config(workdir, config)  # Only once the config is known to work.
  workdir_lib.write_tokenizer(workdir, data.tokenizer)
  mesh, total_steps = setup.mesh, setup.total_steps
  eval_step = jax.jit(step_lib.make_eval_step(setup.model, setup.task))
  # Outputs keep the inputs' replicated sharding, so the train step never compiles twice.
  reset_sums = jax.jit(step_lib.reset_metric_sums, out_shardings=mesh_lib.replicated(mesh))

  # One dispatch a step: the update and the running sums of its metrics, both buffers donated.
  # The step's loss comes back too, as a handle to wait on that step without touching donations.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_and_accumulate(state, sums, batch, rng):
    state, metrics = setup.train_step(state, batch, rng)
    return state, step_lib.accumulate_metrics(sums, metrics, state.step), metrics["train/loss"]

  # ---------------------------------------------------------------- Initial state or resume
  checkpointer = Checkpointer(workdir / workdir_lib.CHECKPOINT_DIR,
                              max_to_keep=config.train.max_checkpoints,
                              async_save=config.train.async_checkpointing)
  start_step = checkpointer.latest_step() or 0
  if start_step:
    loop = checkpointer.restore(start_step, abstract_loop(setup), train_iter)
    logger.info("Resuming %s from step %d.", workdir, start_step)
  else:
    loop = setup.init_loop()
  if jax.process_index() == 0:
    metrics_lib.truncate_after(workdir, start_step)
  workdir_lib.append_run(workdir, workdir_lib.run_record(
      data_source=data.source, command=command, start_step=start_step))
  state, sums, rng_data = loop["state"], loop["metric_sums"], loop["rng"]
  rng = jax.random.wrap_key_data(rng_data)

  # ---------------------------------------------------------------- Train
  writer = metrics_lib.MetricWriter(workdir)
  progress = Progress(total_steps=total_steps, initial_step=start_step,
                      enabled=show_progress, is_main_process=jax.process_index() == 0)
  cfg = config.train
  tokens_per_example = setup.task.tokens_per_example(data.example_batch(1))
  eval_every = cfg.eval_every_steps or setup.steps_per_epoch
  eval_metrics: dict[str, float] = {}
  pending = None  # (step, metric sums) to read once the next step is dispatched.
  in_flight = collections.deque()  # Loss handles of dispatched steps not yet waited for.
  t_last, step_last = time.perf_counter(), start_step

  def flush():
    """Writes the pending interval's means, timed from when its last step finished."""
    nonlocal pending, t_last, step_last
    if pending is not None:
      step, interval_sums = pending
      pending = None
      means = _interval_means(interval_sums)  # Waits for `step` to finish on the device.
      now = time.perf_counter()
      seconds_per_step = (now - t_last) / (step - step_last)
      t_last, step_last = now, step
      perf = {"perf/examples_per_sec": cfg.batch_size / seconds_per_step,
              "perf/seconds_per_step": seconds_per_step}
      if tokens_per_example:
        perf["perf/tokens_per_sec"] = perf["perf/examples_per_sec"] * tokens_per_example
      writer.write(step, {**means, **perf})
      progress.update(step, {**means, **perf})

  stop = _StopSignal()
  try:
    with stop:
      for step in range(start_step + 1, total_steps + 1):  # `step` counts updates done after it.
        batch = mesh_lib.shard_batch(next(train_iter), mesh)
        state, sums, loss = train_and_accumulate(state, sums, batch, rng)
        # The host runs at most MAX_STEPS_AHEAD steps ahead of the device: enough to keep it busy,
        # few enough that queued input batches cannot pile up in device memory.
        in_flight.append(loss)
        if len(in_flight) > MAX_STEPS_AHEAD:
          in_flight.popleft().block_until_ready()
        flush()  # Reads step-1's metrics while this step runs.

        at_log = step % cfg.log_every_steps == 0
        if at_log or step == total_steps:
          pending = (step, sums)
          # A partial interval at the end stays in the sums, so a resumed run logs the same
          # means at the next log step as an uninterrupted one.
          if at_log:
            sums = reset_sums(sums)

        if step % eval_every == 0 or step == total_steps:
          flush()
          eval_start = time.perf_counter()
          eval_metrics = evaluate(eval_step, state, data, setup.task, config.data.eval_batch_size,
                              mesh)
          t_last += time.perf_counter() - eval_start  # Training throughput leaves evals out.
          writer.write(step, eval_metrics)
          progress.message(f"step {step}: {setup.task.summary(eval_metrics)}")

        checkpoint_due = cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0
        if checkpoint_due or step == total_steps or stop.signum is not None:
          flush()
          _raise_if_nonfinite(sums)  # Never save a state that a NaN has reached.
          checkpointer.save(step, {"state": state, "metric_sums": sums, "rng": rng_data},
                            train_iter)

        if stop.signum is not None:
          checkpointer.wait()
          progress.message(f"Stopped by signal {stop.signum} after step {step}; checkpoint "
                           f"saved. Run the same command to resume.")
          return TrainResult(step, eval_metrics, interrupted_by=stop.signum,
                             summary=setup.task.summary(eval_metrics) if eval_metrics else "")
      flush()
  except NonFiniteLossError as e:
    checkpointer.wait()
    last_good = checkpointer.latest_step()
    raise NonFiniteLossError(
        f"{e} The last good checkpoint is "
        f"{f'step {last_good}' if last_good else 'none'} in {checkpointer.directory}; nothing "
        "after it was saved. Lower optimizer.learning_rate, set optimizer.grad_clip_norm, or "
        "check the data for bad values.") from None
  finally:
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    progress.close()

  if start_step >= total_steps:  # Already trained this far: report the saved model.
    eval_metrics = evaluate(eval_step, state, data, setup.task, config.data.eval_batch_size,
                              mesh)
  return TrainResult(max(start_step, total_steps), eval_metrics,
                     summary=setup.task.summary(eval_metrics))


def evaluate_workdir(workdir: str | Path,
                     step: int | None = None) -> tuple[int, dict[str, float], str]:
  """Evaluates the checkpoint at `step` (default: the latest) of a run on its evaluation split.

  Returns (step, metrics, the metrics in words).
  """
  workdir = Path(workdir)
  config = workdir_lib.load_config(workdir)
  data = load_data(config)
  workdir_lib.check_tokenizer(workdir, data.tokenizer)
  setup = build(config, data)
  checkpointer = Checkpointer(workdir / workdir_lib.CHECKPOINT_DIR, read_only=True)
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise CheckpointError(f"{workdir} has no checkpoints yet; train it first.")
    step = steps[-1] if step is None else step
    state = checkpointer.restore(step, abstract_loop(setup))["state"]
  finally:
    checkpointer.close()
  eval_step = jax.jit(step_lib.make_eval_step(setup.model, setup.task))
  metrics = evaluate(eval_step, state, data, setup.task, config.data.eval_batch_size, setup.mesh)
  return step, metrics, setup.task.summary(metrics)
