"""Parameters named by path ("encoder/Dense_0/kernel") and selected by regular expressions.

The optimizer's `freeze`, `lr_multipliers` and `no_weight_decay` and the init's `mapping` pick
parameters this way. A pattern that selects nothing is almost always a typo, so `match` refuses it
and lists the paths the tree does have, closest first.
"""

import difflib
import re
from typing import Any, Iterable, Mapping

import jax

from jaxdl.errors import ConfigError

SEP = "/"
_EXAMPLES = 6  # How many paths an error message lists.


def _key_str(key: Any) -> str:
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_str(keypath: Iterable[Any]) -> str:
  """'a/b/kernel' for the jax key path (DictKey('a'), DictKey('b'), DictKey('kernel'))."""
  return SEP.join(_key_str(k) for k in keypath)


def named_leaves(tree: Any) -> dict[str, Any]:
  """{path: leaf} for every leaf of `tree`, in the tree's flattening order."""
  return {path_str(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Nested dicts from {path: leaf}; the inverse of `named_leaves` for trees of dicts."""
  tree: dict[str, Any] = {}
  for path, leaf in flat.items():
    *parents, name = path.split(SEP)
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[name] = leaf
  return tree


def example_paths(target: str, paths: Iterable[str], n: int = _EXAMPLES) -> list[str]:
  """Up to `n` of `paths`: those closest to `target` first, then the tree's first ones."""
  paths = list(paths)
  close = difflib.get_close_matches(target, paths, n=n, cutoff=0.4)
  return close + [p for p in paths if p not in close][: n - len(close)]


def describe_paths(target: str, paths: Iterable[str]) -> str:
  """' The tree has N paths, e.g. a, b, ...' for error messages."""
  paths = list(paths)
  if not paths:
    return " The tree has no parameters at all."
  shown = ", ".join(example_paths(target, paths))
  more = "" if len(paths) <= _EXAMPLES else f" (`jaxdl summary` lists all {len(paths)})"
  return f" Its paths include {shown}{more}."


def compile_patterns(patterns: Any, what: str) -> list[re.Pattern]:
  """The regular expressions of config key `what`, checked to be a list of valid patterns."""
  if isinstance(patterns, (str, bytes)) or not isinstance(patterns, Iterable):
    raise ConfigError(
      f"{what}={patterns!r} must be a list of regular expressions, e.g. "
      "['encoder/.*'], not a single value."
    )
  compiled = []
  for pattern in patterns:
    if not isinstance(pattern, str):
      raise ConfigError(
        f"{what}: {pattern!r} is not a string; give each parameter pattern as a "
        "regular expression such as 'encoder/.*/kernel'."
      )
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ConfigError(
        f"{what}: {pattern!r} is not a valid regular expression ({e}). Paths "
        "look like 'encoder/Dense_0/kernel'; escape special characters with \\."
      ) from None
  return compiled


def match(tree: Any, patterns: Any, what: str, *, require_match: bool = True) -> Any:
  """A tree of bools like `tree`: True where the leaf's path fully matches any of `patterns`.

  Args:
    tree: a pytree of parameters (nested dicts, as Flax makes them).
    patterns: regular expressions, each matched with `re.fullmatch` against "a/b/kernel" paths.
    what: the config key the patterns come from, for error messages, e.g. "optimizer.freeze".
    require_match: whether a pattern matching no path is an error (a typo would otherwise silently
      select nothing). Only callers that see part of the tree turn this off.

  Raises:
    ConfigError: a pattern is not a valid regular expression, or matches no path.
  """
  compiled = compile_patterns(patterns, what)
  paths = list(named_leaves(tree))
  if require_match:
    for pattern in compiled:
      if not any(pattern.fullmatch(p) for p in paths):
        raise ConfigError(
          f"{what}: pattern {pattern.pattern!r} matches no parameter path (it must "
          "match a whole path, as re.fullmatch does)." + describe_paths(pattern.pattern, paths)
        )
  return jax.tree_util.tree_map_with_path(
    lambda kp, _: any(p.fullmatch(path_str(kp)) for p in compiled), tree
  )
