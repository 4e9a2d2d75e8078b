"""Published checkpoints in and out: Hugging Face, timm, torchvision and torch state dicts.

    model, variables = jaxdl.pretrained.load("path/to/gpt2")   # a folder or a file
    logits = model.apply(variables, tokens)
    jaxdl.pretrained.save(model, variables, "out/", format="hf")

Nothing is downloaded: a user fetches a checkpoint once (a Hugging Face folder or cache snapshot,
a .pth file) and points at it. Safetensors are read without torch; torch is needed only for its
own pickles (.bin/.pth). The families jaxdl reads are listed in `FAMILIES`.
"""

import json
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import numpy as np

from jaxdl import models
from jaxdl.errors import CheckpointError, ConfigError

# Each family module registers its families when imported.
from jaxdl.pretrained import (  # noqa: F401
  files,
  hf_bert,
  hf_gpt2,
  hf_vit,
  rules,
  timm_vit,
  torch_rnn,
  torchvision_cnn,
)
from jaxdl.pretrained.families import FAMILIES, FORMATS, Family, detect, exporter
from jaxdl.train import layer_forms, param_paths

__all__ = [
  "FAMILIES",
  "FORMATS",
  "load",
  "load_variables",
  "model_config_of",
  "model_section",
  "save",
]

# Model arguments a run may set differently from the checkpoint: how it trains and computes, not
# what the weights mean. `num_classes` may differ when init.mapping leaves the head out.
TRAINING_ARGUMENTS = frozenset(
  {
    "dropout_rate",
    "attention_dropout_rate",
    "dtype",
    "param_dtype",
    "attention_impl",
    "remat",
    "scan_layers",
    "kernels",
    "num_classes",
  }
)


def _read(path: str | Path) -> tuple[Family, dict | None, dict[str, np.ndarray]]:
  config = files.read_config(path)
  tensors = files.read_tensors(path)
  family = detect(config, set(tensors), str(path))
  return family, config, family.normalize(dict(tensors))


def model_config_of(path: str | Path) -> dict[str, Any]:
  """The jaxdl `model` section the checkpoint at `path` makes ({"name": "gpt", ...})."""
  family, config, tensors = _read(path)
  return family.model_config(config, tensors)


def _shapes(model: nn.Module, family: Family) -> dict[str, Any]:
  example = family.example_input(model)
  shapes = jax.eval_shape(
    lambda: nn.unbox(model.init(jax.random.key(0), np.zeros(example.shape, example.dtype)))
  )
  return param_paths.named_leaves(shapes)


def _variables(model: nn.Module, family: Family, tensors: Mapping[str, Any], what: str) -> dict:
  """The model's variables made from `tensors`; a scanned model gets its layers stacked."""
  scanned = getattr(model, "scan_layers", False)
  unrolled = model.clone(scan_layers=False) if scanned else model
  variables = rules.to_variables(
    family.rules(unrolled),
    tensors,
    _shapes(unrolled, family),
    what=what,
    ignore=family.ignore,
  )
  return layer_forms.scan_layers(variables, family.layer_prefix) if scanned else variables


def model_section(path: str | Path, model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The run's `model` section completed from the checkpoint at `path` (init.pretrained): every
  architecture argument the config leaves unset is the checkpoint's; one the config sets must
  equal it (TRAINING_ARGUMENTS may differ). The model may be another head on the same body, e.g.
  "bert_classifier" on a "bert_mlm" checkpoint. `num_classes` comes from the data as usual.

  Raises:
    ConfigError: naming every argument on which the config disagrees with the checkpoint.
  """
  checkpoint = model_config_of(path)
  target, preset, what = models.resolve_model(model_config)
  accepted, _ = models.callable_arguments(target)
  section, mismatches = dict(model_config), []
  for key, value in checkpoint.items():
    if key in ("name", "cls") or key == "num_classes":
      continue
    configured = section.get(key, preset.get(key))
    if key not in accepted:
      mismatches.append(f"model {what!r} has no argument {key} (the checkpoint has {value!r})")
    elif configured is None:
      section[key] = value
    elif configured != value and key not in TRAINING_ARGUMENTS:
      mismatches.append(f"model.{key}={configured!r} but the checkpoint has {value!r}")
  if mismatches:
    raise ConfigError(
      f"The model config does not match init.pretrained={str(path)!r} "
      f"({checkpoint['name']!r}; {len(mismatches)} mismatch{'es' if len(mismatches) > 1 else ''}"
      "). Remove these keys from the config (the checkpoint's values are used), or pick the "
      "model the checkpoint holds:\n  - " + "\n  - ".join(mismatches)
    )
  return section


def load(path: str | Path, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
  """(model, variables) of the checkpoint at `path`; `model.apply(variables, inputs)` gives what
  the checkpoint's head gives. `overrides` set training arguments (dtype, remat, scan_layers,
  dropout_rate, ...); an architecture argument that disagrees with the checkpoint is refused."""
  family, config, tensors = _read(path)
  section = family.model_config(config, tensors)
  bad = sorted(k for k in overrides if k not in TRAINING_ARGUMENTS - {"num_classes"})
  if bad:
    raise ConfigError(
      f"pretrained.load: {bad} describe the architecture, which comes from the checkpoint; "
      f"only {sorted(TRAINING_ARGUMENTS - {'num_classes'})} may be given."
    )
  model = models.build_model({**section, **overrides})
  return model, _variables(model, family, tensors, f"Checkpoint {str(path)!r}")


def load_variables(path: str | Path) -> dict[str, Any]:
  """The checkpoint's variables in the form of its own jaxdl model (what `load` gives, without
  the model); init.pretrained copies them into the run's model with init.mapping."""
  return load(path)[1]


def save(
  model: nn.Module,
  variables: Mapping[str, Any],
  out: str | Path,
  format: str = "hf",
  *,
  overwrite: bool = False,
) -> list[Path]:
  """Writes `variables` of `model` as a `format` checkpoint into the folder `out`: config.json
  and model.safetensors for "hf"/"timm", model.pth (and model.safetensors) for "torchvision" and
  "torch". Returns the files written. Files already there are never overwritten unless
  `overwrite`."""
  family = exporter(model, format)
  variables = nn.unbox(dict(variables))
  variables = {k: v for k, v in variables.items() if k != "cache"}
  if getattr(model, "scan_layers", False):
    variables = layer_forms.unscan_layers(variables, family.layer_prefix)
    model = model.clone(scan_layers=False)
  tensors = rules.to_tensors(family.rules(model), variables)
  config = family.export_config(model)
  out = Path(out).expanduser()
  names = ["model.safetensors"] + (["config.json"] if config is not None else [])
  if format in ("torchvision", "torch"):
    names.append("model.pth")
  targets = [out / name for name in names]
  existing = [str(t) for t in targets if t.exists()]
  if existing and not overwrite:
    raise CheckpointError(
      f"Export would overwrite {existing}; choose another --out folder or remove them first."
    )
  out.mkdir(parents=True, exist_ok=True)
  files.write_safetensors(tensors, out / "model.safetensors")
  if config is not None:
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  if format in ("torchvision", "torch"):
    files.write_torch(tensors, out / "model.pth")
  return targets
