"""The training loop: config -> data -> model and optimizer -> resume -> train, log, eval, save.

`train` reads top to bottom; each banner is one stage of a run. The pieces live elsewhere: the model
in jaxdl.nn, the train and eval steps in jaxdl.train.step, dispatching train calls (steps per
call, calls in flight) in jaxdl.train.dispatch, logging each interval's means and throughput in
jaxdl.interval_log, checkpoint I/O in jaxdl.checkpoint, a profiler trace of a few steps in
jaxdl.profiling.
"""

import dataclasses
import functools
import logging
import os
import signal
import threading
import time
from typing import Any, Sequence

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl import (
  compile_cache,
  determinism,
  distributed,
  host_memory,
  interval_log,
  models,
  paths,
  profiling,
  wandb_tracker,
  workdir_lock,
)
from jaxdl import config as config_lib
from jaxdl import data as data_lib
from jaxdl import metrics as metrics_lib
from jaxdl import sweep as sweep_lib
from jaxdl import transfer as transfer_lib
from jaxdl import workdir as workdir_lib
from jaxdl.checkpoint import Checkpointer
from jaxdl.errors import CheckpointError, ConfigError, NonFiniteLossError
from jaxdl.progress import Progress
from jaxdl.train import cpu_devices, dispatch, optim, parallel, run_plan, shardings, tasks
from jaxdl.train import lora as lora_lib
from jaxdl.train import step as step_lib

logger = logging.getLogger("jaxdl")


@dataclasses.dataclass
class TrainResult:
  step: int  # The step training reached (and saved).
  eval_metrics: dict[str, float]  # The last evaluation, {"eval/loss": ..., "eval/accuracy": ...}.
  # The signal that stopped training early (0: one sent to another process of the run), if any.
  interrupted_by: int | None = None
  summary: str = ""  # The last evaluation in words, e.g. "test accuracy 0.9905 (9905/10000), ...".


@dataclasses.dataclass
class Setup:
  """What a run needs besides its loop: everything derivable from the config and the data."""

  model: Any
  task: Any  # jaxdl.train.tasks: which batch entries the model reads, the loss, the metrics.
  tx: Any
  schedule: Any
  layout: parallel.Layout  # Devices, and where the loop state and batches live on them.
  plan: run_plan.RunPlan  # Every `auto` settled: steps, batch sizes, steps per call, ...
  train_step: Any  # The pure step function, not yet jitted.
  init_loop: Any  # () -> the loop state of step 0, {"state", "metric_sums", "rng"}, laid out.
  # One run or a sweep's members (jaxdl.sweep). In a sweep every array of the loop state and of a
  # batch has a leading member axis, and `update`/`eval_step` run over it.
  runs: sweep_lib.Runs = None
  update: Any = None  # Pure (state, sums, batch, rng) -> (state, sums, loss): a step, accumulated.
  eval_step: Any = None  # Pure (state, batch) -> metric sums over the batch.
  init_fn: Any = None  # Pure () -> the loop state of step 0 in its global (saved) form.
  loop_shapes: Any = None  # jax.eval_shape(init_fn), traced once.


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  return data_lib.load_from_config(
    config.data, allow_download=None if config.data.download else False
  )


def _misfit(config: ml_collections.ConfigDict, error: ValueError) -> ConfigError:
  """The error for a model that fails when traced on the data (e.g. a context longer than GPT's
  block_size)."""
  name = config.model.get("cls") or config.model.name
  return ConfigError(f"model {name!r} does not fit the data: {error}")


def build(
  config: ml_collections.ConfigDict, data: data_lib.Dataset, training: bool = True
) -> Setup:
  """The run's model, task, optimizer, layout, plan and pure step functions. `training=False`
  (evaluating a checkpoint) leaves out what only a training loop needs to settle."""
  layout = parallel.make_layout(config.parallel)
  model, kernels = run_plan.settle_kernels(
    models.build_model(config.model, data.model_hints, kernels=config.runtime.kernels)
  )
  try:
    task = tasks.make_task(data, label_smoothing=config.train.label_smoothing)
  except ValueError as e:
    raise ConfigError(f"train.label_smoothing: {e}") from e
  example_inputs = task.model_inputs(data.example_batch(1))
  try:
    layout.name_parameters(shardings.param_axes(model, example_inputs))
  except ValueError as e:
    raise _misfit(config, e) from e
  try:  # Tracing the model (steps per call asks its layers) shows a misfit as a config error.
    plan = run_plan.settle(config, data, layout, model, example_inputs, training)
  except ValueError as e:
    raise _misfit(config, e) from e
  total_steps = plan.total_steps
  lora = lora_lib.settings(config.model.get("lora"))  # None: off.
  make_step = functools.partial(
    step_lib.make_train_step,
    grad_accum_steps=plan.grad_accum_steps,
    grad_accum_unroll=plan.grad_accum_unroll,
    collectives=layout.collectives,
    lora=lora,
  )
  tx, schedule = optim.make_optimizer(config.optimizer, total_steps)
  train_step = make_step(model, tx, schedule, task, config.train.ema_decay)
  batch_shapes = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), data.example_batch(plan.batch_size)
  )

  def step_fn_and_tx(hparams):
    """The train step and optimizer of a run; a sweep member's optimizer is built with its own
    values of the swept keys (traced scalars; {} in a single run or a sweep of seeds only)."""
    if not hparams:
      return train_step, tx
    member_tx, member_schedule = optim.make_optimizer(
      sweep_lib.with_values(config.optimizer, "optimizer", hparams), total_steps
    )
    model_values = sweep_lib.with_values({}, "model", hparams)  # Dropout rates.
    member_model = (
      model
      if not model_values
      else models.build_model(
        {**config.model, **model_values}, data.model_hints, kernels=kernels or "auto"
      )
    )
    return (
      make_step(member_model, member_tx, member_schedule, task, config.train.ema_decay),
      member_tx,
    )

  def init_loop(seed, hparams):
    """Everything a resumed run needs to continue bit for bit, besides the data iterator."""
    step_fn, run_tx = step_fn_and_tx(hparams)
    root_key = jax.random.key(seed)
    state = step_lib.create_train_state(
      model,
      run_tx,
      jax.random.fold_in(root_key, 0),
      *example_inputs,
      ema=config.train.ema_decay > 0,
      lora=lora,
    )
    rng = jax.random.fold_in(root_key, 1)
    metric_shapes = jax.eval_shape(layout.collectives.traceable(step_fn), state, batch_shapes, rng)[
      1
    ]
    return {
      "state": state,
      "metric_sums": step_lib.init_metric_sums(metric_shapes),
      "rng": jax.random.key_data(rng),
    }  # Raw key data: checkpoints store plain arrays.

  def update(state, sums, batch, rng, hparams):
    """One train step, and its metrics added to the interval's sums."""
    state, metrics = step_fn_and_tx(hparams)[0](state, batch, rng)
    return state, step_lib.accumulate_metrics(sums, metrics, state.step), metrics["train/loss"]

  runs = sweep_lib.runs(config)
  init, update = runs.init(init_loop), runs.update(update)
  eval_step = runs.eval_step(step_lib.make_eval_step(model, task, lora))

  try:  # Tracing the model once turns a misfit (e.g. a context longer than GPT's block_size)
    loop_shapes = jax.eval_shape(init)  # into a config error now rather than a traceback later.
  except ValueError as e:
    raise _misfit(config, e) from e
  return Setup(
    model,
    task,
    tx,
    schedule,
    layout,
    plan,
    train_step,
    functools.partial(layout.init, init, loop_shapes),
    runs,
    update,
    eval_step,
    init,
    loop_shapes,
  )


def abstract_loop(setup: Setup) -> Any:
  """Shapes, dtypes and shardings of the loop state, to restore a checkpoint into."""
  return setup.layout.abstract_saved(setup.loop_shapes)


def evaluate(
  eval_step, state, data: data_lib.Dataset, setup: Setup, batch_size: int
) -> dict[str, float]:
  """The task's metrics over every example of the evaluation split, each counted exactly once;
  for a sweep, each member's and their mean and std (jaxdl.sweep.aggregate).

  `eval_step` is `setup.layout.compile_eval(setup.eval_step)`; every process reads the whole
  split and evaluates its share of each batch (the same batches for every sweep member).
  """
  layout, sums = setup.layout, None
  for batch in data.eval_batches(batch_size=batch_size):
    out = eval_step(state, layout.put_batch(layout.local_rows(batch)))
    sums = out if sums is None else jax.tree.map(np.add, sums, out)
  return setup.runs.metrics(sums, setup.task.eval_metrics)


def describe(setup: Setup, metrics: dict[str, float]) -> str:
  """An evaluation in words; for a sweep, the mean and then one line per member."""
  return setup.runs.describe(metrics, setup.task.summary)


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


def _source_checkpoint(path_text: str) -> tuple[epath.Path, int | None]:
  """(checkpoint directory, step or None for the latest) that `init.checkpoint` names: a workdir,
  its checkpoints/ directory, or one checkpoint, checkpoints/STEP."""
  path = paths.workdir_path(path_text).expanduser()
  if path.name.isdigit() and path.parent.name == workdir_lib.CHECKPOINT_DIR:
    return path.parent, int(path.name)
  if (path / workdir_lib.CHECKPOINT_DIR).is_dir():
    return path / workdir_lib.CHECKPOINT_DIR, None
  if path.name == workdir_lib.CHECKPOINT_DIR and path.is_dir():
    return path, None
  raise CheckpointError(
    f"init.checkpoint={path_text!r} is not a jaxdl workdir or checkpoint: "
    f"{'it does not exist' if not path.exists() else 'it has no checkpoints/'}."
    " Give the workdir of a finished run, or WORKDIR/checkpoints/STEP."
  )


def _checkpoint_source(init_config: ml_collections.ConfigDict) -> Any:
  """The loop state saved in the run that `init.checkpoint` names (its latest or given step); a
  LoRA run's parameters with its adapters merged in."""
  directory, step = _source_checkpoint(init_config.checkpoint)
  checkpointer = Checkpointer(directory, read_only=True)
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise CheckpointError(
        f"init.checkpoint: {directory} holds no checkpoints yet; train that run first, or "
        "point init.checkpoint at a run that has saved one."
      )
    source = checkpointer.restore_as_saved(steps[-1] if step is None else step)
  finally:
    checkpointer.close()
  state = source.get("state") if isinstance(source, dict) else None
  if isinstance(state, dict) and state.get("adapters"):
    lora = workdir_lib.load_config(directory.parent).model.get("lora") or {}
    state = {**state, "params": lora_lib.merge(state["params"], state["adapters"], lora)}
    source = {**source, "state": state}
  return source


def _pretrained_source(init_config: ml_collections.ConfigDict) -> Any:
  """The variables of the published checkpoint `init.pretrained` names, in the form of a saved
  loop state (the run's model has its architecture: `complete_from_pretrained`)."""
  from jaxdl import pretrained  # Its formats' packages are optional extras.

  variables = pretrained.load_variables(init_config.pretrained)
  model_state = {k: v for k, v in variables.items() if k != "params"}
  return {"state": {"params": variables["params"], "model_state": model_state}}


def _init_from_source(
  loop: dict[str, Any], source: Any, init_config: ml_collections.ConfigDict, runs: sweep_lib.Runs
) -> dict[str, Any]:
  """The freshly initialised loop state (global form) with (part of) another run's or a published
  checkpoint's parameters and BatchNorm statistics copied in (jaxdl.transfer); every sweep member
  starts from the same copy."""
  copied = {}

  def transfer(run_state):
    params, model_state, copied["arrays"] = transfer_lib.transfer_variables(
      run_state.params, run_state.model_state, source, list(init_config.mapping)
    )
    return run_state.replace(
      params=params,
      model_state=model_state,
      # A copy: the train step donates the state, and one buffer cannot be donated twice. Under
      # LoRA the moving average is of the adapters, which start as they were.
      ema_params=run_state.ema_params
      if run_state.ema_params is None or run_state.adapters is not None
      else jax.tree.map(jnp.copy, params),
    )

  state = loop["state"]
  new_state = runs.map_states(transfer, state)
  logger.info(
    "Initialised %d parameter arrays from %s.",
    len(copied["arrays"]["params"]),
    init_config.checkpoint or init_config.pretrained,
  )
  # Back where each array was (replicated, or split by FSDP).
  return {
    **loop,
    "state": jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), new_state, state),
  }


def complete_from_pretrained(config: ml_collections.ConfigDict) -> None:
  """With init.pretrained, the model section gets the checkpoint's architecture (the arguments
  the config leaves unset), and data.tokenizer="pretrained" the checkpoint's folder, so the saved
  config is complete: a resumed run, `jaxdl eval` and `jaxdl export` need no more than it."""
  path = config.get("init", {}).get("pretrained")
  if config.data.get("tokenizer") == "pretrained" and not path:
    raise ConfigError(
      'data.tokenizer="pretrained" reads the tokenizer of init.pretrained, which is unset: '
      "set init.pretrained=PATH (a model folder with its tokenizer), or name a tokenizer."
    )
  if not path:
    return
  from jaxdl import pretrained  # Its formats' packages are optional extras.

  if config.data.get("tokenizer") == "pretrained":
    config.data.tokenizer = str(pretrained.files.model_folder(path))
  section = pretrained.model_section(path, config.model.to_dict())
  with config.unlocked():
    config.model = ml_collections.ConfigDict(section)


def split_cpu_host(config: ml_collections.ConfigDict) -> None:
  """Applies parallel.cpu_devices (jaxdl.train.cpu_devices) before JAX starts; the count must
  divide the micro-batch (or batch) and the eval batch."""
  cpu_devices.configure(
    config.parallel,
    [run_plan.micro_batch_size(config), config.data.eval_batch_size],
    sweep=sweep_lib.runs(config).member_axis,
  )


def _configure_host(config: ml_collections.ConfigDict) -> None:
  """What must be settled before any device is used: malloc settings (before XLA starts its
  threads), XLA's flags, multi-host, how many devices this CPU host shows, the compilation
  cache."""
  host_memory.configure(config.runtime.reuse_host_memory)
  determinism.configure(config.train.deterministic)
  distributed.initialize(config.parallel)
  split_cpu_host(config)
  compile_cache.configure(config.runtime.compilation_cache)


def _check_same_data(workdir: epath.Path, data: data_lib.Dataset) -> None:
  """CheckpointError if the workdir's checkpoints were trained on data of another size: the saved
  data position would not fit."""
  if not workdir_lib.has_checkpoints(workdir):
    return
  saved = workdir_lib.last_data_source(workdir)
  if saved and saved.get("num_train") != data.source.get("num_train"):
    raise CheckpointError(
      f"Workdir {workdir} was trained on {saved.get('num_train')} training examples "
      f"(or tokens, for text) from {saved.get('path', 'its data')} ({saved.get('kind')}); this "
      f"run has {data.source.get('num_train')} ({data.source.get('kind')}); the saved data "
      "position would not fit. Point data.dir at the data it was trained on, or use a new "
      "--workdir."
    )


def _train_batches(setup: Setup, config: ml_collections.ConfigDict, data: data_lib.Dataset) -> Any:
  """This process's train batches (a sweep's stacked: each member reads its own seed's order)."""

  shard_index, shard_count = setup.layout.data_shard()

  def batches_for(seed: int):
    # The data seed must fit 32 bits; derive it from the run seed, apart from the model's keys.
    data_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
    return iter(
      data.train_batches(
        batch_size=setup.plan.batch_size // shard_count,
        seed=data_seed,
        shard_index=shard_index,
        shard_count=shard_count,
        num_threads=config.runtime.data_threads,
        prefetch=config.runtime.data_prefetch,
      )
    )

  return setup.runs.batches(batches_for)


def _write_workdir_files(
  workdir: epath.Path, config: ml_collections.ConfigDict, data: data_lib.Dataset
) -> None:
  workdir_lib.check_tokenizer(workdir, data.tokenizer)
  workdir_lib.write_config(workdir, config)  # Only once the config is known to work.
  workdir_lib.write_tokenizer(workdir, data.tokenizer)


def _initial_loop(
  checkpointer: Checkpointer,
  setup: Setup,
  config: ml_collections.ConfigDict,
  train_iter: Any,
  workdir: epath.Path,
) -> tuple[int, dict[str, Any]]:
  """(start step, loop state in the run layout): the latest checkpoint's (which also restores the
  data position), step 0's with `init.checkpoint`'s or `init.pretrained`'s parameters copied in,
  or step 0's."""
  layout, start_step = setup.layout, checkpointer.latest_step() or 0
  if start_step:
    logger.info("Resuming %s from step %d.", workdir, start_step)
    return start_step, layout.from_saved(
      checkpointer.restore(start_step, abstract_loop(setup), train_iter)
    )
  init_config = config.get("init", {})
  if init_config.get("checkpoint") and init_config.get("pretrained"):
    raise ConfigError(
      "init.checkpoint and init.pretrained are both set; a run starts from one of them: "
      "clear the other."
    )
  if init_config.get("checkpoint") or init_config.get("pretrained"):
    source = (
      _checkpoint_source(init_config)
      if init_config.get("checkpoint")
      else _pretrained_source(init_config)
    )
    loop = layout.to_saved(setup.init_loop())
    return 0, layout.from_saved(_init_from_source(loop, source, init_config, setup.runs))
  return 0, setup.init_loop()


def _next_stop(step: int, periods: tuple[int, ...], total_steps: int) -> int:
  """The first step after `step` where the host needs the state: to log (and reset the metric
  sums), evaluate, save, or end. A call of several steps never runs past it."""
  return min([total_steps] + [(step // p + 1) * p for p in periods if p])


def _diverged(error: NonFiniteLossError, checkpointer: Checkpointer) -> NonFiniteLossError:
  """`error`, saying which checkpoint is the last good one and what to try."""
  checkpointer.wait()
  last_good = checkpointer.latest_step()
  return NonFiniteLossError(
    f"{error} The last good checkpoint is {f'step {last_good}' if last_good else 'none'} in "
    f"{checkpointer.directory}; nothing after it was saved. Lower optimizer.learning_rate, set "
    "optimizer.grad_clip_norm, or check the data for bad values."
  )


def _logs(
  workdir: epath.Path,
  config: ml_collections.ConfigDict,
  data: data_lib.Dataset,
  setup: Setup,
  start_step: int,
  show_progress: bool,
  record: dict[str, Any],
):
  """(metrics writer, progress display, the interval log writing to both) of a run; the writer
  hands each write to the W&B tracker too with log.wandb (`record`: this run's metadata)."""
  tracker = wandb_tracker.start(config, workdir, record)
  writer = metrics_lib.MetricWriter(workdir, sinks=[tracker] if tracker else [])
  progress = Progress(
    total_steps=setup.plan.total_steps,
    initial_step=start_step,
    enabled=show_progress,
    is_main_process=jax.process_index() == 0,
  )
  intervals = interval_log.IntervalLog(
    writer,
    progress,
    layout=setup.layout,
    runs=setup.runs,
    start_step=start_step,
    examples_per_step=setup.plan.batch_size * setup.runs.count,
    tokens_per_example=setup.task.tokens_per_example(data.example_batch(1)),
    compute_dtype=config.model.get("dtype") or "float32",
    steps_per_call=setup.plan.steps_per_call,
  )
  return writer, progress, intervals


def _stopped(
  step: int, signum: int | None, eval_metrics: dict[str, float], setup: Setup, progress: Progress
) -> TrainResult:
  """The result of a run stopped by a signal (to this process, or to another: signum None) after
  `step`, whose checkpoint is saved."""
  cause = f"signal {signum}" if signum else "a signal to another process"
  progress.message(
    f"Stopped by {cause} after step {step}; checkpoint saved. Run the same command to resume."
  )
  return TrainResult(
    step,
    eval_metrics,
    interrupted_by=signum or 0,
    summary=describe(setup, eval_metrics) if eval_metrics else "",
  )


def train(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  command: list[str] | None = None,
  show_progress: bool = True,
) -> TrainResult:
  """Trains `config` in `workdir`, continuing from its latest checkpoint if it has one."""
  # ---------------------------------------------------------------- Setup
  workdir = paths.workdir_path(workdir)
  _configure_host(config)
  complete_from_pretrained(config)
  wandb_tracker.check(config)  # A missing wandb fails now, not after loading data and compiling.
  workdir_lib.check_can_train(workdir, config)
  # Until the run ends, another run in this workdir is refused (jaxdl.workdir_lock).
  with workdir_lock.hold(workdir, command):
    return _train_holding_workdir(config, workdir, command, show_progress)


def _train_holding_workdir(
  config: ml_collections.ConfigDict,
  workdir: epath.Path,
  command: list[str] | None,
  show_progress: bool,
) -> TrainResult:
  """`train`, once the workdir is checked and this run holds its lock."""
  data = load_data(config)
  _check_same_data(workdir, data)
  setup = build(config, data)
  layout, runs, plan, cfg = setup.layout, setup.runs, setup.plan, config.train
  total_steps, steps_per_call = plan.total_steps, plan.steps_per_call
  profile_window = profiling.window(cfg.profile_steps, total_steps)
  train_iter = _train_batches(setup, config, data)
  _write_workdir_files(workdir, config, data)
  eval_step = layout.compile_eval(setup.eval_step)
  # Outputs keep the inputs' layout, so the train call never compiles twice.
  reset_sums = layout.compile_elementwise(step_lib.reset_metric_sums, layout.replicated())
  calls = dispatch.TrainCalls(
    layout,
    setup.update,
    setup.loop_shapes,
    steps_per_call,
    train_iter,
    member_axis=runs.member_axis,
  )

  # ---------------------------------------------------------------- Resume
  checkpointer = Checkpointer(
    workdir / workdir_lib.CHECKPOINT_DIR,
    max_to_keep=cfg.max_checkpoints,
    async_save=config.runtime.async_checkpointing,
  )
  start_step, loop = _initial_loop(checkpointer, setup, config, train_iter, workdir)
  if jax.process_index() == 0:
    metrics_lib.truncate_after(workdir, start_step)
  record = workdir_lib.run_record(
    data_source=data.source,
    command=command,
    start_step=start_step,
    plan=plan.record(),
    deterministic=determinism.record(cfg.deterministic),
  )
  workdir_lib.append_run(workdir, record)
  state, sums, rng_data = loop["state"], loop["metric_sums"], loop["rng"]
  rng = jax.random.wrap_key_data(rng_data)

  # ---------------------------------------------------------------- Train, log, evaluate, save
  writer, progress, intervals = _logs(
    workdir, config, data, setup, start_step, show_progress, record
  )
  eval_every = cfg.eval_every_steps or plan.steps_per_epoch
  stop_periods = (cfg.log_every_steps, eval_every, cfg.checkpoint_every_steps)
  eval_metrics: dict[str, float] = {}
  step = start_step  # Counts the updates done, here and in the checkpoints.
  stop = _StopSignal()
  trace = profiling.Trace(
    profile_window,
    workdir / profiling.DIRECTORY,
    start_step=start_step,
    wait=functools.partial(calls.wait_until_running_at_most, 0),
    untimed=intervals.untimed,
  )
  exit_code = 1  # As `jaxdl train` will exit; a tracker records how the run ended.
  try:
    with stop, trace:
      if step < total_steps:  # Apart from the first call, so that throughput leaves it out.
        compile_start = time.perf_counter()
        intervals.compiled(calls.compile(state, sums, rng), since=compile_start)
      while step < total_steps:
        num_steps = min(steps_per_call, _next_stop(step, stop_periods, total_steps) - step)
        num_steps = trace.clip(step, num_steps)  # Calls stop at the profiled window's edges.
        with trace.call(step, num_steps):
          state, sums = calls.run(state, sums, rng, num_steps)
        step += num_steps
        intervals.flush()  # Reads the previous call's metrics while this one runs.

        at_log = step % cfg.log_every_steps == 0
        if at_log or step == total_steps:
          intervals.end_interval(step, sums)
          # A partial interval at the end stays in the sums, so a resumed run logs the same
          # means at the next log step as an uninterrupted one.
          if at_log:
            sums = reset_sums(sums)

        if step % eval_every == 0 or step == total_steps:
          intervals.flush()
          # The train steps still running count as training time, not as the eval's.
          calls.wait_until_running_at_most(0)
          with intervals.untimed():  # Training throughput leaves evals out.
            eval_metrics = evaluate(eval_step, state, data, setup, plan.eval_batch_size)
          writer.write(step, eval_metrics)
          progress.message(f"step {step}: {describe(setup, eval_metrics)}")

        # A signal reaches one process; all of them save at the same step and stop.
        stopping = distributed.any_process(stop.signum is not None)
        checkpoint_due = cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0
        if checkpoint_due or step == total_steps or stopping:
          intervals.flush()
          # Never save a state that a NaN has reached.
          interval_log.raise_if_nonfinite(layout.to_host(sums), runs)
          saved = layout.to_saved({"state": state, "metric_sums": sums, "rng": rng_data})
          writer.sync()  # metrics.jsonl holds each line up to the checkpoint (on gs:// too).
          checkpointer.save(step, saved, train_iter)
        if stopping:
          checkpointer.wait()
          exit_code = 128 + (stop.signum or 0)
          return _stopped(step, stop.signum, eval_metrics, setup, progress)
      intervals.flush()
    exit_code = 0
  except NonFiniteLossError as e:
    raise _diverged(e, checkpointer) from None
  finally:
    checkpointer.wait()
    checkpointer.close()
    writer.close(exit_code)
    progress.close()

  if start_step >= total_steps:  # Already trained this far: report the saved model.
    eval_metrics = evaluate(eval_step, state, data, setup, plan.eval_batch_size)
  return TrainResult(
    max(start_step, total_steps), eval_metrics, summary=describe(setup, eval_metrics)
  )


def evaluate_workdir(
  workdir: str | os.PathLike, step: int | None = None, overrides: Sequence[str] = ()
) -> tuple[int, dict[str, float], str]:
  """Evaluates the checkpoint at `step` (default: the latest) of a run on its evaluation split.

  `overrides` ("key=value") change run keys only (config.resumable), e.g. the mesh of a run
  trained on more devices than this machine has. Returns (step, metrics, the metrics in words).
  """
  workdir = paths.workdir_path(workdir)
  config = workdir_lib.load_config(workdir)
  recipe = [o.partition("=")[0] for o in overrides if not config_lib.resumable(o.partition("=")[0])]
  if recipe:
    raise ConfigError(
      f"{', '.join(recipe)} belong to the recipe the checkpoint was trained with and cannot "
      "change at evaluation; drop them (only run keys may: parallel.*, runtime.*, data.dir, "
      "data.eval_batch_size, ...)."
    )
  config_lib.apply_overrides(config, list(overrides))
  # The devices the run trained on, so that `jaxdl eval` reproduces its evaluation exactly.
  split_cpu_host(config)
  data = load_data(config)
  workdir_lib.check_tokenizer(workdir, data.tokenizer)
  setup = build(config, data, training=False)
  checkpointer = Checkpointer(workdir / workdir_lib.CHECKPOINT_DIR, read_only=True)
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise CheckpointError(f"{workdir} has no checkpoints yet; train it first.")
    step = steps[-1] if step is None else step
    state = setup.layout.from_saved(checkpointer.restore(step, abstract_loop(setup)))["state"]
  finally:
    checkpointer.close()
  metrics = evaluate(
    setup.layout.compile_eval(setup.eval_step), state, data, setup, setup.plan.eval_batch_size
  )
  return step, metrics, describe(setup, metrics)
