"""Scanned and unrolled layer stacks (jaxdl.nn.layer_stack) hold the same parameters in two forms:
{"block_0": t0, "block_1": t1, ...} unrolled, {"layers": stack of t0, t1, ...} scanned, with a
leading layer axis. These convert any tree holding parameters (parameters, optimizer moments, a
checkpoint's loop state) between the forms.
"""

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.nn.layer_stack import LAYERS


def _numbered(node: dict, prefix: str) -> list[str] | None:
  """The keys f"{prefix}_0", f"{prefix}_1", ... of `node` in layer order, if it has them."""
  pattern = re.compile(rf"{re.escape(prefix)}_(\d+)")
  found = {int(m.group(1)): k for k in node if (m := pattern.fullmatch(str(k)))}
  if not found:
    return None
  if sorted(found) != list(range(len(found))):
    raise ValueError(
      f"Layers {sorted(found)} under {prefix}_*: a stack to scan must number its layers 0..L-1."
    )
  return [found[i] for i in range(len(found))]


def _scanned(node: dict, prefix: str) -> dict:
  """{prefix_0: t0, prefix_1: t1, ..., other: x} -> {LAYERS: stack of t0, t1, ..., other: x}."""
  keys = _numbered(node, prefix)
  if keys is None:
    return node
  rest = {k: v for k, v in node.items() if k not in keys}
  if LAYERS in rest:
    raise ValueError(f"Cannot scan {keys[0]}, ...: the same dict already holds {LAYERS!r}.")
  stack = lambda *xs: (jnp if isinstance(xs[0], jax.Array) else np).stack(xs)
  return {**rest, LAYERS: jax.tree.map(stack, *[node[k] for k in keys])}


def _unscanned(node: dict, prefix: str) -> dict:
  """The reverse of `_scanned`: node[LAYERS] split along its leading axis."""
  if LAYERS not in node:
    return node
  sizes = {x.shape[0] for x in jax.tree.leaves(node[LAYERS])}
  if len(sizes) != 1:
    raise ValueError(f"{LAYERS!r} holds arrays of leading sizes {sorted(sizes)}, not one L.")
  rest = {k: v for k, v in node.items() if k != LAYERS}
  layers = {f"{prefix}_{i}": jax.tree.map(lambda x: x[i], node[LAYERS]) for i in range(sizes.pop())}
  return {**rest, **layers}


def scan_layers(tree: Any, prefix: str = "block") -> Any:
  """`tree` (parameters, optimizer moments, a whole loop state) with every dict of numbered
  layers {prefix_0: t0, prefix_1: t1, ...} replaced by {LAYERS: the stack of t0, t1, ...}: the
  unrolled form -> the scanned one. Other entries are kept."""
  is_stack = lambda node: isinstance(node, dict) and _numbered(node, prefix) is not None
  return jax.tree.map(lambda n: _scanned(n, prefix) if is_stack(n) else n, tree, is_leaf=is_stack)


def unscan_layers(tree: Any, prefix: str = "block") -> Any:
  """The reverse of `scan_layers`: every dict's LAYERS entry split along its leading axis into
  {prefix_0: ..., prefix_1: ...}."""
  is_stack = lambda node: isinstance(node, dict) and LAYERS in node
  return jax.tree.map(lambda n: _unscanned(n, prefix) if is_stack(n) else n, tree, is_leaf=is_stack)


def like_layers(source: Any, target: Any) -> Any:
  """`source` (nested dicts) with each stack in the form `target` has it in: where a dict of
  `target` holds LAYERS and the same dict of `source` numbered layers, they are stacked, and the
  reverse. Parameters saved by an unrolled model so load into a scanned one, and the reverse."""
  if not (isinstance(source, dict) and isinstance(target, dict)):
    return source
  if LAYERS in target and LAYERS not in source:
    prefix = _only_in(source, target)
    source = source if prefix is None else _scanned(source, prefix)
  elif LAYERS in source and LAYERS not in target:
    prefix = _only_in(target, source)
    source = source if prefix is None else _unscanned(source, prefix)
  return {k: like_layers(v, target.get(k)) for k, v in source.items()}


def _only_in(numbered: dict, other: dict) -> str | None:
  """The prefix p of the layers p_0, p_1, ... that `numbered` has and `other` lacks, if one."""
  prefixes = {
    m.group(1) for k in numbered if (m := re.fullmatch(r"(.+)_\d+", str(k))) and k not in other
  }
  return prefixes.pop() if len(prefixes) == 1 else None
