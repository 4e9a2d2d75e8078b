"""LoRA (Hu et al. 2021, arXiv:2106.09685): fine-tunes low-rank updates of chosen kernels while the
model's own parameters stay frozen.

For each kernel W [in, out] that `model.lora.targets` selects, the model computes with

    W_eff = W + (alpha / rank) * A @ B,    A [in, rank] random, B [rank, out] zero,

with A drawn as a Dense kernel is, so step 0 computes exactly what the base model does. Only A and
B train.

How: a transformation of parameters, not of the model. The train state keeps the model's own
parameters (`TrainState.params`: the frozen base, with no gradient and no optimizer state) and the
adapters (`TrainState.adapters`: what the optimizer, the moving average and the norms see), and
every forward pass builds the model's ordinary parameter tree with `merge`. So every model, built-in
or a user's, gets LoRA without a line of model code; checkpoints, resume, sweeps and layouts see one
more pytree; and what a run exports or evaluates is `merge`'s output (`saved_params`).

What that costs: each step builds the targeted kernels anew (in * out * rank multiply-adds each),
and the backward pass forms each targeted kernel's full gradient before reducing it to A's and B's.
LoRA here saves the optimizer state and every untargeted parameter's gradient; an x @ A @ B branch
inside the layers would also save the targeted kernels' gradients, at the price of model code.

Kernels with more than two axes split into in and out axes as the layer applies them: a leading
scanned-layer axis (a path through `layers/`) is a batch axis, one adapter per layer; a kernel whose
first axis is named "embed" (jaxdl.nn.partitioning; attention's query/key/value [D, N, H]) has in =
D and out = N x H; any other kernel has in = all axes but the last (attention's out [N, H, D]: in =
N x H; a convolution [kh, kw, I, O]: in = kh x kw x I). The adapters keep those axes unflattened,
A [L?, *in, rank] and B [L?, rank, *out], so `merge` reads the split from their shapes.
"""

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.errors import ConfigError
from jaxdl.nn.layer_stack import LAYERS
from jaxdl.train import param_paths

# The `model.lora` config section. rank 0: off. The targets suit jaxdl's Transformers (GPT, BERT,
# ViT, the seq2seq Transformer): the query and value kernels of every attention layer, as Hu et
# al. adapt in GPT-3.
DEFAULTS = {"rank": 0, "alpha": 8.0, "targets": [".*(query|value)/kernel"]}
A, B = "lora_a", "lora_b"  # The adapter pair under each adapted kernel's path.


@dataclasses.dataclass(frozen=True)
class LoRA:
  """The settings of a LoRA run: `settings` checks them."""

  rank: int
  alpha: float
  targets: tuple[str, ...]

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def settings(section: Mapping[str, Any] | None) -> LoRA | None:
  """The `model.lora` section checked (absent keys at DEFAULTS); None when LoRA is off (rank 0).

  Raises:
    ConfigError: an unknown key, a rank that is not a whole number >= 0, an alpha that is not
      positive, or targets that are not a non-empty list of regular expressions.
  """
  if isinstance(section, LoRA):
    return section
  section = dict(section or {})
  unknown = sorted(set(section) - set(DEFAULTS))
  if unknown:
    raise ConfigError(
      f"model.lora has no setting(s) {unknown}; its settings are {sorted(DEFAULTS)}."
    )
  values = {**DEFAULTS, **section}
  rank, alpha, targets = values["rank"], values["alpha"], values["targets"]
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
    raise ConfigError(
      f"model.lora.rank={rank!r} must be a whole number >= 0: 0 turns LoRA off, e.g. 8 adapts "
      "the targeted kernels with rank-8 updates."
    )
  if rank == 0:
    return None
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
    raise ConfigError(
      f"model.lora.alpha={alpha!r} must be a positive number; the update is scaled by "
      f"alpha / rank (e.g. alpha={float(rank)} for a scale of 1)."
    )
  param_paths.compile_patterns(targets, "model.lora.targets")
  if not targets:
    raise ConfigError(
      f"model.lora.targets is empty, so model.lora.rank={rank} would adapt nothing; give "
      f"patterns of kernel paths, e.g. {DEFAULTS['targets']}, or set model.lora.rank=0."
    )
  return LoRA(rank, float(alpha), tuple(targets))


def _layer_axes(path: str) -> int:
  """1 for a kernel of a scanned stack (its leading axis counts layers), else 0."""
  return int(LAYERS in path.split(param_paths.SEP))


def _in_axes(path: str, shape: tuple[int, ...], names: tuple[Any, ...] | None) -> int:
  """How many axes (after the layer axis) a kernel's input has: see the module docstring."""
  lead = _layer_axes(path)
  if names is not None and len(names) == len(shape) and names[lead] == "embed":
    return 1
  return len(shape) - lead - 1


def _kernels(params: Any, lora: LoRA) -> dict[str, Any]:
  """{path: leaf} of the kernels `lora.targets` selects, in the tree's order.

  Raises:
    ConfigError: a pattern matches no path, or selects something that is not a kernel.
  """
  selected = param_paths.named_leaves(param_paths.match(params, lora.targets, "model.lora.targets"))
  leaves = param_paths.named_leaves(params)
  kernels = {path: leaves[path] for path, hit in selected.items() if hit}
  for path, leaf in kernels.items():
    if path.rpartition(param_paths.SEP)[2] != "kernel" or leaf.ndim - _layer_axes(path) < 2:
      raise ConfigError(
        f"model.lora.targets={list(lora.targets)} selects {path} {tuple(leaf.shape)}, which is "
        "not a kernel: LoRA adapts weight matrices (parameters named 'kernel' with two or more "
        "axes per layer), not biases, normalisation scales or embeddings. Narrow the patterns, "
        f"e.g. {DEFAULTS['targets']}."
      )
  return kernels


def init_adapters(params: Any, lora: LoRA, key: jax.Array) -> dict[str, Any]:
  """The adapters of the kernels `lora.targets` selects in `params`, {kernel path: {"lora_a": A,
  "lora_b": B}} as nested dicts, in each kernel's dtype: A drawn as flax's Dense kernels are
  (LeCun normal over A's input axes), one key per kernel from `key`; B zero.

  `params` may hold flax's logical-axis boxes (`model.init`'s output), whose names tell a
  kernel's in axes from its out axes, or plain arrays.

  Raises:
    ConfigError: as `_kernels`.
  """
  is_box = lambda x: isinstance(x, nn.Partitioned)
  boxes = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_box)[0]
  names = {param_paths.path_str(kp): tuple(b.names) for kp, b in boxes if is_box(b)}
  kernels = _kernels(nn.unbox(params), lora)
  adapters = {}
  for k, (path, w) in zip(jax.random.split(key, max(len(kernels), 1)), kernels.items()):
    lead = _layer_axes(path)
    n_in = _in_axes(path, w.shape, names.get(path))
    layer_shape, out_shape = w.shape[:lead], w.shape[lead + n_in :]
    init = jax.nn.initializers.lecun_normal(
      in_axis=tuple(range(lead, lead + n_in)), out_axis=-1, batch_axis=tuple(range(lead))
    )
    adapters[f"{path}/{A}"] = init(k, (*w.shape[: lead + n_in], lora.rank), w.dtype)
    adapters[f"{path}/{B}"] = jnp.zeros((*layer_shape, lora.rank, *out_shape), w.dtype)
  return param_paths.unflatten(adapters)


def delta(a: jax.Array, b: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """A @ B shaped like the kernel (`shape`): a [*lead, *in, r] and b [*lead, r, *out] with any
  leading axes (a scanned stack's layers, a sweep's members) batched."""
  lead = a.ndim + b.ndim - 2 - len(shape)
  in_size, out_size = math.prod(a.shape[lead:-1]), math.prod(b.shape[lead + 1 :])
  a_LIR = a.reshape(*a.shape[:lead], in_size, a.shape[-1])
  b_LRO = b.reshape(*b.shape[:lead], b.shape[lead], out_size)
  return jnp.matmul(a_LIR, b_LRO).reshape(shape)


def merge(params: Any, adapters: Any, lora: LoRA | Mapping[str, Any]) -> Any:
  """`params` with each adapted kernel W replaced by W + (alpha / rank) * A @ B: the model's
  ordinary parameter tree, for `model.apply`, export and evaluation. The train step, the eval step
  and `saved_params` all call this function.

  Args:
    params: the base parameters (nested dicts of arrays).
    adapters: `init_adapters`'s tree, trained or not.
    lora: the LoRA settings, or the `model.lora` config section.

  Raises:
    ValueError: an adapter names a kernel `params` lacks (adapters of another model).
  """
  lora = settings(lora)
  if lora is None:
    raise ValueError("merge: model.lora.rank is 0, so there are no adapters to merge.")
  flat = param_paths.named_leaves(adapters)
  pairs = {path.rpartition("/")[0] for path in flat}
  missing = sorted(pairs - set(param_paths.named_leaves(params)))
  if missing:
    raise ValueError(f"merge: the adapters adapt kernels the parameters lack: {missing[:4]}.")

  def merged(keypath, w):
    path = param_paths.path_str(keypath)
    if path not in pairs:
      return w
    update = delta(flat[f"{path}/{A}"], flat[f"{path}/{B}"], w.shape)
    return w + (lora.scale * update).astype(w.dtype)

  return jax.tree_util.tree_map_with_path(merged, params)


def saved_params(saved_state: Mapping[str, Any], model_config: Mapping[str, Any]) -> Any:
  """The model's parameters in a saved train state (`Checkpointer.restore_as_saved(step)["state"]`)
  as evaluation uses them: the moving average when the run keeps one (of the adapters under LoRA),
  with the adapters merged in under LoRA. For `jaxdl export`, sampling and the like."""
  ema = saved_state.get("ema_params")
  adapters = saved_state.get("adapters")
  if not adapters:
    return ema if ema else saved_state["params"]
  return merge(saved_state["params"], ema if ema else adapters, model_config.get("lora") or {})
