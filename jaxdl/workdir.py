"""The files of a run's workdir, other than checkpoints and metrics.

config.json     the resolved config of the latest run
metadata.json   one record per run (versions, devices, data source, command line)
tokenizer.json  the vocabulary of text data, for evaluation and sampling
metrics.jsonl   see jaxdl.metrics
tensorboard/    TensorBoard event files
checkpoints/    Orbax checkpoints, see jaxdl.checkpoint
profile/        jax.profiler traces of `train.profile_steps`, see jaxdl.profiling
lock.json       while a run trains in it: which process holds it, see jaxdl.workdir_lock
wandb_run.json  with log.wandb: the W&B run a resumed run continues, see jaxdl.wandb_tracker
wandb/          with log.wandb: W&B's local files (offline runs, for `wandb sync`)

A workdir is a local directory or a gs:// path (jaxdl.paths).
"""

import datetime
import importlib.metadata
import json
import os
from pathlib import Path
import platform
import subprocess
import sys
from typing import Any

from etils import epath
import jax
import ml_collections

from jaxdl import config as config_lib
from jaxdl import paths
from jaxdl.errors import CheckpointError
from jaxdl.workdir_lock import LOCK_FILE

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
CHECKPOINT_DIR = "checkpoints"
TOKENIZER_FILE = "tokenizer.json"
_PACKAGES = (
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "orbax-checkpoint",
  "grain",
  "numpy",
  "ml_collections",
)


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  path = paths.workdir_path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise CheckpointError(
      f"{workdir} is not a jaxdl workdir: it has no {CONFIG_FILE}. Pass the "
      "directory a `jaxdl train` run wrote (by default runs/<experiment>)."
    )
  return config_lib.from_json(path.read_text())


def has_checkpoints(workdir: epath.Path) -> bool:
  """Whether a completed checkpoint step exists (Orbax names them by step number)."""
  directory = workdir / CHECKPOINT_DIR
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def check_can_train(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir that holds another model's or setup's checkpoints, or that is not ours.

  Writes nothing: a run that fails before training starts leaves the workdir as it was.
  """
  if workdir.exists() and not workdir.is_dir():
    raise CheckpointError(f"Workdir {workdir} is a file, not a directory; pass another --workdir.")
  config_path = workdir / CONFIG_FILE
  if config_path.is_file():
    if not has_checkpoints(workdir):
      return  # An earlier run stopped before its first save: nothing to mix with.
    saved = config_lib.from_json(config_path.read_text())
    conflicts = config_lib.resume_conflicts(saved, config)
    if conflicts:
      model_keys = [c for c in conflicts if c[0].startswith("model.")]
      what = "a different model" if model_keys else "a different training setup"
      lines = "\n".join(f"  {k}: saved {old!r}, now {new!r}" for k, old, new in conflicts)
      raise CheckpointError(
        f"Workdir {workdir} holds a run of {what}; use a new --workdir, or pass the saved "
        "values below to continue that run.\n"
        f"Resuming it with this config would mix two experiments:\n{lines}\n"
        "What may change on resume: "
        f"{', '.join(sorted(config_lib.RESUMABLE_KEYS | config_lib.RUNTIME_MODEL_KEYS))}, and "
        f"every key of {', '.join(config_lib.RUNTIME_SECTIONS)}."
        + (
          "\nTo switch model.scan_layers, start a new workdir with init.checkpoint= this one: "
          "its layers load in the other form."
          if any(k == "model.scan_layers" for k, _, _ in conflicts)
          else ""
        )
      )
  # A lock file alone is a run that has not written its config yet: jaxdl.workdir_lock refuses it.
  elif workdir.is_dir() and any(not p.name.startswith(LOCK_FILE) for p in workdir.iterdir()):
    raise CheckpointError(
      f"Workdir {workdir} exists, is not empty and is not a jaxdl workdir (no "
      f"{CONFIG_FILE}); jaxdl will not write into it. Pass another --workdir."
    )


def write_config(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    paths.write_atomic(workdir / CONFIG_FILE, config_lib.to_json(config))


def _git_commit(path: Path) -> str | None:
  try:
    out = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None if out.returncode == 0 else None


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def run_record(
  *,
  data_source: dict[str, Any],
  command: list[str] | None,
  start_step: int,
  plan: dict[str, Any] | None = None,
  deterministic: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """What this run ran on and with: enough to reproduce it or explain a difference."""
  return {
    "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "command": command if command is not None else sys.argv,
    "cwd": str(Path.cwd()),
    "start_step": start_step,
    "python": platform.python_version(),
    "platform": platform.platform(),
    "versions": {p: _version(p) for p in _PACKAGES},
    "jaxdl_version": _version("jaxdl"),
    "git_commit": _git_commit(Path(__file__).parent),
    "devices": [str(d) for d in jax.devices()],
    "process_count": jax.process_count(),
    "data": data_source,
    # What each `auto` of the config became on this machine (jaxdl.train.run_plan).
    "plan": plan,
    # train.deterministic and the XLA flags it led to (jaxdl.determinism.record).
    "deterministic": deterministic,
  }


def append_run(workdir: epath.Path, record: dict[str, Any]) -> None:
  """Adds this run to metadata.json, keeping the records of the runs before it."""
  if jax.process_index() != 0:
    return
  path = workdir / METADATA_FILE
  metadata = json.loads(path.read_text()) if path.is_file() else {"runs": []}
  metadata["runs"].append(record)
  paths.write_atomic(path, json.dumps(metadata, indent=2) + "\n")


def last_data_source(workdir: epath.Path) -> dict[str, Any] | None:
  path = workdir / METADATA_FILE
  if not path.is_file():
    return None
  runs = json.loads(path.read_text()).get("runs", [])
  return runs[-1].get("data") if runs else None


def check_tokenizer(workdir: epath.Path, tokenizer: Any) -> None:
  """Refuses data whose vocabulary differs from the one the workdir's checkpoints were trained
  with: token ids would silently mean other characters or words."""
  path = workdir / TOKENIZER_FILE
  if not path.is_file() or not has_checkpoints(workdir):
    return
  if tokenizer is None or tokenizer.to_json() != path.read_text():
    raise CheckpointError(
      f"The data's vocabulary differs from the one {workdir} was trained with ({path}); the "
      "saved model's token ids would mean other tokens. Point data.dir at the text it was "
      "trained on, or use a new --workdir."
    )


def write_tokenizer(workdir: epath.Path, tokenizer: Any) -> None:
  if tokenizer is not None and jax.process_index() == 0:
    paths.write_atomic(workdir / TOKENIZER_FILE, tokenizer.to_json())


def load_tokenizer(workdir: str | os.PathLike) -> Any:
  """The tokenizer a text run saved, to encode prompts and decode samples."""
  from jaxdl.data import tokenizers  # pylint: disable=g-import-not-at-top

  path = paths.workdir_path(workdir) / TOKENIZER_FILE
  if not path.is_file():
    raise CheckpointError(
      f"{workdir} has no {TOKENIZER_FILE}: it was not trained on text, so there is no "
      "vocabulary to sample with; give the workdir of a language model's run (gpt, rnn_lm)."
    )
  return tokenizers.tokenizer_from_json(path.read_text())
