"""The model a config asks for: a registered name, or any module by import path.

    model.name = "resnet18"                     # jaxdl.nn.MODELS / PRESETS
    model.cls = "mypkg.layers:MyNet"            # an importable module's attribute
    model.cls = "experiments/my_exp.py:make"    # a file's attribute (path relative to the cwd)

What `model.cls` names is a Linen module class or a function returning a module; the other
`model.*` keys (all but `name`, `cls` and `lora`) are its keyword arguments. Arguments the data
dictates (`num_classes`, `vocab_size`: the dataset's model hints) are filled in when the callable
takes them and the config leaves them unset, exactly as for registered models. Once built, a model
from outside jaxdl trains, checkpoints, resumes and shards like a built-in one: the trainer only
ever calls `init` and `apply`.
"""

import dataclasses
import difflib
import hashlib
import importlib
import importlib.util
import inspect
from pathlib import Path
import sys
from typing import Any, Callable, Mapping

import flax.linen as nn

from jaxdl import nn as nn_lib
from jaxdl.errors import ConfigError

_RESERVED = ("name", "cls", "lora")  # model.* keys that are not constructor arguments.


def import_model(spec: str) -> Callable[..., nn.Module]:
  """The class or function that "pkg.module:Name" or "path/to/file.py:Name" names.

  A file is imported under a module name derived from its resolved path, once per process, so
  importing it twice (train, then eval in the same process) gives the same objects.

  Raises:
    ConfigError: the spec is malformed, the module or file is missing or fails to import, or it
      has no such attribute, or the attribute is not callable.
  """
  where, sep, attr = str(spec).rpartition(":")
  if not sep or not where or not attr.isidentifier():
    raise ConfigError(
      f"model.cls={spec!r} is not an import path; write 'package.module:Name' "
      "or 'path/to/file.py:Name' (a Linen module class or a function returning "
      "a module)."
    )
  if where.endswith(".py"):
    module = _import_file(Path(where), spec)
  else:
    try:
      module = importlib.import_module(where)
    except ImportError as e:
      raise ConfigError(
        f"model.cls={spec!r}: cannot import module {where!r} ({e}). Install the "
        "package, add its directory to PYTHONPATH, or give a file path "
        "'path/to/file.py:Name'."
      ) from e
    except Exception as e:  # The user's module raised while importing.
      raise ConfigError(
        f"model.cls={spec!r}: importing {where!r} failed: {type(e).__name__}: {e}"
      ) from e
  if not hasattr(module, attr):
    names = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
    close = difflib.get_close_matches(attr, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"model.cls={spec!r}: {where!r} has no attribute {attr!r}.{hint}")
  target = getattr(module, attr)
  if not callable(target):
    raise ConfigError(
      f"model.cls={spec!r} names a {type(target).__name__}, not a module class "
      "or a function returning a module."
    )
  return target


def _import_file(path: Path, spec: str) -> Any:
  if not path.is_file():
    raise ConfigError(
      f"model.cls={spec!r}: file {str(path)!r} does not exist (relative paths "
      f"are read from the current directory, {str(Path.cwd())!r})."
    )
  resolved = path.resolve()
  digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
  module_name = f"jaxdl_model_{resolved.stem}_{digest}"
  if module_name in sys.modules:
    return sys.modules[module_name]
  file_spec = importlib.util.spec_from_file_location(module_name, resolved)
  module = importlib.util.module_from_spec(file_spec)
  sys.modules[module_name] = module  # Before executing, as dataclasses and pickling expect.
  try:
    file_spec.loader.exec_module(module)
  except Exception as e:
    del sys.modules[module_name]
    raise ConfigError(
      f"model.cls={spec!r}: importing {str(path)!r} failed: {type(e).__name__}: {e}"
    ) from e
  return module


def callable_arguments(target: Callable[..., Any]) -> tuple[set[str], bool]:
  """(names of the keyword arguments `target` takes, whether it also takes **kwargs)."""
  if isinstance(target, type) and issubclass(target, nn.Module):
    return nn_lib.registry.model_fields(target), False
  try:
    parameters = inspect.signature(target).parameters.values()
  except (TypeError, ValueError):
    return set(), True  # Unknown: let the call itself complain.
  names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
  return names, any(p.kind is p.VAR_KEYWORD for p in parameters)


def resolve_model(
  model_config: Mapping[str, Any],
) -> tuple[Callable[..., Any], dict[str, Any], str]:
  """(class or function, preset arguments, a name for messages) that a `model` section names."""
  spec = model_config.get("cls", "")
  if spec:
    return import_model(spec), {}, spec
  try:
    cls, preset = nn_lib.registry.resolve(model_config["name"])
  except ValueError as e:
    raise ConfigError(
      f"model: {e} Or name any module by import path with model.cls='package.module:Name'."
    ) from e
  return cls, preset, model_config["name"]


def build_model(
  model_config: Mapping[str, Any], model_hints: Mapping[str, Any] = (), *, kernels: str = "auto"
) -> nn.Module:
  """The configured model, with the arguments the data dictates (number of classes, vocabulary
  size) filled in where the config leaves them unset (0 or None), and checked where it sets them.
  `kernels` (the config's `runtime.kernels`) goes to the model's `kernels` argument, how its
  layers run (jaxdl.nn.conv_layers), unless it is "auto", which leaves the model's default.

  Raises:
    ConfigError: an unknown model or argument, a config that contradicts the data, or a callable
      that does not return a Linen module.
  """
  target, preset, what = resolve_model(model_config)
  kwargs = nn_lib.model_kwargs(model_config)
  accepted, any_kwargs = callable_arguments(target)
  unknown = sorted(k for k in kwargs if k not in accepted)
  if unknown and not any_kwargs:
    close = {k: difflib.get_close_matches(k, accepted, n=1) for k in unknown}
    hints = "".join(f" ({k}: did you mean {c[0]}?)" for k, c in close.items() if c)
    raise ConfigError(
      f"model: {what!r} takes no argument(s) {unknown}{hints}; it takes {sorted(accepted)}."
    )
  if kernels != "auto":
    if "kernels" not in accepted and not any_kwargs:
      raise ConfigError(
        f"runtime.kernels={kernels!r}: model {what!r} has no `kernels` argument (the CNNs built "
        "on jaxdl.nn.conv_layers have one); leave runtime.kernels=auto."
      )
    kwargs["kernels"] = kernels
  for key, value in dict(model_hints).items():
    if key not in accepted:
      continue
    configured = kwargs.get(key, preset.get(key))
    if configured in (None, 0):
      kwargs[key] = value
    elif configured != value:
      raise ConfigError(
        f"model.{key}={configured} contradicts the data, which has {key}={value}; remove "
        f"model.{key} from the config (it is taken from the data) or set it to {value}."
      )
  try:
    kwargs = nn_lib.registry.convert_dtype_args({**preset, **kwargs})
    model = target(**kwargs)
  except ValueError as e:
    raise ConfigError(f"model: {e}") from e
  except TypeError as e:
    raise ConfigError(f"model: building {what!r} with {kwargs} failed: {e}") from e
  if not isinstance(model, nn.Module):
    raise ConfigError(
      f"model.cls={what!r} returned a {type(model).__name__}, not a Flax Linen "
      "module; return e.g. jaxdl.nn.Sequential([...]) or an nn.Module instance."
    )
  return model


def argument_default(model_config: Mapping[str, Any], name: str) -> tuple[bool, Any]:
  """(whether the configured model takes argument `name`, its default or None). Lets
  `model.<name>=value` override an argument that the experiment leaves at its default."""
  if name in _RESERVED:
    return name == "cls", ""
  try:
    target, _, _ = resolve_model(model_config)
  except ConfigError:
    return False, None
  if isinstance(target, type) and dataclasses.is_dataclass(target):
    fields = {f.name: f for f in dataclasses.fields(target) if f.init and f.name != "parent"}
    if name not in fields:
      return False, None
    default = fields[name].default
    return True, None if default is dataclasses.MISSING else default
  accepted, _ = callable_arguments(target)
  if name not in accepted:
    return False, None
  default = inspect.signature(target).parameters[name].default
  return True, None if default is inspect.Parameter.empty else default
