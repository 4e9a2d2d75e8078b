"""Models by import path (jaxdl.models, `model.cls`): a module from outside jaxdl trains,
checkpoints, resumes and evaluates like a built-in one; every misnamed path is explained."""

import dataclasses
import inspect
import sys

import flax.linen as nn
import numpy as np
import pytest

from jaxdl import config as config_lib
from jaxdl import metrics as metrics_lib
from jaxdl import models, trainer
from jaxdl.errors import ConfigError
from jaxdl.nn import registry
from tests.conftest import REPO

USER_MODULE = """
import flax.linen as nn
import jax.numpy as jnp
from jaxdl import nn as jnn


class TinyNet(nn.Module):
  num_classes: int
  width: int = 16

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), strides=(2, 2))(x)
    x = nn.relu(x).reshape((x.shape[0], -1))
    x = nn.Dropout(0.1, deterministic=not train)(nn.relu(nn.Dense(self.width)(x)))
    return nn.Dense(self.num_classes)(x).astype(jnp.float32)


def make(num_classes, hidden=32):
  # A function returning a module also works; num_classes comes from the data.
  return TinyNet(num_classes=num_classes, width=hidden)


def not_a_model(num_classes):
  return 42

NOT_CALLABLE = 3
"""

SMALL = [
  "train.batch_size=32",
  "train.log_every_steps=5",
  "train.eval_every_steps=10",
  "train.checkpoint_every_steps=5",
  "data.eval_batch_size=500",
  "train.num_steps=10",
]


@pytest.fixture
def user_package(tmp_path, monkeypatch):
  """An importable module `userlayers` that lives outside jaxdl, and the same code as a file."""
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "userlayers.py").write_text(USER_MODULE)
  (tmp_path / "model_file.py").write_text(USER_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
  yield tmp_path
  sys.modules.pop("userlayers", None)


def _config(*overrides):
  config = config_lib.load_experiment(REPO / "experiments" / "mnist_cnn.py")
  config_lib.apply_overrides(config, [*SMALL, *overrides])
  return config


def _metrics(workdir):
  merged = {}
  for record in metrics_lib.read_metrics(workdir):
    merged.update({k: v for k, v in record.items() if not k.startswith("perf/")})
  return merged


def test_class_by_import_path_takes_config_arguments_and_data_hints(user_package):
  config = _config("model.cls=userlayers:TinyNet", "model.width=24")
  model = models.build_model(config.model, {"num_classes": 10})
  assert type(model).__name__ == "TinyNet" and model.width == 24
  assert model.num_classes == 10  # The experiment's model.num_classes=10 agrees with the data.
  assert isinstance(model, nn.Module)


def test_external_module_trains_resumes_and_evaluates_like_a_builtin(user_package, tmp_path):
  spec = f"model.cls={user_package / 'model_file.py'}:make"
  straight = trainer.train(_config(spec, "model.hidden=16"), tmp_path / "a", show_progress=False)
  assert straight.step == 10
  first = metrics_lib.read_metrics(tmp_path / "a")[0]["train/loss"]
  assert _metrics(tmp_path / "a")["train/loss"] < first
  # Stopped at step 5 and resumed: the same run, to the bit.
  trainer.train(
    _config(spec, "model.hidden=16", "train.num_steps=5"), tmp_path / "b", show_progress=False
  )
  resumed = trainer.train(_config(spec, "model.hidden=16"), tmp_path / "b", show_progress=False)
  assert _metrics(tmp_path / "b") == _metrics(tmp_path / "a")
  step, metrics, _ = trainer.evaluate_workdir(tmp_path / "b")
  assert step == 10 and metrics == resumed.eval_metrics


def test_file_import_is_cached_per_path(user_package):
  spec = f"{user_package / 'model_file.py'}:TinyNet"
  assert models.import_model(spec) is models.import_model(spec)


@pytest.mark.parametrize(
  "spec, message",
  [
    ("userlayers", "is not an import path"),
    ("userlayers:Tiny Net", "is not an import path"),
    ("no_such_package_xyz.layers:Net", "cannot import module 'no_such_package_xyz.layers'"),
    ("userlayers:TinyNt", "Did you mean TinyNet"),
    ("userlayers:NOT_CALLABLE", "names a int"),
    ("missing_dir/model.py:Net", "does not exist"),
  ],
)
def test_bad_import_paths_are_explained(user_package, spec, message):
  with pytest.raises(ConfigError, match=message):
    models.import_model(spec)


def test_bad_user_models_are_explained(user_package):
  with pytest.raises(ConfigError, match="not a Flax Linen module"):
    models.build_model({"name": "x", "cls": "userlayers:not_a_model"}, {"num_classes": 10})
  with pytest.raises(ConfigError, match=r"takes no argument\(s\) \['depth'\].*width"):
    models.build_model({"name": "x", "cls": "userlayers:TinyNet", "depth": 3}, {"num_classes": 10})
  with pytest.raises(ConfigError, match="contradicts the data"):
    models.build_model(
      {"name": "x", "cls": "userlayers:make", "num_classes": 3}, {"num_classes": 10}
    )
  with pytest.raises(ConfigError, match="Unknown config key 'model.depth'"):
    _config("model.cls=userlayers:make", "model.depth=3")


def test_failing_user_file_is_explained(tmp_path):
  (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
  with pytest.raises(ConfigError, match="importing .*broken.py.* failed: RuntimeError: boom"):
    models.import_model(f"{tmp_path / 'broken.py'}:Net")


def test_registered_names_still_build_and_reject_unknown_arguments():
  model = models.build_model({"name": "resnet18", "num_classes": 0}, {"num_classes": 7})
  assert model.num_classes == 7
  with pytest.raises(ConfigError, match="Unknown model 'resnet1'.*model.cls"):
    models.build_model({"name": "resnet1"})
  with pytest.raises(ConfigError, match="dtype"):
    models.build_model({"name": "mnist_cnn", "num_classes": 10, "dtype": "float33"})
  assert (
    np.dtype(
      models.build_model({"name": "mnist_cnn", "num_classes": 10, "dtype": "bfloat16"}).dtype
    ).name
    == "bfloat16"
  )


def test_experiment_model_file_is_kept_relative_to_the_current_directory(monkeypatch, tmp_path):
  """`model.cls = f"{__file__}:make_model"` is absolute; config.json keeps it relative to the
  directory commands run from, so a workdir works from another checkout."""
  experiment = REPO / "experiments" / "mnist_cnn_rnn.py"
  monkeypatch.chdir(REPO)
  assert config_lib.load_experiment(experiment).model.cls == (
    "experiments/mnist_cnn_rnn.py:make_model"
  )
  monkeypatch.chdir(tmp_path)  # Not under it: the absolute path is the only one that works.
  assert config_lib.load_experiment(experiment).model.cls == f"{experiment}:make_model"


# ------------------------------------------------------------------------------ The registry

# A module in a user's own file that registers its model where it defines it, as jaxdl's do.
REGISTERED_MODULE = """
import flax.linen as nn
from jaxdl.nn import registry


@registry.register("user_tiny_net", presets={"user_tiny_net_wide": {"width": 32}})
class UserTinyNet(nn.Module):
  num_classes: int
  width: int = 8

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.width)(x)))
"""


@pytest.fixture
def clean_registry():
  """Takes back whatever a test registers, so the global registry is the same for every test."""
  models_before, presets_before = dict(registry.MODELS), dict(registry.PRESETS)
  yield registry
  registry.MODELS.clear()
  registry.MODELS.update(models_before)
  registry.PRESETS.clear()
  registry.PRESETS.update(presets_before)


def _required_arguments(cls, preset):
  """Small values for the arguments that neither the class nor the preset gives a default."""
  small = {
    "num_classes": 3,
    "vocab_size": 11,
    "block_size": 8,
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": 8,
    "embed_dim": 8,
    "mlp_dim": 16,
    "features": 8,
  }
  return {
    f.name: small[f.name]
    for f in dataclasses.fields(cls)
    if f.name in registry.model_fields(cls)
    and f.name not in preset
    and f.default is dataclasses.MISSING
    and f.default_factory is dataclasses.MISSING
  }


@pytest.mark.parametrize("name", sorted(registry.MODELS) + sorted(registry.PRESETS))
def test_every_registered_name_resolves_and_builds(name):
  cls, preset = registry.resolve(name)
  model = models.build_model({"name": name, **_required_arguments(cls, preset)})
  assert type(model) is cls
  for key, value in registry.convert_dtype_args(preset).items():
    assert getattr(model, key) == value, (name, key)


def test_builtin_models_register_where_they_are_defined():
  # One place to look for a model's name: the file of its class, not a list elsewhere.
  assert {
    "mnist_cnn",
    "vgg",
    "rows_rnn",
    "rnn_lm",
    "rnn_classifier",
    "gpt",
    "bert_classifier",
    "transformer",
    "resnet",
    "cifar_resnet",
    "densenet",
    "vit",
  } <= set(registry.MODELS)
  for name, cls in registry.MODELS.items():
    assert cls.__module__.startswith("jaxdl.nn."), name
    source = inspect.getsource(sys.modules[cls.__module__])
    assert f'@registry.register("{name}"' in source, f"{name} is not registered in {cls.__module__}"


def test_registering_a_different_class_under_a_taken_name_is_an_error(clean_registry):
  class Other(nn.Module):
    num_classes: int = 2

  with pytest.raises(ValueError, match="'mnist_cnn' is already registered to .*MnistCNN"):
    registry.register("mnist_cnn", Other)
  with pytest.raises(ValueError, match="'resnet18' is already a standard configuration"):
    registry.register("resnet18", Other)
  with pytest.raises(ValueError, match="already a preset of 'resnet'"):
    registry.register("other", Other, presets={"resnet18": {}})
  with pytest.raises(ValueError, match=r"sets \['depth'\], which .*Other does not take"):
    registry.register("other", Other, presets={"other_deep": {"depth": 3}})
  with pytest.raises(ValueError, match="not a flax.linen.Module subclass"):
    registry.register("other", lambda: Other())
  assert "other" not in registry.MODELS and "other_deep" not in registry.PRESETS
  # The same class again (its module imported twice) is fine, and so is a new name.
  mnist_cnn = registry.MODELS["mnist_cnn"]
  assert registry.register("mnist_cnn", mnist_cnn) is mnist_cnn
  assert registry.register("other")(Other) is Other and registry.resolve("other") == (Other, {})


def test_a_model_in_a_users_file_registers_itself_and_trains_by_name(
  tmp_path, monkeypatch, clean_registry
):
  (tmp_path / "user_registered.py").write_text(REGISTERED_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "user_registered", raising=False)
  import user_registered  # pylint: disable=g-import-not-at-top  # As an experiment file would.

  assert registry.resolve("user_tiny_net_wide") == (user_registered.UserTinyNet, {"width": 32})
  with pytest.raises(ConfigError, match="Did you mean user_tiny_net"):
    models.build_model({"name": "user_tiny_nett"})
  result = trainer.train(
    _config("model.name=user_tiny_net_wide", "train.num_steps=5", "train.eval_every_steps=5"),
    tmp_path / "run",
    show_progress=False,
  )
  assert result.step == 5
  assert np.isfinite(_metrics(tmp_path / "run")["train/loss"])
