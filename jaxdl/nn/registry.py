"""Models by name, so that a config can say `model.name = "gpt"` or `model.name = "gpt2_small"`.

`MODELS` maps a name to a module class whose fields are the constructor arguments; `PRESETS` maps
the name of a standard configuration (GPT-2 small, BERT base, ...) to its class and arguments.
Config keys override a preset's arguments one by one.

A model registers itself where it is defined:

    @registry.register("gpt", presets=GPT_PRESETS)
    class GPT(nn.Module):
      ...

so importing its module (jaxdl.nn imports every built-in one) is what makes the name known. A
model in a user's own file registers the same way; the config then names it once that file has
been imported (e.g. by the experiment file). Building a model from a config section is
`jaxdl.models.build_model`.
"""

import dataclasses
import difflib
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

MODELS: dict[str, type[nn.Module]] = {}

# name -> (model name in MODELS, constructor arguments).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}


def _same_class(a: type, b: type) -> bool:
  """Whether `a` and `b` are one class definition: the same object, or the same module and name
  (a module imported again, e.g. reloaded, defines a new but equivalent class object)."""
  return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _where(cls: type) -> str:
  return f"{cls.__module__}.{cls.__qualname__}"


def register(
  name: str, cls: type[nn.Module] | None = None, presets: Mapping[str, Mapping[str, Any]] = ()
) -> Any:
  """Adds model class `cls` under `name`, and each preset (name -> arguments) as a configuration
  of it. Without `cls`, returns a class decorator that does so, for use at the definition site:

      @register("gpt", presets=GPT_PRESETS)
      class GPT(nn.Module): ...

  Registering the same class again (its module imported twice) is a no-op apart from updating
  the entries.

  Args:
    name: the model's name, as `model.name` in a config gives it.
    cls: a flax.linen.Module subclass; its dataclass fields are the constructor arguments.
    presets: preset name -> constructor arguments (each must be a field of `cls`).

  Returns:
    `cls` when given (so `register(...)` may also be called after the class statement), else the
    decorator, which returns the class unchanged.

  Raises:
    ValueError: `name` or a preset name is already taken by a different model, a preset sets an
      argument `cls` does not take, or `cls` is not a Linen module class.
  """
  if cls is None:

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
      return register(name, cls, presets)

    return decorator
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise ValueError(
      f"register({name!r}, ...) got {cls!r}, not a flax.linen.Module subclass; "
      "register the module class (a function returning a module can be named "
      "by model.cls='package.module:function' instead)."
    )
  # Check everything before changing anything, so a failed registration leaves no half entry.
  if name in MODELS and not _same_class(MODELS[name], cls):
    raise ValueError(
      f"Model name {name!r} is already registered to {_where(MODELS[name])}; "
      f"register {_where(cls)} under another name."
    )
  if name in PRESETS:
    raise ValueError(
      f"Model name {name!r} is already a standard configuration of "
      f"{PRESETS[name][0]!r}; register {_where(cls)} under another name."
    )
  presets = {preset: dict(kwargs) for preset, kwargs in dict(presets).items()}
  fields = model_fields(cls)
  for preset, kwargs in presets.items():
    if preset in MODELS or preset == name:
      raise ValueError(
        f"Preset {preset!r} of model {name!r} has the name of a model; rename the preset."
      )
    if preset in PRESETS and PRESETS[preset][0] != name:
      raise ValueError(
        f"Preset {preset!r} of model {name!r} is already a preset of "
        f"{PRESETS[preset][0]!r}; rename one of them."
      )
    unknown = sorted(set(kwargs) - fields)
    if unknown:
      raise ValueError(
        f"Preset {preset!r} of model {name!r} sets {unknown}, which "
        f"{_where(cls)} does not take; it takes {sorted(fields)}."
      )
  MODELS[name] = cls
  for preset, kwargs in presets.items():
    PRESETS[preset] = (name, kwargs)
  return cls


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
  raise ValueError(
    f"Unknown model {name!r}.{hint} Known models: {', '.join(sorted(MODELS))}; "
    f"standard configurations: {', '.join(sorted(PRESETS))}."
  )


def convert_dtype_args(kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """`kwargs` with arguments named `dtype`/`param_dtype` (or ending in `_dtype`) given as strings
  such as "bfloat16", which is how configs hold them, turned into dtypes."""
  out = dict(kwargs)
  for key, value in kwargs.items():
    if key.endswith("dtype") and isinstance(value, str):
      try:
        out[key] = jnp.dtype(value)
      except TypeError:
        raise ValueError(
          f"Model argument {key}={value!r} is not a dtype; use e.g. float32 or bfloat16."
        ) from None
  return out


def model_kwargs(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The constructor arguments in a `model` config section: everything but `name`, `cls` and
  `lora` (LoRA fine-tuning, jaxdl.train.lora)."""
  return {k: v for k, v in model_config.items() if k not in ("name", "cls", "lora")}
