"""Checkpoint families: how one kind of published checkpoint maps onto one jaxdl model.

A `Family` says how to recognise its checkpoints (from config.json and the tensor names), which
jaxdl model section they make, and the conversion table (jaxdl.pretrained.rules) both ways. Each
family module registers its families with `register`; `detect` picks the family of a checkpoint
and `exporter` the family that writes a jaxdl model in a format.
"""

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import numpy as np

from jaxdl.errors import CheckpointError
from jaxdl.pretrained.rules import Rule

Tensors = Mapping[str, np.ndarray]


def _never(model: nn.Module) -> bool:
  return False


@dataclasses.dataclass(frozen=True)
class Family:
  """One kind of reference checkpoint.

  Attributes:
    name: e.g. "hf_gpt2", "torchvision_resnet".
    format: what `jaxdl export --format` calls it: "hf", "torchvision", "timm" or "torch".
    detect: (config.json or None, tensor names) -> whether the checkpoint is of this family.
    model_config: (config.json or None, tensors) -> the jaxdl `model` section it makes, e.g.
      {"name": "gpt", "vocab_size": 50257, ...}: the architecture comes from the checkpoint.
    rules: the built model -> its conversion table, for the model's unrolled layers.
    example_input: the built model -> an input's ShapeDtypeStruct, to trace `init` with.
    normalize: tensors -> tensors under the names `rules` use (strip a "transformer." prefix,
      rename old "gamma"/"beta", ...).
    ignore: shell patterns of tensor names that hold no weights (causal-mask buffers).
    exports: the model -> whether this family writes it (for `jaxdl export`).
    export_config: the model -> the config.json to write beside the weights (None: none).
    layer_prefix: the unrolled layers' name prefix in jaxdl ("block", or "blocks" for ViT), to
      convert a model built with scan_layers=True.
  """

  name: str
  format: str
  detect: Callable[[dict | None, set[str]], bool]
  model_config: Callable[[dict | None, Tensors], dict[str, Any]]
  rules: Callable[[nn.Module], list[Rule]]
  example_input: Callable[[nn.Module], jax.ShapeDtypeStruct]
  normalize: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] = lambda t: t
  ignore: tuple[str, ...] = ()
  exports: Callable[[nn.Module], bool] = _never
  export_config: Callable[[nn.Module], dict | None] = lambda model: None
  layer_prefix: str = "block"


FAMILIES: dict[str, Family] = {}
FORMATS = ("hf", "timm", "torchvision", "torch")


def register(family: Family) -> Family:
  if family.format not in FORMATS:
    raise ValueError(f"Family {family.name!r}: format {family.format!r} is not one of {FORMATS}.")
  FAMILIES[family.name] = family
  return family


def detect(config: dict | None, names: set[str], where: str) -> Family:
  """The one family whose checkpoints look like this one."""
  found = [f for f in FAMILIES.values() if f.detect(config, names)]
  if len(found) == 1:
    return found[0]
  if found:
    raise CheckpointError(
      f"{where} looks like a checkpoint of several families: {[f.name for f in found]}."
    )
  kind = (config or {}).get("model_type") or (config or {}).get("architecture")
  raise CheckpointError(
    f"{where} is no checkpoint jaxdl can read"
    + (f" (config.json says model_type/architecture {kind!r})" if kind else "")
    + f"; its first tensors are {sorted(names)[:6]}. jaxdl reads: "
    + ", ".join(sorted(FAMILIES))
    + "."
  )


def exporter(model: nn.Module, format: str) -> Family:
  """The family that writes `model` in `format`."""
  if format not in FORMATS:
    raise CheckpointError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}.")
  found = [f for f in FAMILIES.values() if f.format == format and f.exports(model)]
  if not found:
    can = sorted({f.format for f in FAMILIES.values() if f.exports(model)})
    raise CheckpointError(
      f"A {type(model).__name__} cannot be exported as {format!r}"
      + (
        f"; export it as {', '.join(can)}."
        if can
        else "; no format holds this model. jaxdl exports the families "
        + ", ".join(sorted(FAMILIES))
        + "."
      )
    )
  return found[0]
