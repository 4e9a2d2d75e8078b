"""Models by name, so that a config can say `model.name = "gpt"` or `model.name = "gpt2_small"`.

`MODELS` maps a name to a module class whose fields are the constructor arguments; `PRESETS` maps
the name of a standard configuration (GPT-2 small, BERT base, ...) to its class and arguments.
Config keys override a preset's arguments one by one.
"""

import dataclasses
import difflib
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.nn.cnn import MnistCNN

MODELS: dict[str, type[nn.Module]] = {
    "mnist_cnn": MnistCNN,
}

# name -> (model name in MODELS, constructor arguments).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}


def register(name: str, cls: type[nn.Module], presets: Mapping[str, Mapping[str, Any]] = ()):
  """Adds `cls` under `name`, and each preset (name -> arguments) as a configuration of it."""
  MODELS[name] = cls
  for preset, kwargs in dict(presets).items():
    PRESETS[preset] = (name, dict(kwargs))


def model_fields(cls: type[nn.Module]) -> set[str]:
  """The constructor arguments of a Linen module class (its dataclass fields)."""
  return {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}


def resolve(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
  """(class, preset arguments) for a model or preset name, naming the choices when unknown."""
  if name in MODELS:
    return MODELS[name], {}
  if name in PRESETS:
    base, kwargs = PRESETS[name]
    return MODELS[base], dict(kwargs)
  known = sorted(MODELS) + sorted(PRESETS)
  close = difflib.get_close_matches(name, known, n=3)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  raise ValueError(f"Unknown model {name!r}.{hint} Known models: {', '.join(sorted(MODELS))}; "
                   f"standard configurations: {', '.join(sorted(PRESETS))}.")


def build_model(name: str, **kwargs: Any) -> nn.Module:
  """Instantiates model or preset `name`, with `kwargs` overriding the preset's arguments.

  Arguments named `dtype`/`param_dtype` (or ending in `_dtype`) may be given as strings such as
  "bfloat16", which is how configs hold them.
  """
  cls, preset = resolve(name)
  fields = model_fields(cls)
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    close = {k: difflib.get_close_matches(k, fields, n=1) for k in unknown}
    hints = "".join(f" ({k}: did you mean {c[0]}?)" for k, c in close.items() if c)
    raise ValueError(f"Model {name!r} takes no argument(s) {unknown}{hints}; it takes "
                     f"{sorted(fields)}.")
  return cls(**convert_dtype_args({**preset, **kwargs}))


def convert_dtype_args(kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """`kwargs` with arguments named `dtype`/`param_dtype` (or ending in `_dtype`) given as strings
  such as "bfloat16", which is how configs hold them, turned into dtypes."""
  out = dict(kwargs)
  for key, value in kwargs.items():
    if key.endswith("dtype") and isinstance(value, str):
      try:
        out[key] = jnp.dtype(value)
      except TypeError:
        raise ValueError(f"Model argument {key}={value!r} is not a dtype; use e.g. float32 or "
                         "bfloat16.") from None
  return out


def model_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The constructor arguments in a `model` config section: everything but `name` and `cls`."""
  return {k: v for k, v in model_config.items() if k not in ("name", "cls")}
