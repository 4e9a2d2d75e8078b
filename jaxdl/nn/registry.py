"""Models by name, so that a config can say `model.name = "mnist_cnn"`."""

import dataclasses
import difflib
from typing import Any, Mapping

import flax.linen as nn

from jaxdl.nn.cnn import MnistCNN

MODELS: dict[str, type[nn.Module]] = {
    "mnist_cnn": MnistCNN,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
  """Instantiates model `name` with `kwargs`, naming the valid choices when either is wrong."""
  if name not in MODELS:
    close = difflib.get_close_matches(name, MODELS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"Unknown model {name!r}.{hint} Known models: {', '.join(sorted(MODELS))}.")
  cls = MODELS[name]
  fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"Model {name!r} takes no argument(s) {unknown}; it takes {sorted(fields)}.")
  return cls(**kwargs)


def model_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The constructor arguments in a `model` config section: everything but its `name`."""
  return {k: v for k, v in model_config.items() if k != "name"}
