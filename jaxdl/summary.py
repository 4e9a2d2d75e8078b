"""`jaxdl summary`: a model's parameters, forward FLOPs and memory, without allocating its weights.

Everything here is abstract: `jax.eval_shape` gives the variables' shapes (so resnet152 or
gpt2_medium costs no memory), and the forward pass is lowered and compiled, never run, so XLA's
cost analysis can count its FLOPs. Two ways in:
    jaxdl summary experiments/mnist_cnn.py [key=value ...]  # the experiment's model, data, optim.
    jaxdl summary --model resnet50 --input-shape 1,224,224,3  # a registry model on a made-up input
An experiment is also built as `jaxdl train` builds it, devices and layout included, for the memory
each device needs to train it (jaxdl.device_memory).
"""

import dataclasses
import inspect
import math
import re
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdl import perf
from jaxdl.errors import ConfigError
from jaxdl.train import lora as lora_lib

MAX_ROWS = 200  # Above this many arrays, the table sums each top-level module unless full=True.

# Constructor arguments that `jaxdl summary --model` has a flag for.
FLAGS = {"num_classes": "--num-classes", "vocab_size": "--vocab-size"}


@dataclasses.dataclass(frozen=True)
class Row:
  """One variable array of a model: `collection` "params" is trainable; the others (e.g.
  "batch_stats") are state the model updates itself and are not counted as parameters."""

  collection: str
  path: str  # Module path and name, e.g. "layer1_0/conv1/kernel".
  shape: tuple[int, ...]
  dtype: str
  frozen: bool = False  # A parameter `optimizer.freeze` (or LoRA: the whole base) keeps frozen.

  @property
  def count(self) -> int:
    return math.prod(self.shape)

  @property
  def trainable(self) -> bool:
    return self.collection == "params"


@dataclasses.dataclass
class Summary:
  """What `summarize` measures. Byte counts are of the arrays themselves (count * itemsize)."""

  rows: list[Row]  # Every variable array, "params" first, each collection in path order.
  total_params: int  # Elements of all "params" arrays.
  non_trainable: int  # Elements of every other collection (batch_stats, ...).
  flops: float | None  # One forward pass (train=False) at the example inputs; None if unknown.
  param_bytes: int
  opt_bytes: int | None  # The optimizer state for the params; None without an optimizer.
  frozen_params: int = 0  # Elements of the "params" arrays that are frozen (in total_params).
  # A jaxdl.device_memory.DeviceMemory: training it on the run's devices; None for --model.
  device_memory: Any = None


def _abstract(tree: Any) -> Any:
  """ShapeDtypeStructs for arrays (numpy or jax), ShapeDtypeStructs or Python scalars."""
  return jax.tree.map(
    lambda x: (
      jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))
      if not hasattr(x, "dtype")
      else jax.ShapeDtypeStruct(x.shape, x.dtype)
    ),
    tree,
  )


def _nbytes(tree: Any) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _natural_key(path: str) -> list[Any]:
  return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path)]


def _call_kwargs(model: nn.Module) -> dict[str, Any]:
  """train=False for models that take it (every jaxdl model; a bare test module may not)."""
  return {"train": False} if "train" in inspect.signature(model.__call__).parameters else {}


def summarize(
  model: nn.Module,
  example_inputs: Any,
  tx: optax.GradientTransformation | None = None,
  *,
  flops: bool = True,
  frozen_mask: Callable[[Any], Any] | None = None,
  lora: lora_lib.LoRA | None = None,
) -> Summary:
  """Shapes, counts, FLOPs and memory of `model` applied to `example_inputs`.

  Args:
    model: a Linen module; called as `model(*example_inputs, train=False)` (without `train` when
      its __call__ takes none).
    example_inputs: the model's positional inputs (a tuple, or one array), as arrays or
      jax.ShapeDtypeStruct; only shapes and dtypes are used. FLOPs are for this batch size.
    tx: an optax optimizer whose state to size; None leaves `opt_bytes` None.
    flops: False skips compiling the forward pass (`flops` is then None).
    frozen_mask: params -> a tree of bools like it, True where frozen
      (jaxdl.train.optim.frozen_mask); frozen rows are marked in the table.
    lora: LoRA settings (jaxdl.train.lora): the model's parameters are all frozen, and the
      adapters ("<kernel path>/lora_a", "/lora_b" rows among the params) are what trains, what
      `frozen_mask` selects from and what the optimizer holds state for.

  Returns:
    A Summary. No weights are allocated and the model is never run.
  """
  if not isinstance(example_inputs, (tuple, list)):
    example_inputs = (example_inputs,)
  inputs = _abstract(tuple(example_inputs))
  kwargs = _call_kwargs(model)
  variables = jax.eval_shape(
    lambda *x: nn.unbox(model.init(jax.random.key(0), *x, **kwargs)), *inputs
  )
  variables = flax.core.unfreeze(variables)
  # "params" first; paths in natural order (layer_2 before layer_10), as eval_shape sorts keys.
  collections = sorted(variables, key=lambda c: (c != "params", c))
  params = variables.get("params", {})
  trained, frozen = params, set()
  if lora is not None:
    boxed_init = lambda *x: model.init(jax.random.key(0), *x, **kwargs)["params"]
    trained = jax.eval_shape(
      lambda *x: lora_lib.init_adapters(boxed_init(*x), lora, jax.random.key(0)), *inputs
    )
    frozen = set(flax.traverse_util.flatten_dict(params, sep="/"))
  if frozen_mask is not None:
    flat_mask = flax.traverse_util.flatten_dict(flax.core.unfreeze(frozen_mask(trained)), sep="/")
    frozen |= {path for path, is_frozen in flat_mask.items() if is_frozen}
  arrays = {c: flax.traverse_util.flatten_dict(variables[c], sep="/") for c in collections}
  if lora is not None:  # Each kernel's adapters ("<kernel path>/lora_a", ...) follow its row.
    arrays["params"] = {**arrays["params"], **flax.traverse_util.flatten_dict(trained, sep="/")}
  rows = [
    Row(c, path, tuple(x.shape), jnp.dtype(x.dtype).name, frozen=c == "params" and path in frozen)
    for c in collections
    for path, x in sorted(arrays[c].items(), key=lambda item: _natural_key(item[0]))
  ]

  forward_flops = None
  if flops:
    forward = jax.jit(lambda v, *x: model.apply(v, *x, **kwargs))
    forward_flops = perf.compiled_flops(forward.lower(variables, *inputs).compile())
  opt_bytes = None if tx is None else _nbytes(jax.eval_shape(tx.init, trained))
  return Summary(
    rows=rows,
    total_params=sum(r.count for r in rows if r.trainable),
    non_trainable=sum(r.count for r in rows if not r.trainable),
    flops=forward_flops,
    param_bytes=_nbytes(params) + (_nbytes(trained) if lora is not None else 0),
    opt_bytes=opt_bytes,
    frozen_params=sum(r.count for r in rows if r.frozen),
  )


# ------------------------------------------------------------------------------ Text


def human_count(n: float, unit: str = "") -> str:
  """1234567 -> '1.23M'; small numbers stay whole."""
  for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
    if abs(n) >= scale:
      return f"{n / scale:.3g}{' ' if unit else ''}{suffix}{unit}"
  return f"{n:.0f}{' ' if unit else ''}{unit}"


def human_bytes(n: int) -> str:
  """Binary units, as memory is sized: 1536 -> '1.5 KiB'."""
  for scale, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
    if n >= scale:
      return f"{n / scale:.1f} {suffix}"
  return f"{n} B"


def _group_by_module(rows: list[Row]) -> list[tuple[str, str, str, str, int]]:
  """Table cells with one row per (collection, top-level module): path/*, arrays, dtype, count."""
  groups: dict[tuple[str, str], list[Row]] = {}
  for row in rows:
    groups.setdefault((row.collection, row.path.split("/")[0]), []).append(row)
  cells = []
  for (collection, module), members in groups.items():
    if len(members) == 1:
      cells.append(_cells(members[0]))
      continue
    dtypes = {r.dtype for r in members}
    num_frozen = sum(r.frozen for r in members)
    note = (
      ""
      if not num_frozen
      else (" (frozen)" if num_frozen == len(members) else f" ({num_frozen} frozen)")
    )
    cells.append(
      (
        collection,
        f"{module}/*{note}",
        f"{len(members)} arrays",
        dtypes.pop() if len(dtypes) == 1 else "mixed",
        sum(r.count for r in members),
      )
    )
  return cells


def _cells(row: Row) -> tuple[str, str, str, str, int]:
  return (
    row.collection,
    row.path + (" (frozen)" if row.frozen else ""),
    str(row.shape),
    row.dtype,
    row.count,
  )


def format_summary(summary: Summary, full: bool = False) -> str:
  """The per-array table and the totals as plain text.

  With more than MAX_ROWS arrays and not `full`, each top-level module is one row (its arrays
  summed). The totals lines have fixed prefixes ("total params: N", ...) for scripts to grep.
  """
  grouped = len(summary.rows) > MAX_ROWS and not full
  if grouped:
    cells = _group_by_module(summary.rows)
  else:
    cells = [_cells(r) for r in summary.rows]
  path_w = max([len(c[1]) + 2 for c in cells] + [len("path")])
  shape_w = max([len(c[2]) for c in cells] + [len("shape")])
  dtype_w = max([len(c[3]) for c in cells] + [len("dtype")])
  count_w = max([len(str(c[4])) for c in cells] + [len("count")])
  lines = [f"{'path':<{path_w}}  {'shape':<{shape_w}}  {'dtype':<{dtype_w}}  {'count':>{count_w}}"]
  lines.append("-" * len(lines[0]))
  collection = None
  for c in cells:
    if c[0] != collection:
      collection = c[0]
      lines.append(
        collection
        if collection == "params"
        else f"{collection} (non-trainable, not in total params)"
      )
    lines.append(f"  {c[1]:<{path_w - 2}}  {c[2]:<{shape_w}}  {c[3]:<{dtype_w}}  {c[4]:>{count_w}}")
  if grouped:
    lines.append(f"({len(summary.rows)} arrays summed per top-level module; --full lists each)")
  lines.append("")
  lines.append(f"total params: {summary.total_params} ({human_count(summary.total_params)})")
  if summary.frozen_params:
    trainable = summary.total_params - summary.frozen_params
    lines.append(
      f"frozen params: {summary.frozen_params} ({human_count(summary.frozen_params)}); "
      f"trained: {trainable} ({human_count(trainable)})"
    )
  lines.append(
    f"non-trainable variables: {summary.non_trainable}"
    + (f" ({human_count(summary.non_trainable)})" if summary.non_trainable else "")
  )
  if summary.flops is None:
    lines.append("forward FLOPs: n/a")
  else:
    lines.append(f"forward FLOPs: {summary.flops:.0f} ({human_count(summary.flops, 'FLOPs')})")
  lines.append(f"params bytes: {summary.param_bytes} ({human_bytes(summary.param_bytes)})")
  if summary.opt_bytes is None:
    lines.append("optimizer state bytes: n/a (no optimizer)")
  else:
    lines.append(f"optimizer state bytes: {summary.opt_bytes} ({human_bytes(summary.opt_bytes)})")
  if summary.device_memory is not None:
    lines += ["", summary.device_memory.format()]
  return "\n".join(lines)


# ------------------------------------------------------------------------------ The command


def _describe_inputs(inputs: Sequence[Any]) -> str:
  return ", ".join(
    f"{jnp.dtype(x.dtype).name}[{','.join(map(str, x.shape))}]" for x in _abstract(tuple(inputs))
  )


def _summarize_or_explain(
  model,
  inputs,
  tx,
  what: str,
  flops: bool,
  frozen_mask: Callable[[Any], Any] | None = None,
  lora: lora_lib.LoRA | None = None,
) -> Summary:
  """summarize(), with a model's complaint about its input (a context longer than block_size, an
  image of the wrong rank) turned into one line for the user."""
  try:
    return summarize(model, inputs, tx, flops=flops, frozen_mask=frozen_mask, lora=lora)
  except (ValueError, TypeError, flax.errors.FlaxError) as e:
    raise ConfigError(f"{what} does not fit inputs {_describe_inputs(inputs)}: {e}") from e


def for_experiment(
  experiment: str, overrides: Sequence[str] = (), *, flops: bool = True, temporaries: bool = True
) -> tuple[str, Summary]:
  """(heading, summary) of an experiment's model on a batch of 1 shaped like its data, with its
  optimizer, and the memory per device of training it (`summary.device_memory`; `temporaries=False`
  skips compiling its train call). Builds the run as `jaxdl train` does, devices included; loads
  the data (for its shapes and model hints), never the weights."""
  # pylint: disable=g-import-not-at-top  # The trainer pulls in Orbax and Grain; only this needs them.
  from jaxdl import config as config_lib
  from jaxdl import device_memory, trainer
  from jaxdl.train import optim

  config = config_lib.load_experiment(experiment)
  config_lib.apply_overrides(config, overrides)
  trainer.complete_from_pretrained(config)  # The architecture of init.pretrained's checkpoint.
  # parallel.cpu_devices splits a CPU host only before JAX starts: first, as `jaxdl train` does.
  trainer.split_cpu_host(config)
  data = trainer.load_data(config)
  setup = trainer.build(config, data, training=True)
  inputs = setup.task.model_inputs(data.example_batch(1))
  what = f"model {config.model.get('cls') or config.model.name!r}"
  frozen_mask = lambda params: optim.frozen_mask(config.optimizer, params)
  lora = lora_lib.settings(config.model.get("lora"))
  summary = _summarize_or_explain(setup.model, inputs, setup.tx, what, flops, frozen_mask, lora)
  summary.device_memory = device_memory.of_run(setup, data, compile_call=temporaries)
  heading = (
    f"{what} ({type(setup.model).__name__}) of {experiment}, inputs "
    f"{_describe_inputs(inputs)}, optimizer {config.optimizer.name}"
  )
  return heading, summary


def parse_shape(text: str) -> tuple[int, ...]:
  """'1,224,224,3' -> (1, 224, 224, 3), or a ConfigError saying what is wrong with it."""
  try:
    shape = tuple(int(s) for s in text.replace("x", ",").split(","))
  except ValueError:
    shape = ()
  if not shape or any(d <= 0 for d in shape):
    raise ConfigError(
      f"--input-shape {text!r} is not a shape; give positive sizes separated by "
      "commas, batch first, e.g. --input-shape 1,224,224,3 (or 1,1024 for tokens)."
    )
  return shape


def for_model(
  name: str,
  input_shape: str | None,
  *,
  input_dtype: str = "float32",
  num_classes: int | None = None,
  vocab_size: int | None = None,
  dtype: str | None = None,
  optimizer: str = "adam",
  flops: bool = True,
) -> tuple[str, Summary]:
  """(heading, summary) of registry model or preset `name` on zeros of `input_shape` (text,
  '1,224,224,3') and `input_dtype`, with a default-configured `optimizer`. No experiment, no data.

  A model whose __call__ takes several inputs (the seq2seq transformer's src and tgt) gets the
  same shape for each.
  """
  # pylint: disable=g-import-not-at-top
  from jaxdl import config as config_lib
  from jaxdl import models
  from jaxdl import nn as nn_lib
  from jaxdl.train import optim

  if not input_shape:
    raise ConfigError(
      f"--model {name} needs --input-shape, batch first, e.g. "
      "--input-shape 1,224,224,3 (images) or --input-shape 1,1024 with "
      "--input-dtype int32 (token ids)."
    )
  shape = parse_shape(input_shape)
  try:
    in_dtype = jnp.dtype(input_dtype)
  except TypeError:
    raise ConfigError(
      f"--input-dtype {input_dtype!r} is not a dtype; use float32 (images) or int32 (token ids)."
    ) from None
  try:
    cls, preset = nn_lib.registry.resolve(name)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  fields = nn_lib.registry.model_fields(cls)
  given = {"num_classes": num_classes, "vocab_size": vocab_size, "dtype": dtype}
  kwargs = {k: v for k, v in given.items() if v is not None}
  for key in kwargs:
    if key not in fields:
      flag = FLAGS.get(key, "--" + key.replace("_", "-"))
      raise ConfigError(f"Model {name!r} ({cls.__name__}) takes no {key}; drop {flag}.")
  required = [
    f.name
    for f in dataclasses.fields(cls)
    if f.name in fields
    and f.default is dataclasses.MISSING
    and f.default_factory is dataclasses.MISSING
  ]
  missing = [k for k in required if k not in kwargs and k not in preset]
  if missing:
    presets = sorted(p for p, (base, _) in nn_lib.PRESETS.items() if nn_lib.MODELS[base] is cls)
    flagged = [FLAGS[k] for k in missing if k in FLAGS]
    others = [k for k in missing if k not in FLAGS]
    fixes = []
    if flagged:
      fixes.append(f"pass {' and '.join(flagged)}")
    if others:
      fixes.append(
        f"use a preset that sets {', '.join(others)}"
        + (f" ({', '.join(presets)})" if presets else "")
        + " or an experiment file"
      )
    raise ConfigError(
      f"Model {name!r} ({cls.__name__}) needs {', '.join(missing)}, which it has "
      f"no default for: {'; or '.join(fixes)}."
    )
  if "vocab_size" in fields and not jnp.issubdtype(in_dtype, jnp.integer):
    raise ConfigError(
      f"Model {name!r} ({cls.__name__}) reads token ids; pass --input-dtype int32 "
      f"(the input is now {in_dtype.name})."
    )
  # The one way jaxdl builds a model (as training does); its errors are ConfigErrors already.
  model = models.build_model({"name": name, **kwargs})

  # Every positional input of __call__ (src and tgt for seq2seq) gets the given shape.
  params = list(inspect.signature(cls.__call__).parameters.values())[1:]
  num_inputs = sum(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params)
  inputs = (jax.ShapeDtypeStruct(shape, in_dtype),) * max(num_inputs, 1)

  opt_config = config_lib.base_config().optimizer
  opt_config.name = optimizer
  tx, _ = optim.make_optimizer(opt_config, 1)
  what = f"model {name!r}"
  summary = _summarize_or_explain(model, inputs, tx, what, flops)
  heading = (
    f"{what} ({cls.__name__}), inputs {_describe_inputs(inputs)}, optimizer "
    f"{optimizer} (default settings)"
  )
  return heading, summary
