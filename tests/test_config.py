"""Experiment loading, overrides parsed to the right type, and the errors for bad ones."""

import pytest

from jaxdl import config as config_lib
from jaxdl.errors import ConfigError, UserError
from tests.conftest import REPO


@pytest.fixture
def config():
  return config_lib.base_config()


def test_experiment_file_loads_with_required_keys():
  config = config_lib.load_experiment(REPO / "experiments" / "mnist_cnn.py")
  flat = config_lib.flatten(config)
  for key in config_lib.REQUIRED_KEYS:
    assert key in flat
  assert config.train.batch_size == 64 and config.optimizer.name == "adam"


@pytest.mark.parametrize(
  "override, key, expected",
  [
    ("train.batch_size=128", "train.batch_size", 128),
    ("train.num_steps=1e3", "train.num_steps", 1000),
    ("train.num_steps=2_000", "train.num_steps", 2000),
    ("optimizer.learning_rate=3e-4", "optimizer.learning_rate", 3e-4),
    ("optimizer.learning_rate=1", "optimizer.learning_rate", 1.0),
    ("optimizer.nesterov=true", "optimizer.nesterov", True),
    ("data.download=0", "data.download", False),
    ("data.dir=../shared/data/mnist", "data.dir", "../shared/data/mnist"),
    ("data.dir=", "data.dir", ""),
    ("seed=-3", "seed", -3),
  ],
)
def test_override_parses_to_existing_type(config, override, key, expected):
  config_lib.apply_overrides(config, [override])
  value = config_lib.flatten(config)[key]
  assert value == expected and type(value) is type(expected)


def test_unknown_key_names_nearest_keys(config):
  with pytest.raises(ConfigError, match=r"Unknown config key 'train.batchsize'.*train\.batch_size"):
    config_lib.apply_overrides(config, ["train.batchsize=3"])
  with pytest.raises(ConfigError, match=r"optimizer\.learning_rate"):
    config_lib.apply_overrides(config, ["learning_rate=3"])


@pytest.mark.parametrize(
  "override, message",
  [
    ("train.batch_size=big", "not a valid int"),
    ("train.batch_size=1.5", "Give a whole number"),
    ("optimizer.learning_rate=fast", "not a valid float"),
    ("data.download=maybe", "Use true or false"),
    ("train.batch_size", "key.path=value"),
  ],
)
def test_bad_value_is_an_error(config, override, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.apply_overrides(config, [override])


def test_tuple_and_none_values():
  config = config_lib.base_config()
  config.model.hidden = (1, 2)
  config.model.extra = None
  config_lib.apply_overrides(config, ["model.hidden=(3, 4, 5)", "model.extra=[1, 2]"])
  assert config.model.hidden == (3, 4, 5) and config.model.extra == [1, 2]
  with pytest.raises(ConfigError, match="Python literal"):
    config_lib.apply_overrides(config, ["model.hidden=7"])


def test_json_round_trip(config):
  assert config_lib.from_json(config_lib.to_json(config)).to_dict() == config.to_dict()


def test_resume_conflicts_allow_length_changes_only(config):
  new = config_lib.base_config()
  config_lib.apply_overrides(new, ["train.num_steps=500", "data.dir=/elsewhere"])
  assert config_lib.resume_conflicts(config, new) == []
  config_lib.apply_overrides(new, ["model.name=vgg"])
  config_lib.apply_overrides(new, ["optimizer.learning_rate=0.5"])
  assert [k for k, _, _ in config_lib.resume_conflicts(config, new)] == [
    "model.name",
    "optimizer.learning_rate",
  ]


def test_experiment_errors(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.load_experiment(tmp_path / "nope.py")
  (tmp_path / "no_fn.py").write_text("x = 1\n")
  with pytest.raises(ConfigError, match="no get_config"):
    config_lib.load_experiment(tmp_path / "no_fn.py")
  (tmp_path / "wrong.py").write_text("def get_config():\n  return {'seed': 0}\n")
  with pytest.raises(ConfigError, match="ConfigDict"):
    config_lib.load_experiment(tmp_path / "wrong.py")
  (tmp_path / "partial.py").write_text(
    "import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({'seed': 0})\n"
  )
  with pytest.raises(ConfigError, match="train.batch_size"):
    config_lib.load_experiment(tmp_path / "partial.py")
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  with pytest.raises(ConfigError, match="SyntaxError"):
    config_lib.load_experiment(tmp_path / "broken.py")


@pytest.mark.parametrize("experiment", sorted(p.name for p in (REPO / "experiments").glob("*.py")))
def test_every_experiment_builds_its_model(experiment):
  """Each experiment names a model (registered, or by import path) whose arguments exist, and its
  data options are complete (config.json records every value a run used)."""
  import flax.linen as nn

  from jaxdl import data as data_lib
  from jaxdl import models

  config = config_lib.load_experiment(REPO / "experiments" / experiment)
  target, preset, _ = models.resolve_model(config.model)
  if config.data.get("tokenizer") == "pretrained":
    # Fine-tuning: the architecture and tokenizer come from init.pretrained's folder, which the
    # user gives; tests/test_pretrained_experiments.py runs these on checkpoints it writes.
    assert config.init.pretrained == ""
    return
  accepted, _ = models.callable_arguments(target)
  hints = {
    hint: 16
    for hint in ("vocab_size", "num_classes")
    if hint in accepted and not config.model.get(hint) and not preset.get(hint)
  }
  model = models.build_model(config.model, hints)
  assert isinstance(model, nn.Module)
  assert set(data_lib.DATASETS[config.data.name].options) <= set(config.data.keys())


def test_experiment_variants(tmp_path):
  gpt = REPO / "experiments" / "shakespeare_char_gpt.py"
  full, cpu = config_lib.load_experiment(gpt), config_lib.load_experiment(f"{gpt}:cpu")
  assert full.model.embed_dim == 384 and cpu.model.embed_dim == 128
  assert cpu.data.block_size == cpu.model.block_size == 64
  with pytest.raises(ConfigError, match="unknown variant 'gpu'"):
    config_lib.load_experiment(f"{gpt}:gpu")
  with pytest.raises(ConfigError, match="takes no variant"):
    config_lib.load_experiment(f"{REPO / 'experiments' / 'mnist_cnn.py'}:cpu")


def test_any_model_argument_can_be_overridden():
  """Arguments the experiment leaves at their default are still keys: model.dtype, for one."""
  config = config_lib.load_experiment(REPO / "experiments" / "fashion_mnist_resnet.py")
  config_lib.apply_overrides(config, ["model.dtype=bfloat16", "model.zero_init_residual=true"])
  assert config.model.dtype == "bfloat16" and config.model.zero_init_residual is True
  with pytest.raises(ConfigError, match="Did you mean model.dtype"):
    config_lib.apply_overrides(config, ["model.dtyp=float32"])


@pytest.mark.parametrize("order", ["name_first", "name_last"])
def test_data_name_override_swaps_in_that_datasets_options(order):
  """`data.name=parquet` on a CIFAR experiment: an option both datasets take keeps a value the
  experiment chose, CIFAR's defaults and own options go, parquet's join at their defaults; and
  parquet's options may be set on the same command line, before or after data.name."""
  from jaxdl import data as data_lib

  config = config_lib.load_experiment(str(REPO / "experiments" / "cifar10_resnet20.py"))
  assert config.data.augment == "crop_flip" and config.data.normalize  # CIFAR's defaults.
  config.data.crop_padding = 2  # Chosen by the experiment.
  cifar_only = set(data_lib.dataset_options("cifar10")) - set(data_lib.dataset_options("parquet"))
  overrides = ["data.name=parquet", "data.train_files=train-*.parquet", "data.image_size=24"]
  config_lib.apply_overrides(config, overrides if order == "name_first" else overrides[::-1])
  assert config.data.name == "parquet"
  assert config.data.train_files == "train-*.parquet" and config.data.image_size == 24
  assert config.data.crop_padding == 2
  assert not cifar_only & set(config.data.keys())
  for key, default in data_lib.dataset_options("parquet").items():
    if key not in ("train_files", "image_size", "crop_padding"):
      assert config.data[key] == default, key
  with pytest.raises(UserError, match="Unknown dataset 'parqet'. Did you mean parquet"):
    config_lib.apply_overrides(config, ["data.name=parqet"])
