"""Conversion rules: which reference tensors make which jaxdl arrays, and back.

A family (GPT-2, BERT, torchvision's ResNet, ...) lists `Rule`s. Each rule ties one or more
jaxdl paths ("params/block_0/self_attn/query/kernel", "batch_stats/bn1/mean") to one or more
reference tensor names ("h.0.attn.c_attn.weight") with a function each way, so import and export
are one table read in two directions and cannot drift apart. `to_variables` and `to_tensors`
apply a table, and every problem (a missing tensor, a tensor nobody reads, a wrong shape) is
listed in one error.
"""

import dataclasses
import fnmatch
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from jaxdl.errors import CheckpointError
from jaxdl.train import param_paths

Arrays = tuple[np.ndarray, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  """jaxdl arrays `jax` <-> reference tensors `ref`.

  `to_jax(*ref arrays)` gives the jax arrays in order, `to_ref(*jax arrays)` the reverse.
  """

  jax: tuple[str, ...]
  ref: tuple[str, ...]
  to_jax: Callable[..., Arrays]
  to_ref: Callable[..., Arrays]
  optional: bool = False  # Its tensors may be missing on import (then it makes nothing).


def _one(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., Arrays]:
  return lambda *xs: (fn(*xs),)


def copy(jax_path: str, ref: str) -> Rule:
  """The same array both ways."""
  return Rule((jax_path,), (ref,), _one(lambda x: x), _one(lambda x: x))


def reshaped(jax_path: str, ref: str, jax_shape: Sequence[int], ref_shape: Sequence[int]) -> Rule:
  """The same numbers in another shape (for example a [1, 1, D] token kept as [1, 1, D] or [D])."""
  return Rule(
    (jax_path,),
    (ref,),
    _one(lambda x: np.reshape(x, jax_shape)),
    _one(lambda x: np.reshape(x, ref_shape)),
  )


def linear(
  jax_prefix: str,
  ref_prefix: str,
  kernel_shape: Sequence[int],
  *,
  bias: bool = True,
  transposed: bool = True,
  bias_shape: Sequence[int] | None = None,
) -> list[Rule]:
  """A torch Linear (weight [out, in]; `transposed=False` for GPT-2's Conv1D, [in, out]) <-> a
  Dense or DenseGeneral kernel of `kernel_shape` (input axes first) and its bias."""
  in_size = int(np.prod(kernel_shape)) // _out_size(kernel_shape, bias_shape)
  to_jax = lambda w: np.reshape(w.T if transposed else w, kernel_shape)
  to_ref = lambda k: (lambda m: m.T if transposed else m)(np.reshape(k, (in_size, -1)))
  rules = [Rule((f"{jax_prefix}/kernel",), (f"{ref_prefix}.weight",), _one(to_jax), _one(to_ref))]
  if bias:
    shape = bias_shape or kernel_shape[-1:]
    rules.append(reshaped(f"{jax_prefix}/bias", f"{ref_prefix}.bias", shape, (-1,)))
  return rules


def _out_size(kernel_shape: Sequence[int], bias_shape: Sequence[int] | None) -> int:
  return int(np.prod(bias_shape)) if bias_shape else int(kernel_shape[-1])


def conv(jax_prefix: str, ref_prefix: str, *, bias: bool = True) -> list[Rule]:
  """A torch Conv2d (weight [O, I, H, W]) <-> a flax Conv kernel [H, W, I, O] and its bias."""
  rules = [
    Rule(
      (f"{jax_prefix}/kernel",),
      (f"{ref_prefix}.weight",),
      _one(lambda w: np.transpose(w, (2, 3, 1, 0))),
      _one(lambda k: np.transpose(k, (3, 2, 0, 1))),
    )
  ]
  if bias:
    rules.append(copy(f"{jax_prefix}/bias", f"{ref_prefix}.bias"))
  return rules


def layer_norm(jax_prefix: str, ref_prefix: str, *, bias: bool = True) -> list[Rule]:
  """A torch LayerNorm (weight, bias) <-> a flax LayerNorm (scale, bias)."""
  rules = [copy(f"{jax_prefix}/scale", f"{ref_prefix}.weight")]
  if bias:
    rules.append(copy(f"{jax_prefix}/bias", f"{ref_prefix}.bias"))
  return rules


def batch_norm(jax_prefix: str, ref_prefix: str) -> list[Rule]:
  """A torch BatchNorm (weight, bias, running_mean, running_var, num_batches_tracked) <-> a flax
  BatchNorm's params (scale, bias) and batch_stats (mean, var). `jax_prefix` is the module's path
  below the collection: "layer1_0/bn1"."""
  # Old checkpoints predate the counter; torch's load_state_dict wants it.
  counter = Rule(
    (),
    (f"{ref_prefix}.num_batches_tracked",),
    lambda _: (),
    lambda: (np.array(0, np.int64),),
    optional=True,
  )
  return [
    copy(f"params/{jax_prefix}/scale", f"{ref_prefix}.weight"),
    copy(f"params/{jax_prefix}/bias", f"{ref_prefix}.bias"),
    copy(f"batch_stats/{jax_prefix}/mean", f"{ref_prefix}.running_mean"),
    copy(f"batch_stats/{jax_prefix}/var", f"{ref_prefix}.running_var"),
    counter,
  ]


def under(collection: str, rules: Iterable[Rule]) -> list[Rule]:
  """`rules` with their jax paths put under `collection` ("params")."""
  return [dataclasses.replace(r, jax=tuple(f"{collection}/{p}" for p in r.jax)) for r in rules]


def _problems_error(problems: list[str], what: str, hint: str) -> CheckpointError:
  shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
  return CheckpointError(
    f"{what} does not fit ({len(problems)} problem{'s' if len(problems) > 1 else ''}). {hint}"
    "\n  - " + "\n  - ".join(shown)
  )


def to_variables(
  rules: Sequence[Rule],
  tensors: Mapping[str, np.ndarray],
  shapes: Mapping[str, Any],
  *,
  what: str,
  ignore: Sequence[str] = (),
) -> dict[str, Any]:
  """The jaxdl variables {"params": ..., ...} that `rules` make of `tensors`.

  Args:
    rules: the family's table for this model.
    tensors: the reference checkpoint's tensors by name.
    shapes: {jax path: ShapeDtypeStruct} of the model's variables (from `jax.eval_shape(init)`);
      the result has exactly these paths, in these dtypes.
    what: names the checkpoint in errors.
    ignore: shell patterns of tensor names that carry no weights (GPT-2's "h.*.attn.bias" mask).

  Raises:
    CheckpointError: listing every tensor missing, left unread, or of the wrong shape, and every
      model array no tensor makes.
  """
  problems: list[str] = []
  flat: dict[str, np.ndarray] = {}
  used: set[str] = set()
  for rule in rules:
    missing = [name for name in rule.ref if name not in tensors]
    if missing and rule.optional and not rule.jax:
      continue
    if missing:
      problems += [f"tensor {name!r} is missing (it makes {list(rule.jax)})" for name in missing]
      continue
    used.update(rule.ref)
    for path, array in zip(rule.jax, rule.to_jax(*(np.asarray(tensors[n]) for n in rule.ref))):
      if path not in shapes:
        problems.append(f"{list(rule.ref)} make {path!r}, which the model does not have")
      elif tuple(array.shape) != tuple(shapes[path].shape):
        problems.append(
          f"{list(rule.ref)} give {path!r} shape {tuple(array.shape)}; the model's is "
          f"{tuple(shapes[path].shape)}"
        )
      else:
        flat[path] = array.astype(shapes[path].dtype)
  unread = sorted(
    n for n in tensors if n not in used and not any(fnmatch.fnmatchcase(n, p) for p in ignore)
  )
  problems += [
    f"tensor {name!r} {tuple(tensors[name].shape)} is read by no rule" for name in unread
  ]
  problems += [f"model array {p!r} is made by no tensor" for p in shapes if p not in flat]
  if problems:
    raise _problems_error(
      problems,
      what,
      "Check that the checkpoint is of the model it is loaded as (and of the same size).",
    )
  return param_paths.unflatten(flat)


def to_tensors(rules: Sequence[Rule], variables: Any) -> dict[str, np.ndarray]:
  """The reference tensors `rules` make of jaxdl `variables` (every array a rule names)."""
  flat = {p: np.asarray(a) for p, a in param_paths.named_leaves(variables).items()}
  missing = sorted({p for rule in rules for p in rule.jax if p not in flat})
  if missing:
    raise _problems_error(
      [f"model array {p!r} is missing" for p in missing],
      "The variables to export",
      "Export the variables of the model they were built for.",
    )
  tensors: dict[str, np.ndarray] = {}
  for rule in rules:
    for name, array in zip(rule.ref, rule.to_ref(*(flat[p] for p in rule.jax))):
      tensors[name] = np.asarray(array, order="C")  # ascontiguousarray makes 0-d arrays 1-d.
  return tensors
