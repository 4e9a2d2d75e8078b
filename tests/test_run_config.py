"""Recipe and runtime apart (jaxdl.config): which keys may change on resume follows from where a
key is defined; keys under their old names are read with a note; workdirs written before the
`runtime` section resume; the run plan (jaxdl.train.run_plan) settles every `auto` once."""

import json
import logging

import pytest

from jaxdl import config as config_lib
from jaxdl import data as data_lib
from jaxdl import metrics as metrics_lib
from jaxdl import trainer
from jaxdl.errors import CheckpointError, ConfigError
from tests.conftest import REPO

SMALL = [
  "train.batch_size=32",
  "train.num_steps=4",
  "train.log_every_steps=2",
  "train.eval_every_steps=4",
  "data.eval_batch_size=500",
]


def _seed_cnn(*overrides):
  config = config_lib.load_experiment(REPO / "experiments" / "mnist_cnn.py")
  config_lib.apply_overrides(config, [*SMALL, *overrides])
  return config


def test_resumable_keys_are_those_the_run_part_defines():
  recipe = config_lib.flatten(config_lib.recipe_config())
  run = config_lib.flatten(config_lib.run_config())
  assert not set(recipe) & set(run)  # Every key is defined once, in one part.
  assert set(recipe) | set(run) == set(config_lib.flatten(config_lib.base_config()))
  assert config_lib.RESUMABLE_KEYS == frozenset(run)
  assert not any(config_lib.resumable(k) for k in recipe)
  for key in ("runtime.steps_per_call", "parallel.mesh.fsdp", "train.num_steps", "data.dir"):
    assert config_lib.resumable(key)
  # A key a later jaxdl adds to a runtime section is resumable without being listed anywhere.
  assert config_lib.resumable("runtime.some_new_option")
  # The machine's options live in the runtime sections, none in the recipe's.
  machine = ("steps_per_call", "data_threads", "data_prefetch", "compilation_cache", "kernels")
  assert all(f"runtime.{k}" in run for k in machine)


def test_runtime_changes_resume_and_recipe_changes_do_not():
  saved = config_lib.base_config()
  new = config_lib.base_config()
  config_lib.apply_overrides(
    new, ["runtime.steps_per_call=4", "runtime.kernels=im2col", "parallel.cpu_devices=auto"]
  )
  assert config_lib.resume_conflicts(saved, new) == []
  config_lib.apply_overrides(new, ["train.batch_size=128", "train.ema_decay=0.9"])
  assert [k for k, _, _ in config_lib.resume_conflicts(saved, new)] == [
    "train.batch_size",
    "train.ema_decay",
  ]


@pytest.mark.parametrize("old, new", sorted(config_lib.RENAMED_KEYS.items()))
def test_an_old_key_on_the_command_line_is_read_under_its_new_name(old, new, caplog):
  config = config_lib.load_experiment(REPO / "experiments" / "mnist_cnn.py")
  value = {"runtime.kernels": "im2col", "runtime.async_checkpointing": "false"}.get(new, "3")
  with caplog.at_level(logging.WARNING, logger="jaxdl"):
    config_lib.apply_overrides(config, [f"{old}={value}"])
  flat = config_lib.flatten(config)
  assert old not in flat
  assert str(flat[new]).lower() == value
  notes = [r.getMessage() for r in caplog.records]
  assert len(notes) == 1 and old in notes[0] and new in notes[0]


def test_an_experiment_file_with_old_keys_loads_under_the_new_names(tmp_path, caplog):
  experiment = tmp_path / "old_exp.py"
  experiment.write_text(
    "from jaxdl.config import base_config\n"
    "def get_config():\n"
    "  c = base_config()\n"
    "  c.train.steps_per_call = 4\n"
    "  c.data.num_threads = 5\n"
    "  c.model.conv_impl = 'xla'\n"
    "  return c\n"
  )
  with caplog.at_level(logging.WARNING, logger="jaxdl"):
    config = config_lib.load_experiment(experiment)
  assert config.runtime.steps_per_call == 4 and config.runtime.data_threads == 5
  assert config.runtime.kernels == "xla"
  assert "steps_per_call" not in config.train and "conv_impl" not in config.model
  assert len(caplog.records) == 3


def test_a_model_without_the_kernels_switch_refuses_a_kernel_set():
  config = config_lib.load_experiment(REPO / "experiments" / "shakespeare_char_gpt.py:cpu")
  config_lib.apply_overrides(config, ["runtime.kernels=im2col", "train.num_steps=1"])
  with pytest.raises(ConfigError, match=r"runtime.kernels='im2col': model 'gpt' has no `kernels`"):
    trainer.build(config, trainer.load_data(config))


def _as_older_jaxdl_wrote_it(config_json: dict) -> dict:
  """A config.json of today in the layout jaxdl wrote before the `runtime` section."""
  old = json.loads(json.dumps(config_json))
  runtime = old.pop("runtime")
  for new_name, old_name in {v: k for k, v in config_lib.RENAMED_KEYS.items()}.items():
    section, _, leaf = old_name.partition(".")
    old[section][leaf] = runtime[new_name.partition(".")[2]]
  return old


def test_a_workdir_from_before_the_runtime_section_resumes_and_evaluates(tmp_path):
  trainer.train(_seed_cnn("runtime.steps_per_call=2"), tmp_path, show_progress=False)
  path = tmp_path / "config.json"
  path.write_text(json.dumps(_as_older_jaxdl_wrote_it(json.loads(path.read_text()))))
  assert "steps_per_call" in json.loads(path.read_text())["train"]
  step, metrics, _ = trainer.evaluate_workdir(tmp_path)
  assert step == 4 and 0 <= metrics["eval/accuracy"] <= 1
  # The command that started it, and today's names, both continue it.
  result = trainer.train(
    _seed_cnn("train.steps_per_call=2", "train.num_steps=6"), tmp_path, show_progress=False
  )
  assert result.step == 6
  assert trainer.train(_seed_cnn("train.num_steps=8"), tmp_path, show_progress=False).step == 8
  steps = [r["step"] for r in metrics_lib.read_metrics(tmp_path) if "train/loss" in r]
  assert steps == [2, 4, 6, 8]
  # And a recipe change is still refused, naming the key.
  with pytest.raises(CheckpointError, match="train.batch_size: saved 32, now 64"):
    trainer.train(_seed_cnn("train.batch_size=64", "train.num_steps=10"), tmp_path)


def test_the_plan_settles_every_auto_and_is_recorded(tmp_path):
  trainer.train(_seed_cnn("train.grad_accum_steps=2"), tmp_path, show_progress=False)
  plan = json.loads((tmp_path / "metadata.json").read_text())["runs"][-1]["plan"]
  # On one CPU device: Winograd layers (no XLA convolution, so calls of 16 steps), the
  # micro-batch loop unrolled.
  assert plan["kernels"] == "winograd" and plan["steps_per_call"] == 16
  assert plan["grad_accum_unroll"] is True and plan["grad_accum_steps"] == 2
  assert plan["batch_size"] == 32 and plan["total_steps"] == 4 and plan["num_devices"] == 1
  assert "auto" not in json.dumps(plan)


@pytest.mark.parametrize(
  "override, message",
  [
    ("train.grad_accum_steps=3", r"train.grad_accum_steps=3 must be a whole number >= 1 that"),
    ("train.ema_decay=1.5", r"train.ema_decay=1.5 must be in \[0, 1\)"),
    ("runtime.steps_per_call=-1", r"runtime.steps_per_call=-1 must be a whole number"),
    ("runtime.grad_accum_unroll=maybe", r"runtime.grad_accum_unroll='maybe' must be auto"),
    ("runtime.kernels=fast", r"runtime.kernels='fast': Unknown kernels"),
  ],
)
def test_the_plan_refuses_settings_that_cannot_work(override, message):
  config = _seed_cnn(override)
  with pytest.raises(ConfigError, match=message):
    trainer.build(config, trainer.load_data(config))


def test_a_key_the_saved_config_predates_resumes_at_its_default(caplog):
  """An older jaxdl wrote no train.label_smoothing or train.ema_decay: resuming with their
  defaults (what that jaxdl did) is accepted with a note; another value is still refused."""
  saved = config_lib.base_config().to_dict()
  del saved["train"]["label_smoothing"], saved["train"]["ema_decay"]
  saved = config_lib.from_json(json.dumps(saved))
  new = config_lib.base_config()
  with caplog.at_level(logging.WARNING, logger="jaxdl"):
    assert config_lib.resume_conflicts(saved, new) == []
  assert "train.ema_decay: the workdir's config predates this key" in caplog.text
  config_lib.apply_overrides(new, ["train.label_smoothing=0.1"])
  assert config_lib.resume_conflicts(saved, new) == [("train.label_smoothing", "<absent>", 0.1)]


def test_a_config_json_of_this_release_still_resumes():
  """tests/data/config_v2.json is config.json as this release writes it for the seed CNN (the
  `runtime` section's first release): the same command must resume it in every later release."""
  saved = config_lib.from_json((REPO / "tests" / "data" / "config_v2.json").read_text())
  assert config_lib.resume_conflicts(saved, _seed_cnn()) == []


def test_a_dataset_option_the_saved_config_predates_resumes_at_its_default(caplog):
  """Text data gained `objective` and `mask_rate` (masked LM): a text workdir saved before them
  resumes with their defaults; another value is refused."""
  new = config_lib.base_config()
  config_lib.apply_overrides(new, ["data.name=text"])
  data_lib.complete_config(new.data)  # What the trainer saves: every option of the dataset.
  saved = new.to_dict()
  del saved["data"]["objective"], saved["data"]["mask_rate"]
  saved = config_lib.from_json(json.dumps(saved))
  with caplog.at_level(logging.WARNING, logger="jaxdl"):
    assert config_lib.resume_conflicts(saved, new) == []
  assert "data.objective: the workdir's config predates this key" in caplog.text
  new.data.objective = "masked_lm"
  assert config_lib.resume_conflicts(saved, new) == [("data.objective", "<absent>", "masked_lm")]


def test_nested_tuples_compare_as_the_lists_json_saves():
  """init.mapping=[('encoder','encoder')] comes back from config.json as [['encoder', ...]]."""
  new = config_lib.base_config()
  config_lib.apply_overrides(new, ["init.mapping=[('encoder','encoder')]"])
  saved = config_lib.from_json(json.dumps(new.to_dict()))
  assert saved.init.mapping == [["encoder", "encoder"]]
  assert config_lib.resume_conflicts(saved, new) == []


# How tests/data/workdir_v2_gpt was trained (3 of 6 steps), by jaxdl as of commit a6d0290.
_V2_GPT = [
  "model.num_layers=1",
  "model.num_heads=2",
  "model.embed_dim=16",
  "model.block_size=16",
  "data.block_size=16",
  "train.batch_size=4",
  "data.eval_batch_size=64",
  "train.log_every_steps=1",
  "train.eval_every_steps=1000",
  "train.checkpoint_every_steps=3",
  "optimizer.warmup_steps=1",
  "optimizer.decay_steps=6",
  "train.ema_decay=0.9",
  "data.val_fraction=0.01",
]


def test_a_workdir_of_the_previous_release_resumes_to_the_bit(tmp_path):
  """tests/data/workdir_v2_gpt is a tiny char GPT with a moving average, checkpointed at step 3
  by the release before the train state gained LoRA's adapters (and text data its masked-LM
  options). This release resumes it to step 6 and logs what it logs training straight to 6."""
  import shutil

  def config():
    c = config_lib.load_experiment(REPO / "experiments" / "shakespeare_char_gpt.py:cpu")
    config_lib.apply_overrides(c, [*_V2_GPT, "train.num_steps=6"])
    return c

  old = tmp_path / "old"
  shutil.copytree(REPO / "tests" / "data" / "workdir_v2_gpt", old)
  trainer.train(config(), old, show_progress=False)
  trainer.train(config(), tmp_path / "new", show_progress=False)
  train_records = lambda workdir: [
    {k: v for k, v in r.items() if not k.startswith("perf/")}
    for r in metrics_lib.read_metrics(workdir)
    if "train/loss" in r
  ]
  assert [r["step"] for r in train_records(old)] == list(range(1, 7))
  assert train_records(old) == train_records(tmp_path / "new")
