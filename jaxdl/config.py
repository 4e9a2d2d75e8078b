"""Experiment configs: loading experiment files, applying `key.path=value` overrides, saving them.

An experiment is a Python file whose `get_config()` returns an `ml_collections.ConfigDict`, usually
`base_config()` with a few values changed. Every key a run reads exists in `base_config()`, so an
override of a key that does not exist is a typo, and we say which keys are close.
"""

import ast
import copy
import difflib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Iterable

import ml_collections

from jaxdl import data as data_lib
from jaxdl import sweep as sweep_lib
from jaxdl.errors import ConfigError
from jaxdl.nn import partitioning
from jaxdl.train import lora as lora_lib

logger = logging.getLogger("jaxdl")

REQUIRED_KEYS = (
  "seed",
  "model.name",
  "data.name",
  "data.dir",
  "train.num_epochs",
  "train.num_steps",
  "train.batch_size",
  "train.eval_every_steps",
  "train.checkpoint_every_steps",
  "train.log_every_steps",
  "optimizer.name",
  "optimizer.learning_rate",
)


def base_config() -> ml_collections.ConfigDict:
  """Every key jaxdl reads, with its default. Experiments start from this.

  Two kinds of keys, defined apart: the recipe (`recipe_config`), what is trained, which a workdir
  keeps for life; and the run (`run_config`), how long, how often and where it runs and how this
  machine runs it, which a resumed run may change (RESUMABLE_KEYS)."""
  config = recipe_config()
  _merge(config, run_config())
  return config


def recipe_config() -> ml_collections.ConfigDict:
  """The keys that define what is trained: resuming a workdir with another value is refused."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # `name` picks a model from jaxdl.nn.MODELS; every other key is a constructor argument. `cls`,
  # when set, names any model by import path instead: "pkg.module:Name" or "path/file.py:Name",
  # a Linen module class or a function returning a module (see jaxdl.models).
  c.model = ml_collections.ConfigDict({"name": "mnist_cnn", "cls": ""})
  # LoRA fine-tuning (jaxdl.train.lora): rank > 0 freezes the model and trains rank-`rank` updates,
  # scaled by alpha / rank, of the kernels whose paths `targets` match in full (regular
  # expressions, as optimizer.freeze takes them). rank 0: off.
  c.model.lora = ml_collections.ConfigDict(copy.deepcopy(lora_lib.DEFAULTS))

  c.data = ml_collections.ConfigDict()  # The dataset's own options join at load (jaxdl.data).
  c.data.name = "mnist"

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # Global batch, split over all devices.
  c.train.label_smoothing = 0.0  # Classification and seq2seq training loss; 0: off.
  c.train.ema_decay = 0.0  # > 0: evaluate a moving average of the parameters, e.g. 0.999.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # adam | adamw | sgd
  c.optimizer.learning_rate = 1e-3  # Peak learning rate.
  c.optimizer.schedule = "constant"  # constant | cosine | step (after `warmup_steps` of warmup)
  c.optimizer.warmup_steps = 0
  c.optimizer.decay_steps = 0  # Cosine length; 0: the whole run.
  c.optimizer.end_learning_rate = 0.0  # Where the cosine ends.
  c.optimizer.decay_boundaries = [0.5, 0.75]  # step: fractions of the run where the rate drops,
  c.optimizer.decay_factor = 0.1  # each time multiplied by this.
  c.optimizer.b1 = 0.9  # adam, adamw
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0  # adamw (decoupled), sgd (added to the gradient)
  c.optimizer.weight_decay_mask = "matrices"  # matrices (ndim >= 2: no biases, norms) | all
  c.optimizer.momentum = 0.0  # sgd; 0 means plain SGD.
  c.optimizer.nesterov = False
  c.optimizer.grad_clip_norm = 0.0  # Clip gradients by global norm; 0: off.
  # Parameters selected by regular expressions matched in full against their paths, such as
  # "encoder/.*/kernel" (`jaxdl summary` lists the paths):
  c.optimizer.freeze = []  # Never updated, and given no optimizer state.
  c.optimizer.lr_multipliers = []  # [(pattern, factor), ...]: the first match scales the rate.
  c.optimizer.no_weight_decay = []  # Excluded from weight decay on top of weight_decay_mask.

  # Initialise (part of) the model from another run's checkpoint before step 0: transfer learning.
  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = ""  # A workdir, or one of its checkpoints (workdir/checkpoints/STEP).
  # Or a published checkpoint (jaxdl.pretrained): a Hugging Face model folder, a timm folder, or a
  # torchvision/torch .pth or .safetensors file. The model config must match its architecture.
  c.init.pretrained = ""
  # [(target prefix, source prefix), ...]: the source's parameters (and BatchNorm statistics)
  # under each source prefix go to the same paths under the target prefix; [] copies all of them.
  c.init.mapping = []

  # Train many runs in one compiled program (jaxdl.sweep): N seeds, and/or lists of values for
  # optimizer scalars, e.g. sweep.optimizer.learning_rate=[1e-3,3e-4].
  c.sweep = ml_collections.ConfigDict({"seeds": 0})
  return c


def run_config() -> ml_collections.ConfigDict:
  """The keys a resumed run may change: how long and how often it trains, logs, evaluates and
  saves, where its data lies, and the runtime sections, `runtime` and `parallel`: how a machine
  runs the recipe, which leaves the results equal up to float rounding (or to the bit)."""
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # Empty: the cache, then a download, then the subset shipped with jaxdl.
  c.data.download = True
  c.data.eval_batch_size = 1000

  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 5
  c.train.num_steps = 0  # When > 0, overrides num_epochs.
  c.train.eval_every_steps = 0  # 0: at the end of every epoch. The last step is always evaluated.
  c.train.checkpoint_every_steps = 1000  # 0: only at the end. The last step is always saved.
  c.train.log_every_steps = 100
  c.train.max_checkpoints = 3  # How many of the latest checkpoints to keep.
  # Split each batch into this many micro-batches whose gradients are averaged before one update:
  # the update of the whole batch in a fraction of the activation memory.
  c.train.grad_accum_steps = 1
  # [first step, count]: a jax.profiler trace of those steps, numbered as in metrics.jsonl, into
  # WORKDIR/profile (jaxdl.profiling), e.g. train.profile_steps=10,5. []: off.
  c.train.profile_steps = []
  # On a GPU: XLA's deterministic kernels, for bit-identical reruns (jaxdl.determinism).
  c.train.deterministic = False

  # Where the metrics go besides metrics.jsonl and TensorBoard (jaxdl.wandb_tracker). W&B's own
  # environment variables apply (WANDB_MODE=offline, WANDB_PROJECT, ...).
  c.log = ml_collections.ConfigDict()
  c.log.wandb = False  # Log to a Weights & Biases run, continued when the workdir resumes.
  c.log.wandb_project = ""  # "": WANDB_PROJECT, else "jaxdl".
  c.log.wandb_entity = ""  # "": WANDB_ENTITY, else your W&B default.
  c.log.wandb_name = ""  # "": the workdir's name.
  c.log.wandb_tags = []

  # method: vmap (members side by side) | map (one after another, each exactly its separate run).
  c.sweep = ml_collections.ConfigDict({"method": "vmap"})

  # How this machine runs the recipe (jaxdl.train.run_plan settles each `auto` once).
  # Not type-safe: runtime.kernels may go to a user model's own `kernels` argument.
  c.runtime = ml_collections.ConfigDict(type_safe=False)
  # How a CNN's convolutions and pools run: the model's `kernels` argument
  # (jaxdl.nn.conv_layers.KERNELS); auto leaves the model's own default.
  c.runtime.kernels = "auto"
  # Unroll the micro-batch loop: auto on CPU (XLA:CPU runs convolutions in loops far slower).
  c.runtime.grad_accum_unroll = "auto"
  # Train steps run in one dispatched call (a loop on the device over stacked batches), for
  # speed where each call's own cost is a large part of a step. 0: auto: 16 on a CPU when the
  # step has no XLA convolution (XLA:CPU runs those far slower inside a loop), else 1.
  c.runtime.steps_per_call = 0
  c.runtime.data_threads = 2  # Grain reader threads.
  c.runtime.data_prefetch = 4  # Batches Grain prepares ahead of the train step.
  c.runtime.async_checkpointing = True  # Save in the background while training goes on.
  # JAX's persistent compilation cache (jaxdl.compile_cache): auto: <jaxdl cache>/xla; "": off.
  c.runtime.compilation_cache = "auto"
  # Keep freed host memory for the next step instead of page-faulting it in again
  # (jaxdl.host_memory): auto: on when computing on a Linux CPU; off.
  c.runtime.reuse_host_memory = "auto"

  # How a run spreads over devices and hosts (jaxdl.train.parallel).
  # Not type-safe: parallel.cpu_devices takes a count or "auto".
  c.parallel = ml_collections.ConfigDict(type_safe=False)
  c.parallel.strategy = "jit"  # jit: one program over a device mesh | pmap: replicated per device
  # Mesh axis sizes (jit): the batch is split over data x fsdp devices; parameters and optimizer
  # state are sharded over fsdp (1: replicated), attention heads and MLP units over tensor
  # (Megatron-style). -1 takes the devices left over.
  c.parallel.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # Logical axis name -> mesh axes, first match first (jaxdl.nn.partitioning.RULES).
  c.parallel.rules = [
    [name, list(axes) if isinstance(axes, tuple) else axes] for name, axes in partitioning.RULES
  ]
  # On a CPU host: how many JAX devices to split it into (jaxdl.train.cpu_devices). 1: one;
  # auto: 8, or the most that divides the batch sizes (faster for models of a few large ops;
  # recurrent models: slower, so 1 stays the default and experiments opt in).
  c.parallel.cpu_devices = 1
  # Multi-host: jax.distributed.initialize. auto: when a coordinator is given here or JAX detects
  # a cluster (SLURM, Open MPI, Cloud TPU); on: always; off: never.
  c.parallel.distributed = "auto"
  c.parallel.coordinator_address = ""  # host:port of process 0
  c.parallel.num_processes = 0  # 0: from the cluster environment.
  c.parallel.process_id = -1  # -1: from the cluster environment.
  return c


def _merge(config: ml_collections.ConfigDict, extra: ml_collections.ConfigDict) -> None:
  """Adds `extra`'s sections and keys to `config`, in place (keys are disjoint)."""
  for key, value in extra.items():
    if key in config and isinstance(value, ml_collections.ConfigDict):
      _merge(config[key], value)
    else:
      config[key] = value


# The sections that say how a machine runs the recipe; all of their keys may change on resume.
RUNTIME_SECTIONS = ("runtime", "parallel")


def load_experiment(path: str | Path) -> ml_collections.ConfigDict:
  """Imports an experiment file and returns its validated `get_config()`.

  `path` may end in `:ARG` (`experiments/shakespeare_char_gpt.py:cpu`) to call `get_config("ARG")`,
  for experiments that come in variants, as big_vision's do.
  """
  text = str(path)
  arg = None
  if not Path(text).is_file() and ":" in text:
    text, _, arg = text.rpartition(":")
  path = Path(text)
  if not path.is_file():
    raise ConfigError(
      f"Experiment file {str(path)!r} does not exist. Pass the path to a Python "
      "file with a get_config() function, e.g. experiments/mnist_cnn.py."
    )
  spec = importlib.util.spec_from_file_location(f"jaxdl_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:
    raise ConfigError(
      f"Importing experiment {str(path)!r} failed ({type(e).__name__}: {e}); fix the file "
      "(`jaxdl --debug ...` shows the traceback)."
    ) from e
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(
      f"Experiment {str(path)!r} has no get_config() function; define one that "
      "returns an ml_collections.ConfigDict (see experiments/mnist_cnn.py)."
    )
  try:
    config = module.get_config() if arg is None else module.get_config(arg)
  except TypeError as e:
    if arg is None:
      raise
    raise ConfigError(
      f"get_config() in {str(path)!r} takes no variant argument, but "
      f"{arg!r} was given after ':' ({e})."
    ) from e
  except ValueError as e:
    raise ConfigError(f"Experiment {str(path)!r}: {e}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(
      f"get_config() in {str(path)!r} returned {type(config).__name__}; it must "
      "return an ml_collections.ConfigDict (start from jaxdl.config.base_config())."
    )
  validate(config, source=str(path))
  upgrade_legacy_keys(config)
  with_runtime_defaults(config)
  _relative_model_file(config)
  # The dataset's options join the config now, so they can be overridden and are saved.
  data_lib.complete_config(config.data)
  return config


def _relative_model_file(config: ml_collections.ConfigDict) -> None:
  """An experiment's `model.cls = f"{__file__}:make_model"` names its file by absolute path; keep
  it relative to the current directory when the file lies under it, so a run's config.json
  still works from another checkout of the same repository."""
  spec = config.model.get("cls", "") if "model" in config else ""
  where, sep, name = spec.rpartition(":")
  if sep and where.endswith(".py") and Path(where).is_absolute():
    try:
      config.model.cls = f"{Path(where).relative_to(Path.cwd())}:{name}"
    except ValueError:  # Not under the current directory: keep the absolute path.
      pass


def validate(config: ml_collections.ConfigDict, source: str = "the config") -> None:
  """Checks that every key jaxdl needs is present."""
  keys = set(flatten(config))
  missing = [k for k in REQUIRED_KEYS if k not in keys]
  if missing:
    raise ConfigError(
      f"{source} lacks required key(s) {', '.join(missing)}. Start the config from "
      "jaxdl.config.base_config(), which has them all."
    )


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
  """{'train.batch_size': 64, ...}: leaves of a nested config under dotted keys."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


# Keys that may differ between the run that wrote a workdir and the run that resumes it: the keys
# `run_config` defines, as it defines them (any other key of a runtime section may change too).
RESUMABLE_KEYS = frozenset(flatten(run_config()))


# Model arguments that change how a model runs, not what it computes or the shapes it saves.
RUNTIME_MODEL_KEYS = frozenset({"model.remat"})


def resumable(key: str) -> bool:
  """Whether config key `key` may change when a workdir is resumed."""
  return (
    key in RESUMABLE_KEYS or key in RUNTIME_MODEL_KEYS or key.partition(".")[0] in RUNTIME_SECTIONS
  )


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
  """Applies `key.path=value` strings in place, each parsed to the type of the value it replaces.

  `data.name=OTHER` is applied first and swaps in the other dataset's options (see
  `_switch_dataset`), so its own options may follow on the same command line."""
  overrides = sorted(overrides, key=lambda o: o.partition("=")[0].strip() != "data.name")
  flat = flatten(config)
  for override in overrides:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ConfigError(
        f"Override {override!r} is not of the form key.path=value "
        "(for example train.batch_size=128)."
      )
    if key in RENAMED_KEYS and key not in flat:
      logger.warning("%s: read as %s, its new name; write that instead.", key, RENAMED_KEYS[key])
      key = RENAMED_KEYS[key]
    if key not in flat and key.startswith("sweep."):
      _check_sweep_key(config, key, flat)
      flat[key] = None  # A list of values, parsed as a Python literal.
    elif key not in flat and key.startswith(_LORA) and key[len(_LORA) :] in lora_lib.DEFAULTS:
      flat[key] = lora_lib.DEFAULTS[key[len(_LORA) :]]  # An experiment's own `model` section.
    elif key not in flat and key.partition(".")[2] in LEGACY_KERNEL_KEYS:
      flat[key] = _LEGACY_KERNEL_DEFAULTS[key.partition(".")[2]]  # Read as runtime.kernels below.
    elif key not in flat:
      takes, default = _model_argument(config, key)
      if not takes:
        raise ConfigError(f"Unknown config key {key!r}.{_suggest(key, flat)}")
      # An argument of the model that the experiment leaves at its default, e.g. model.dtype.
      flat[key] = default if isinstance(default, _PLAIN_TYPES) else None
    value = parse_value(key, text, flat[key])
    if key == "data.name" and value != config.data.name:
      _switch_dataset(config.data, value)
      flat = flatten(config)
    _set(config, key, value)  # sweep.optimizer.learning_rate creates sweep.optimizer.
    flat[key] = value
  upgrade_legacy_keys(config)


def _switch_dataset(data_config: ml_collections.ConfigDict, name: str) -> None:
  """Replaces the options of dataset `data_config.name` by those of dataset `name`, in place:
  an option both take keeps a value the experiment chose (one that differs from the old dataset's
  default), the old dataset's other options go, and the new one's others are its defaults (so
  `data.name=hf data.image_column=img` works on any experiment)."""
  new_options = data_lib.dataset_options(name)  # Raises for an unknown name, naming the known.
  old_options = (
    data_lib.DATASETS[data_config.name].options if data_config.name in data_lib.DATASETS else {}
  )
  for key, old_default in old_options.items():
    chosen = key in data_config and data_config[key] != old_default
    if key in data_config and not (key in new_options and chosen):
      del data_config[key]
  for key, default in new_options.items():
    if key not in data_config:
      data_config[key] = default


_PLAIN_TYPES = (bool, int, float, str, tuple, list)
_LORA = "model.lora."


def _check_sweep_key(config: ml_collections.ConfigDict, key: str, flat: dict[str, Any]) -> None:
  swept = key.partition(".")[2]
  exists = swept in flat or _model_argument(config, swept)[0]
  if not exists or not sweep_lib.sweepable(swept):
    problem = "is not a config key" if not exists else "cannot be swept in one program"
    raise ConfigError(
      f"{key}: {swept!r} {problem}; the keys a sweep can vary are sweep.seeds, "
      f"{sweep_lib.describe_sweepable()}."
    )


def _model_argument(config: ml_collections.ConfigDict, key: str) -> tuple[bool, Any]:
  """(whether `key` is model.<an argument of the configured model>, the argument's default)."""
  prefix, _, name = key.partition(".")
  if prefix != "model" or "." in name or "name" not in config.get("model", {}):
    return False, None
  from jaxdl import models  # pylint: disable=g-import-not-at-top  # Imports jaxdl.nn, i.e. flax.

  return models.argument_default(config.model, name)


def _suggest(key: str, flat: dict[str, Any]) -> str:
  """' Did you mean ...?' naming keys close to `key` as a whole or in their last part."""
  keys_by_leaf: dict[str, list[str]] = {}
  for k in flat:
    keys_by_leaf.setdefault(k.rpartition(".")[2], []).append(k)
  close = difflib.get_close_matches(key, flat, n=3, cutoff=0.6)
  for leaf in difflib.get_close_matches(key.rpartition(".")[2], keys_by_leaf, n=3, cutoff=0.6):
    close += [k for k in keys_by_leaf[leaf] if k not in close]
  if close:
    return " Did you mean " + ", ".join(close[:4]) + "?"
  return " Valid keys: " + ", ".join(sorted(flat)) + "."


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


# Keys that take a number or a word ("auto"): a number given on the command line is an int.
COUNT_OR_WORD_KEYS = frozenset({"parallel.cpu_devices"})


def parse_value(key: str, text: str, current: Any) -> Any:
  """Parses `text` to the type of `current`, the value it overrides."""
  text = text.strip()
  if key in COUNT_OR_WORD_KEYS:
    return int(text) if text.lstrip("-").isdigit() else text
  expected = type(current).__name__

  def wrong_type(hint: str = "") -> ConfigError:
    return ConfigError(
      f"Value {text!r} for {key} is not a valid {expected} "
      f"(the current value is {current!r}).{hint}"
    )

  if isinstance(current, bool):
    if text.lower() in _TRUE:
      return True
    if text.lower() in _FALSE:
      return False
    raise wrong_type(" Use true or false.")
  if isinstance(current, int):
    try:
      return int(text.replace("_", ""))
    except ValueError:
      try:
        as_float = float(text)
      except ValueError:
        raise wrong_type(" Give a whole number, e.g. 128.") from None
      if as_float.is_integer():
        return int(as_float)  # "1e3" means 1000.
      raise wrong_type(" Give a whole number.") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise wrong_type(" Give a number, e.g. 3e-4.") from None
  if isinstance(current, str):
    return text
  # Tuples, lists and None: a Python literal; None accepts anything, falling back to a string.
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise wrong_type(f" Write it as a Python literal, e.g. {current!r}.") from None
  if current is None:
    return value
  if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
    return type(current)(value)
  raise wrong_type(f" Write it as a Python literal, e.g. {current!r}.")


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def from_json(text: str) -> ml_collections.ConfigDict:
  """A config as `to_json` wrote it, in today's key names (a workdir of an older jaxdl)."""
  config = ml_collections.ConfigDict(json.loads(text))
  upgrade_legacy_keys(config, note=False)
  return with_runtime_defaults(config)


# Keys that moved, old name -> new name: the runtime options left `train`, `data` and `model` for
# the `runtime` section. Commands, experiment files and workdirs written with an old name keep
# working: the value is read under the new name, with a one-line note.
RENAMED_KEYS = {
  "model.kernels": "runtime.kernels",
  "train.steps_per_call": "runtime.steps_per_call",
  "train.grad_accum_unroll": "runtime.grad_accum_unroll",
  "train.compilation_cache": "runtime.compilation_cache",
  "train.reuse_host_memory": "runtime.reuse_host_memory",
  "train.async_checkpointing": "runtime.async_checkpointing",
  "data.num_threads": "runtime.data_threads",
  "data.prefetch": "runtime.data_prefetch",
}

# The four model fields (MnistCNN, VGG) that one `kernels` switch replaced, with their defaults.
# They are read as the kernel set they picked (jaxdl.nn.conv_layers), now `runtime.kernels`.
_LEGACY_KERNEL_DEFAULTS = {
  "conv_impl": "auto",
  "pool_impl": "reshape",
  "fuse_conv_pool": True,
  "conv_pool_impl": "auto",
}
LEGACY_KERNEL_KEYS = tuple(_LEGACY_KERNEL_DEFAULTS)


def kernels_from_legacy(values: dict[str, Any]) -> str:
  """The `kernels` value that runs what conv_impl, pool_impl, fuse_conv_pool and conv_pool_impl
  chose (those absent at their defaults). The pool's two implementations are equal to the bit,
  so pool_impl only tells plain ("reduce_window") from xla among XLA's convolutions."""
  v = {**_LEGACY_KERNEL_DEFAULTS, **values}
  if v["conv_impl"] == "xla":
    return "plain" if v["pool_impl"] == "reduce_window" else "xla"
  if v["conv_impl"] == "auto" and v == _LEGACY_KERNEL_DEFAULTS:
    return "auto"
  # im2col convolutions (or auto, which changed only where im2col ran, on one CPU device).
  if not v["fuse_conv_pool"] or v["pool_impl"] == "reduce_window":
    return "im2col"
  return "fused" if v["conv_pool_impl"] == "im2col" else "winograd"


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """config[key] = value for a dotted key, creating sections (runtime ones not type-safe)."""
  parent, _, leaf = key.rpartition(".")
  node = config
  for part in parent.split(".") if parent else ():
    if part not in node:
      with node.ignore_type():
        node[part] = ml_collections.ConfigDict(type_safe=part not in RUNTIME_SECTIONS)
    node = node[part]
  with node.ignore_type():
    node[leaf] = value


def upgrade_legacy_keys(config: ml_collections.ConfigDict, note: bool = True) -> None:
  """Moves keys under an old name (RENAMED_KEYS) to their new one, and reads the model's legacy
  kernel fields (LEGACY_KERNEL_KEYS) as `runtime.kernels`, in place; logs a one-line note for
  each when `note` (an experiment or command line; not a workdir's config.json, which jaxdl
  wrote)."""
  for old, new in RENAMED_KEYS.items():
    section, _, leaf = old.partition(".")
    if section in config and leaf in config[section]:
      value = config[section][leaf]
      del config[section][leaf]
      _set(config, new, value)
      if note:
        logger.warning(
          "%s=%s: read as %s=%s, its new name; write that instead.", old, value, new, value
        )
  model = config.get("model")
  if not model or not any(k in model for k in LEGACY_KERNEL_KEYS):
    return
  from jaxdl import models  # pylint: disable=g-import-not-at-top  # Imports jaxdl.nn, i.e. flax.

  legacy = {
    k: model[k]
    for k in LEGACY_KERNEL_KEYS
    if k in model and not models.argument_default(model, k)[0]
  }
  if not legacy or not models.argument_default(model, "kernels")[0]:
    return
  chosen = config.get("runtime", {}).get("kernels", "auto")
  kernels = chosen if chosen != "auto" else kernels_from_legacy(legacy)
  for key in legacy:
    del model[key]
  _set(config, "runtime.kernels", kernels)
  if note:
    old = " ".join(f"model.{k}={v}" for k, v in legacy.items())
    logger.warning(
      "%s: read as runtime.kernels=%s, the one switch that replaced them "
      "(jaxdl.nn.conv_layers); write that instead.",
      old,
      kernels,
    )


def with_runtime_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (in place) with each runtime-section key it lacks (a config from an older jaxdl, or
  built by hand) at its default."""
  defaults = run_config()
  for section in RUNTIME_SECTIONS:
    for key, value in flatten(defaults[section], f"{section}.").items():
      if key not in flatten(config.get(section, {}), f"{section}."):
        _set(config, key, value)
  return config


def _as_saved(value: Any) -> Any:
  """`value` as config.json gives it back: JSON turns tuples, nested ones too, into lists."""
  if isinstance(value, (tuple, list)):
    return [_as_saved(v) for v in value]
  return value


def _data_option_defaults(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{"data.KEY": default} for the options of the config's dataset: an option added to a dataset
  after a workdir was saved resumes at its default, as a base_config key does."""
  spec = data_lib.DATASETS.get(config.get("data", {}).get("name"))
  return {f"data.{k}": v for k, v in spec.options.items()} if spec else {}


def resume_conflicts(
  saved: ml_collections.ConfigDict, new: ml_collections.ConfigDict
) -> list[tuple[str, Any, Any]]:
  """(key, saved value, new value) for every difference that forbids resuming `saved` with `new`.

  A key the saved config lacks (written by a jaxdl from before the key existed) is no conflict
  when the new config keeps it at base_config's default, which reproduces what that jaxdl did;
  a note says so."""
  old_flat, new_flat, defaults = flatten(saved), flatten(new), flatten(base_config())
  defaults.update(_data_option_defaults(new))
  norm = _as_saved
  conflicts = []
  for k in sorted(set(old_flat) | set(new_flat)):
    if resumable(k) or norm(old_flat.get(k)) == norm(new_flat.get(k)):
      continue
    if k not in old_flat and k in defaults and norm(new_flat[k]) == norm(defaults[k]):
      logger.warning(
        "%s: the workdir's config predates this key; resuming with its default, %r.",
        k,
        new_flat[k],
      )
      continue
    conflicts.append((k, old_flat.get(k, "<absent>"), new_flat.get(k, "<absent>")))
  return conflicts
