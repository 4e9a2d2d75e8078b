"""Parameter paths and the regular expressions that select them."""

import collections

import jax
import jax.numpy as jnp
import pytest

from jaxdl.errors import ConfigError
from jaxdl.train import param_paths

PARAMS = {
  "encoder": {
    "Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)},
    "LayerNorm_0": {"scale": jnp.ones(3)},
  },
  "head": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
}


def test_path_str_joins_dict_attribute_and_sequence_keys():
  Pair = collections.namedtuple("Pair", ["mu", "nu"])
  tree = {"a": [Pair(mu=1, nu={"b": 2})]}
  paths = [param_paths.path_str(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert paths == ["a/0/mu", "a/0/nu/b"]
  assert param_paths.path_str(()) == ""


def test_named_leaves_and_unflatten_round_trip():
  flat = param_paths.named_leaves(PARAMS)
  assert sorted(flat) == [
    "encoder/Dense_0/bias",
    "encoder/Dense_0/kernel",
    "encoder/LayerNorm_0/scale",
    "head/bias",
    "head/kernel",
  ]
  assert flat["head/kernel"] is PARAMS["head"]["kernel"]
  rebuilt = param_paths.unflatten(flat)
  assert jax.tree.structure(rebuilt) == jax.tree.structure(PARAMS)
  assert all(a is b for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(PARAMS)))


def test_match_is_a_full_match_against_any_pattern():
  selected = param_paths.named_leaves(
    param_paths.match(PARAMS, ["encoder/.*/kernel", "head/bias"], "optimizer.freeze")
  )
  assert selected == {
    "encoder/Dense_0/bias": False,
    "encoder/Dense_0/kernel": True,
    "encoder/LayerNorm_0/scale": False,
    "head/bias": True,
    "head/kernel": False,
  }
  # Full match: "kernel" alone is no path; "bias" is not a prefix search either.
  assert not any(jax.tree.leaves(param_paths.match(PARAMS, ["kernel"], "x", require_match=False)))
  all_kernels = param_paths.match(PARAMS, [".*kernel"], "x")
  assert sum(jax.tree.leaves(all_kernels)) == 2
  assert jax.tree.structure(all_kernels) == jax.tree.structure(PARAMS)


def test_no_patterns_select_nothing():
  assert not any(jax.tree.leaves(param_paths.match(PARAMS, [], "optimizer.freeze")))


def test_typo_names_the_key_the_pattern_and_close_paths_first():
  with pytest.raises(ConfigError) as info:
    param_paths.match(PARAMS, ["encoder/.*", "encoder/Dense_0/kernal"], "optimizer.freeze")
  message = str(info.value)
  assert "optimizer.freeze" in message and "'encoder/Dense_0/kernal'" in message
  assert "matches no parameter path" in message
  # The closest path comes first among the examples.
  examples = message.split("include ")[1]
  assert examples.startswith("encoder/Dense_0/kernel")


def test_examples_fall_back_to_the_first_paths_and_count_big_trees():
  tree = {f"layer_{i}": {"w": jnp.zeros(1)} for i in range(10)}
  with pytest.raises(ConfigError, match=r"include .*layer_0/w.* lists all 10"):
    param_paths.match(tree, ["zzz"], "optimizer.no_weight_decay")
  with pytest.raises(ConfigError, match="no parameters at all"):
    param_paths.match({}, ["a"], "optimizer.freeze")


@pytest.mark.parametrize(
  "patterns, message",
  [
    (["encoder/(.*"], r"optimizer.freeze: 'encoder/\(\.\*' is not a valid regular expression"),
    ("encoder/.*", "must be a list of regular expressions"),
    ([3], "3 is not a string"),
  ],
)
def test_bad_patterns(patterns, message):
  with pytest.raises(ConfigError, match=message):
    param_paths.match(PARAMS, patterns, "optimizer.freeze")
