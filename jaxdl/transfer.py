"""Transfer learning: copying (part of) another run's parameters into a freshly initialised model.

Pure tree logic, no files: the trainer reads the other run's checkpoint (Checkpointer.
restore_as_saved) and hands the tree here. `init.mapping` is a list of (target prefix, source
prefix) pairs; every source leaf under a source prefix goes to the same path under the target
prefix. Everything that does not fit is reported at once, so one failed start shows every problem.
A source saved with unrolled layers loads into a model that scans them, and the reverse
(jaxdl.train.layer_forms.like_layers); a mapping's prefixes name paths in the target's form.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.errors import CheckpointError, ConfigError
from jaxdl.train import layer_forms, param_paths
from jaxdl.train.param_paths import SEP


def _pairs(mapping: Any, what: str) -> list[tuple[str, str]]:
  """The mapping as (target prefix, source prefix) pairs without outer slashes; [] is [("", "")]."""
  if isinstance(mapping, (str, bytes)) or not isinstance(mapping, Sequence):
    raise ConfigError(
      f"{what}={mapping!r} must be a list of (target prefix, source prefix) pairs, "
      "e.g. [('encoder', 'backbone')], or [] to copy everything."
    )
  pairs = []
  for entry in mapping:
    if (
      isinstance(entry, (str, bytes))
      or not isinstance(entry, Sequence)
      or len(entry) != 2
      or not all(isinstance(p, str) for p in entry)
    ):
      raise ConfigError(
        f"{what} entry {entry!r} must be a (target prefix, source prefix) pair of "
        "strings, e.g. ('encoder', 'backbone'); '' stands for the whole tree."
      )
    pairs.append((entry[0].strip(SEP), entry[1].strip(SEP)))
  return pairs or [("", "")]


def _under(path: str, prefix: str) -> str | None:
  """The rest of `path` below `prefix` ("" for the prefix itself), None when not under it."""
  if not prefix:
    return path
  if path == prefix:
    return ""
  if path.startswith(prefix + SEP):
    return path[len(prefix) + 1 :]
  return None


def _join(prefix: str, rest: str) -> str:
  return SEP.join(p for p in (prefix, rest) if p)


def _entry(i: int, target_prefix: str, source_prefix: str) -> str:
  return f"entry {i} ({target_prefix!r} <- {source_prefix!r})"


def _source_prefixes(paths: list[str]) -> list[str]:
  """Every prefix of every path, the candidates a misspelt source prefix is compared with."""
  prefixes = {SEP.join(p.split(SEP)[:n]) for p in paths for n in range(1, p.count(SEP) + 2)}
  return sorted(prefixes)


def _transfer(
  target: Any, source: Any, pairs: list[tuple[str, str]], where: str, allow_unmatched: bool
) -> tuple[Any, list[str], list[str]]:
  """(new target, copied target paths, problems); `where` names the tree in problems."""
  source = layer_forms.like_layers(source, target)  # Scanned <-> unrolled layers.
  target_leaves = param_paths.named_leaves(target)
  source_leaves = param_paths.named_leaves(source)
  problems: list[str] = []
  new: dict[str, Any] = {}
  written_by: dict[str, str] = {}
  for i, (target_prefix, source_prefix) in enumerate(pairs):
    entry = _entry(i, target_prefix, source_prefix)
    matched = False
    for source_path, value in source_leaves.items():
      rest = _under(source_path, source_prefix)
      if rest is None:
        continue
      matched = True
      target_path = _join(target_prefix, rest)
      if target_path in written_by:
        problems.append(
          f"{where}: target {target_path!r} is written twice: by {written_by[target_path]} "
          f"and by {entry} (from {source_path!r})."
        )
        continue
      written_by[target_path] = f"{entry} (from {source_path!r})"
      if target_path not in target_leaves:
        close = ", ".join(param_paths.example_paths(target_path, target_leaves, n=3)) or "none"
        problems.append(
          f"{where}: source {source_path!r} ({entry}) goes to {target_path!r}, "
          f"which this model does not have; close paths: {close}."
        )
        continue
      old = target_leaves[target_path]
      if np.shape(value) != np.shape(old):
        problems.append(
          f"{where}: source {source_path!r} has shape {tuple(np.shape(value))} but "
          f"target {target_path!r} has shape {tuple(np.shape(old))} ({entry})."
        )
        continue
      new[target_path] = _like(value, old)
    if not matched and not allow_unmatched:
      close = param_paths.example_paths(source_prefix, _source_prefixes(list(source_leaves)), n=4)
      problems.append(
        f"{where}: source prefix {source_prefix!r} of {entry} matches nothing in the "
        f"checkpoint; close prefixes there: {', '.join(close) or 'none'}."
      )
  result = jax.tree_util.tree_map_with_path(
    lambda kp, leaf: new.get(param_paths.path_str(kp), leaf), target
  )
  return result, list(new), problems


def _like(value: Any, old: Any) -> Any:
  """`value` in the dtype of `old` and, for a concrete array, on its devices."""
  value = jnp.asarray(value, dtype=old.dtype)
  if isinstance(old, jax.Array) and not isinstance(old, jax.core.Tracer):
    value = jax.device_put(value, old.sharding)
  return value


def _raise(problems: list[str], what: str) -> None:
  if problems:
    raise CheckpointError(
      f"{what} does not fit ({len(problems)} problem{'s' if len(problems) > 1 else ''}); "
      f"fix {what} (`jaxdl summary` lists this model's parameter paths):\n  - "
      + "\n  - ".join(problems)
    )


def transfer(
  target: Any, source: Any, mapping: Sequence[Sequence[str]], what: str = "init.mapping"
) -> tuple[Any, list[str]]:
  """Copies the leaves of `source` that `mapping` selects into `target`.

  Args:
    target: nested dicts of arrays, e.g. a freshly initialised model's params.
    source: nested dicts of arrays from another run, e.g. its saved params.
    mapping: (target prefix, source prefix) pairs. Each source leaf whose path is the source prefix
      or lies below it ("" matches every path) goes to the target prefix joined with the rest of
      its path. [] means [("", "")]: every source leaf to the same path.
    what: the config key of `mapping`, for error messages.

  Returns:
    (the target with the copied leaves cast to the target's dtypes, the target paths copied).
    Target leaves no mapping covers keep their value.

  Raises:
    CheckpointError: listing every problem at once: a source prefix that matches nothing, a target
      path the model lacks, a shape mismatch, a target path two entries write.
  """
  new, copied, problems = _transfer(target, source, _pairs(mapping, what), "params", False)
  _raise(problems, what)
  return new, copied


def transfer_variables(
  params: Any,
  model_state: dict[str, Any],
  source_state: Any,
  mapping: Sequence[Sequence[str]],
  what: str = "init.mapping",
) -> tuple[Any, dict[str, Any], dict[str, list[str]]]:
  """Applies `mapping` to the parameters and every model-state collection (e.g. batch_stats).

  Args:
    params: the new model's parameters.
    model_state: its other collections, {"batch_stats": ...} or {}.
    source_state: another run's loop state as `Checkpointer.restore_as_saved` returns it,
      {"state": {"params": ..., "model_state": {...}, ...}, ...}.
    mapping: as for `transfer`.
    what: the config key of `mapping`, for error messages.

  Returns:
    (params, model_state, {collection: copied target paths}). A collection only the source has is
    ignored; one only the target has keeps its initial value. A source prefix has to match
    something in the parameters, not in every collection (not every layer keeps statistics).

  Raises:
    CheckpointError: the source is not a jaxdl checkpoint, or (all listed at once) anything
      `transfer` refuses.
  """
  if (
    not isinstance(source_state, dict)
    or not isinstance(source_state.get("state"), dict)
    or ("params" not in source_state["state"])
  ):
    keys = sorted(source_state) if isinstance(source_state, dict) else type(source_state).__name__
    raise CheckpointError(
      f"The checkpoint given by init.checkpoint is not a jaxdl training "
      f"checkpoint: it lacks state/params (its top level holds {keys}). Give "
      "the workdir of a jaxdl run, or one of its checkpoints/STEP."
    )
  pairs = _pairs(mapping, what)
  saved = source_state["state"]
  params, copied_params, problems = _transfer(params, saved["params"], pairs, "params", False)
  copied = {"params": copied_params}
  model_state = dict(model_state)
  source_collections = saved.get("model_state") or {}
  for name in model_state:
    if name in source_collections:
      model_state[name], copied[name], more = _transfer(
        model_state[name], source_collections[name], pairs, name, True
      )
      problems += more
  _raise(problems, what)
  return params, model_state, copied
