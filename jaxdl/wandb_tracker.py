"""Weights & Biases: a run's scalars, config and metadata in a W&B run (`log.wandb=true`).

The tracker is a sink of jaxdl.metrics.MetricWriter: it receives the same `(step, values)` as each
metrics.jsonl line and logs them at that step, floats as they are (NaN and Inf included). The W&B
config is the run's config as config.json holds it, plus the run's record from metadata.json
(versions, git commit, devices, command, plan) under the key "jaxdl".

The W&B run id is drawn once and kept in WORKDIR/wandb_run.json; a resumed run continues that W&B
run (resume="allow"). Lines a crashed run logged after its last checkpoint stay in W&B: it keeps
what was logged, and ignores the resumed run's new values for those steps (they are logged again
to metrics.jsonl, see jaxdl.metrics.truncate_after).

W&B's own environment variables apply: WANDB_MODE=offline logs to WORKDIR/wandb for a later
`wandb sync`, and WANDB_PROJECT, WANDB_ENTITY, WANDB_TAGS, WANDB_RUN_GROUP and WANDB_NOTES fill
what the config leaves empty. Only process 0 logs; wandb is imported only when a run asks for it.
"""

import json
import os
import secrets
import string
from typing import Any, Mapping

import jax
import ml_collections

from jaxdl import config as config_lib
from jaxdl import paths
from jaxdl.errors import ConfigError

RUN_ID_FILE = "wandb_run.json"
DEFAULT_PROJECT = "jaxdl"
_WHY = "log.wandb=true"


def _log_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """config.log, with any key it lacks (a config built before the key existed) at its default."""
  return {**config_lib.run_config().log.to_dict(), **config.get("log", {})}


def _import_wandb() -> Any:
  from jaxdl.pretrained import files  # pylint: disable=g-import-not-at-top

  return files.require("wandb", "wandb", _WHY)


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError now, before a run touches its workdir, if `log.wandb` is on and wandb is
  missing or a log.wandb_* key holds a value W&B cannot take."""
  settings = _log_settings(config)
  if not settings["wandb"] or jax.process_index() != 0:
    return
  tags = settings["wandb_tags"]
  if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) and t for t in tags):
    raise ConfigError(
      f"log.wandb_tags={tags!r} is not a list of tags; write it as a list of strings, e.g. "
      '\'log.wandb_tags=["baseline","lr3e-4"]\'.'
    )
  _import_wandb()


def _new_run_id() -> str:
  # W&B run ids are short and take letters, digits, - and _; eight base-36 characters as its own.
  alphabet = string.ascii_lowercase + string.digits
  return "".join(secrets.choice(alphabet) for _ in range(8))


def run_id(workdir: str | os.PathLike) -> str:
  """The workdir's W&B run id: the one kept in WORKDIR/wandb_run.json, or a new one written there
  (atomically, before any W&B run exists, so a crash cannot leave a run the workdir forgot)."""
  path = paths.workdir_path(workdir) / RUN_ID_FILE
  if path.exists():
    return json.loads(path.read_text())["id"]
  new_id = _new_run_id()
  paths.write_atomic(path, json.dumps({"id": new_id}) + "\n")
  return new_id


def _local_dir(workdir: str | os.PathLike) -> str | None:
  """The workdir, where W&B keeps its files (WORKDIR/wandb); None (W&B's default, WANDB_DIR or
  ./wandb) for a workdir on object storage, where W&B cannot write."""
  path = paths.workdir_path(workdir)
  return os.fspath(path) if paths.is_local(path) else None


class WandbTracker:
  """Logs each `write` to a W&B run at the given step; `close` finishes the run."""

  def __init__(self, run: Any):
    self.run = run

  def write(self, step: int, values: Mapping[str, float]) -> None:
    self.run.log(dict(values), step=int(step))

  def close(self, exit_code: int = 0) -> None:
    """Finishes the run with `exit_code`, the one `jaxdl train` exits with: 0 done, 128 + the
    signal for a run stopped to resume later (W&B: preempted), anything else failed."""
    if self.run is None:
      return
    run, self.run = self.run, None
    if exit_code >= 128:
      run.mark_preempting()
    run.finish(exit_code=exit_code)


def start(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, metadata: Mapping[str, Any]
) -> WandbTracker | None:
  """A tracker logging to the workdir's W&B run, or None when `log.wandb` is off or this is not
  process 0. `metadata` is this run's record in metadata.json (jaxdl.workdir.run_record)."""
  settings = _log_settings(config)
  if not settings["wandb"] or jax.process_index() != 0:
    return None
  check(config)
  wandb = _import_wandb()
  run_config = json.loads(config_lib.to_json(config))  # As config.json holds it.
  try:
    run = wandb.init(
      project=settings["wandb_project"] or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
      entity=settings["wandb_entity"] or None,
      name=settings["wandb_name"] or paths.workdir_path(workdir).name,
      tags=list(settings["wandb_tags"]) or None,
      config={**run_config, "jaxdl": dict(metadata)},
      dir=_local_dir(workdir),
      id=run_id(workdir),
      resume="allow",
      # A resumed run may change the run keys (train.num_steps, ...) and has a new record.
      allow_val_change=True,
    )
  except wandb.errors.Error as e:
    raise ConfigError(
      f"log.wandb=true: W&B could not start the run ({type(e).__name__}: {e}). Run `wandb "
      "login`, or set WANDB_MODE=offline to log to the workdir and `wandb sync` it later."
    ) from e
  return WandbTracker(run)
