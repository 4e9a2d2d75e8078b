"""Orbax checkpoints of a run: a pytree of arrays plus the Grain iterator's position.

This module knows nothing of models: it saves and restores whatever pytree it is given. Orbax
writes each step into a temporary directory and renames it when complete (on gs://, where renaming
is not atomic, it writes in place and marks the step complete with a commit file last), so a crash
during a save leaves the earlier checkpoints as they were; half-written steps are never restored.
"""

import contextlib
import dataclasses
import logging
import os
from typing import Any, Callable, Mapping

import grain
import jax
import orbax.checkpoint as ocp

from jaxdl import paths
from jaxdl.errors import CheckpointError


@contextlib.contextmanager
def _quiet_loggers(*names: str):
  loggers = [logging.getLogger(name) for name in names]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


class Checkpointer:
  """Saves every so often, keeps the newest `max_to_keep`, restores the latest or a given step."""

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    max_to_keep: int = 3,
    async_save: bool = True,
    read_only: bool = False,
  ):
    self.directory = paths.absolute(paths.workdir_path(directory))
    # Read-only managers warn that they are read-only, which is what we asked for.
    with _quiet_loggers("absl", "orbax") if read_only else contextlib.nullcontext():
      options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
      )
      self._manager = ocp.CheckpointManager(
        self.directory,
        options=options,
        item_handlers={
          "state": ocp.StandardCheckpointHandler(),
          "data": grain.checkpoint.CheckpointHandler(),
        },
      )

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    """Starts saving `state` and the iterator's position; returns before the write ends if async."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)
      ),
      force=True,
    )

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
    """Restores the state at `step` into the structure, shapes and shardings of `abstract_state`.

    `data_iterator`, when given, is moved to where it stood at that step.
    """
    if step not in self.all_steps():
      raise CheckpointError(
        f"There is no checkpoint for step {step} in {self.directory}; ask for one of the "
        f"saved steps: {self.all_steps() or 'none'}."
      )
    target, rebuild = _older_layout(abstract_state, self._manager.item_metadata(step)["state"])
    items = {"state": ocp.args.StandardRestore(target)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
        f"The checkpoint at step {step} in {self.directory} does not fit this run; it was "
        "probably written by a different model or config: train with the config saved next to "
        f"it (config.json), or start a new workdir.\n{e}"
      ) from e
    return rebuild(restored.state)

  def restore_as_saved(self, step: int) -> Any:
    """The pytree saved at `step`, as nested dicts of arrays on the default device.

    For readers that need part of a checkpoint (the parameters, to sample) and not the rest of the
    run that wrote it.
    """
    if step not in self.all_steps():
      raise CheckpointError(
        f"There is no checkpoint for step {step} in {self.directory}; ask for one of the "
        f"saved steps: {self.all_steps() or 'none'}."
      )
    metadata = self._manager.item_metadata(step)["state"]
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
    )
    return self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    ).state

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _older_layout(target: Any, saved: Any) -> tuple[Any, Callable[[Any], Any]]:
  """(`target` in the layout of the `saved` tree's metadata, a function putting a tree restored
  into that layout back into `target`'s). A dataclass field a newer jaxdl added (the train state's
  LoRA adapters) holds None where unused and is absent from an older checkpoint: such a dataclass
  is restored as a dict of the fields the checkpoint has, so the older run resumes."""
  keys = set(saved.keys()) if hasattr(saved, "keys") else None  # Orbax's metadata or a dict.
  child = lambda k: saved[k] if k in keys else None
  if isinstance(target, Mapping) and keys is not None:
    parts = {k: _older_layout(v, child(k)) for k, v in target.items()}
    return (
      type(target)({k: t for k, (t, _) in parts.items()}),
      lambda tree: type(target)({k: parts[k][1](tree[k]) for k in parts}),
    )
  if dataclasses.is_dataclass(target) and not isinstance(target, type) and keys is not None:
    fields = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)}
    added = [k for k, v in fields.items() if v is None and k not in keys]
    parts = {k: _older_layout(v, child(k)) for k, v in fields.items() if k not in added}
    if not added:
      return (
        dataclasses.replace(target, **{k: t for k, (t, _) in parts.items()}),
        lambda tree: dataclasses.replace(tree, **{k: parts[k][1](getattr(tree, k)) for k in parts}),
      )
    return (
      {k: t for k, (t, _) in parts.items()},
      lambda tree: dataclasses.replace(target, **{k: parts[k][1](tree[k]) for k in parts}),
    )
  return target, lambda tree: tree
