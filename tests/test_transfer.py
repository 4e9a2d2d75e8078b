"""Copying another run's parameters (and BatchNorm statistics) into a new model by path prefix."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.errors import CheckpointError, ConfigError
from jaxdl.train import param_paths
from jaxdl.transfer import transfer, transfer_variables


def _tree(offset: float, head_classes: int = 4, trunk: str = "backbone"):
  return {
    trunk: {
      "Dense_0": {"kernel": jnp.full((2, 3), offset), "bias": jnp.full((3,), offset)},
      "Dense_1": {"kernel": jnp.full((3, 3), offset + 1)},
    },
    "head": {"kernel": jnp.full((3, head_classes), offset + 2)},
  }


def _assert_same(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_prefix_mapping_copies_the_subtree_and_leaves_the_rest():
  source = _tree(10.0, head_classes=4, trunk="backbone")
  target = _tree(0.0, head_classes=7, trunk="encoder")  # A new head: 7 classes.
  new, copied = transfer(target, source, [("encoder", "backbone")])
  assert sorted(copied) == [
    "encoder/Dense_0/bias",
    "encoder/Dense_0/kernel",
    "encoder/Dense_1/kernel",
  ]
  _assert_same(new["encoder"], source["backbone"])
  _assert_same(new["head"], target["head"])  # Not covered: unchanged.
  assert jax.tree.structure(new) == jax.tree.structure(target)


def test_empty_mapping_copies_every_leaf_to_the_same_path():
  source, target = _tree(5.0), _tree(0.0)
  new, copied = transfer(target, source, [])
  _assert_same(new, source)
  assert len(copied) == 4


def test_prefixes_end_at_slashes_and_may_name_a_single_leaf():
  source = {"block": {"w": jnp.ones(2)}, "block_2": {"w": jnp.full((2,), 2.0)}}
  target = {"a": {"w": jnp.zeros(2)}, "b": {"w": jnp.zeros(2)}, "c": jnp.zeros(2)}
  # "block" must not capture "block_2"; a prefix naming a leaf moves just that leaf.
  new, copied = transfer(target, source, [("a", "block"), ("c", "block_2/w/")])
  np.testing.assert_array_equal(new["a"]["w"], [1.0, 1.0])
  np.testing.assert_array_equal(new["c"], [2.0, 2.0])
  np.testing.assert_array_equal(new["b"]["w"], [0.0, 0.0])
  assert copied == ["a/w", "c"]


def test_dtype_is_cast_to_the_target():
  source = {"w": jnp.array([1.5, -2.25], jnp.float32)}
  target = {"w": jnp.zeros(2, jnp.bfloat16)}
  new, _ = transfer(target, source, [])
  assert new["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(new["w"], np.float32), [1.5, -2.25])


def test_every_problem_is_reported_in_one_message():
  source = {
    "backbone": {
      "Dense_0": {"kernel": jnp.ones((2, 3))},
      "Dense_1": {"kernel": jnp.ones((3, 5)), "bias": jnp.ones(5)},
    },
    "extra": {"w": jnp.ones(1)},
  }
  target = {
    "encoder": {"Dense_0": {"kernel": jnp.zeros((2, 3))}, "Dense_1": {"kernel": jnp.zeros((3, 4))}}
  }
  mapping = [
    ("encoder", "backbone"),  # Dense_1/kernel misfits, Dense_1/bias has no target.
    ("encoder", "backbone/Dense_0"),  # Writes encoder/kernel: no such path.
    ("encoder/Dense_0", "backbone/Dense_0"),  # Writes encoder/Dense_0/kernel again.
    ("", "backbone/Dens_2"),
  ]  # Matches nothing.
  with pytest.raises(CheckpointError) as info:
    transfer(target, source, mapping)
  message = str(info.value)
  assert "5 problems" in message
  assert (
    "'backbone/Dense_1/kernel' has shape (3, 5) but target 'encoder/Dense_1/kernel' has "
    "shape (3, 4)"
  ) in message
  assert "goes to 'encoder/Dense_1/bias', which this model does not have" in message
  assert "goes to 'encoder/kernel'" in message
  assert "close paths: encoder/Dense_" in message
  assert "target 'encoder/Dense_0/kernel' is written twice" in message
  assert "entry 0 ('encoder' <- 'backbone')" in message
  assert "entry 2 ('encoder/Dense_0' <- 'backbone/Dense_0')" in message
  assert "source prefix 'backbone/Dens_2' of entry 3" in message
  assert "close prefixes there: backbone/Dense_" in message


@pytest.mark.parametrize("mapping", ["encoder", [("encoder",)], [("a", 3)]])
def test_malformed_mapping(mapping):
  with pytest.raises(ConfigError, match="init.mapping"):
    transfer(_tree(0.0), _tree(1.0), mapping)


class _Trunk(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(4)(x)
    return nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)


class _Net(nn.Module):
  trunk: str
  classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.classes, name="head")(_Trunk(name=self.trunk)(x, train))


def _trained_source():
  """A source model whose BatchNorm statistics moved away from their initial 0 and 1."""
  model = _Net("backbone", 3)
  x = jax.random.normal(jax.random.key(1), (8, 2)) * 3.0 + 1.0
  variables = model.init(jax.random.key(0), x)
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  return x, {"params": variables["params"], **updates}


def _saved(variables):
  """The loop state layout `Checkpointer.restore_as_saved` returns for a jaxdl run."""
  return {
    "state": {
      "params": variables["params"],
      "step": jnp.asarray(10),
      "model_state": {
        "batch_stats": variables["batch_stats"],
        "cache": {"backbone": {"c": jnp.ones(1)}},
      },
      "opt_state": {},
    },
    "rng": jnp.zeros(2, jnp.uint32),
  }


def test_transfer_variables_moves_params_and_batch_stats():
  x, source_vars = _trained_source()
  target_model = _Net("encoder", 5)
  target_vars = target_model.init(jax.random.key(7), x)
  params, model_state, copied = transfer_variables(
    target_vars["params"],
    {"batch_stats": target_vars["batch_stats"]},
    _saved(source_vars),
    [("encoder", "backbone")],
  )
  assert sorted(copied) == ["batch_stats", "params"]  # The source-only "cache" is ignored.
  assert sorted(copied["batch_stats"]) == ["encoder/BatchNorm_0/mean", "encoder/BatchNorm_0/var"]
  assert float(jnp.abs(source_vars["batch_stats"]["backbone"]["BatchNorm_0"]["mean"]).max()) > 0.1
  _assert_same(model_state["batch_stats"]["encoder"], source_vars["batch_stats"]["backbone"])
  _assert_same(params["encoder"], source_vars["params"]["backbone"])
  _assert_same(params["head"], target_vars["params"]["head"])
  # The transferred trunk computes what the source's did, statistics included.
  trunk = lambda name, variables: _Trunk().apply(
    {k: c[name] for k, c in variables.items()}, x, train=False
  )
  np.testing.assert_allclose(
    trunk("encoder", {"params": params, **model_state}), trunk("backbone", source_vars), rtol=1e-6
  )
  assert target_model.apply({"params": params, **model_state}, x).shape == (8, 5)


def test_target_collection_missing_from_the_source_keeps_its_init():
  x, source_vars = _trained_source()
  target_vars = _Net("backbone", 3).init(jax.random.key(7), x)
  saved = _saved(source_vars)
  del saved["state"]["model_state"]["batch_stats"]
  params, model_state, copied = transfer_variables(
    target_vars["params"], {"batch_stats": target_vars["batch_stats"]}, saved, []
  )
  _assert_same(model_state["batch_stats"], target_vars["batch_stats"])
  _assert_same(params, source_vars["params"])
  assert set(copied) == {"params"}


def test_collection_problems_join_the_parameter_problems():
  x, source_vars = _trained_source()
  target_vars = _Net("backbone", 5).init(jax.random.key(7), x)
  saved = _saved(source_vars)
  saved["state"]["model_state"]["batch_stats"]["backbone"]["BatchNorm_0"]["mean"] = jnp.zeros(6)
  with pytest.raises(CheckpointError) as info:
    transfer_variables(
      target_vars["params"], {"batch_stats": target_vars["batch_stats"]}, saved, []
    )
  message = str(info.value)
  assert "3 problems" in message
  assert "params: source 'head/kernel' has shape (4, 3) but target 'head/kernel'" in message
  assert "params: source 'head/bias' has shape (3,) but target 'head/bias'" in message
  assert "batch_stats: source 'backbone/BatchNorm_0/mean' has shape (6,)" in message


@pytest.mark.parametrize(
  "saved",
  [
    {"params": {"w": jnp.ones(1)}},  # A bare params tree.
    {"state": {"step": jnp.asarray(1)}},
    [1, 2],
  ],
)
def test_source_that_is_not_a_jaxdl_checkpoint(saved):
  with pytest.raises(
    CheckpointError, match="not a jaxdl training checkpoint: it lacks state/params"
  ):
    transfer_variables({"w": jnp.ones(1)}, {}, saved, [])


def test_paths_in_messages_are_the_ones_summary_shows():
  # A sanity link between the two modules: transfer speaks in param_paths' path strings.
  tree = _tree(0.0)
  _, copied = transfer(tree, tree, [])
  assert sorted(copied) == sorted(param_paths.named_leaves(tree))
