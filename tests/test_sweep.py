"""Sweeps (jaxdl.sweep): members, aggregation, the stacked iterator, and vmapped training runs
against the separate runs they stand for."""

import json

import jax
import numpy as np
import pytest

from jaxdl import config as config_lib
from jaxdl import metrics as metrics_lib
from jaxdl import sweep, trainer
from jaxdl.checkpoint import Checkpointer
from jaxdl.errors import ConfigError
from tests.conftest import REPO

EXPERIMENT = REPO / "experiments" / "mnist_cnn.py"
SMALL = [
  "train.batch_size=32",
  "train.log_every_steps=4",
  "train.eval_every_steps=8",
  "train.checkpoint_every_steps=4",
  "data.eval_batch_size=500",
  "train.num_steps=8",
]
# vmap batches each member's matmuls and convolutions into one op, which XLA:CPU rounds
# differently from the single run's (one step: parameters within ~1e-8). Over 8 steps of Adam
# the difference stays far below this.
RTOL = 2e-4


def _config(*overrides):
  config = config_lib.load_experiment(EXPERIMENT)
  config_lib.apply_overrides(config, [*SMALL, *overrides])
  return config


def _last_metrics(workdir):
  merged = {}
  for record in metrics_lib.read_metrics(workdir):
    merged.update({k: v for k, v in record.items() if not k.startswith("perf/")})
  return merged


def test_members_are_the_product_of_seeds_and_values():
  config = config_lib.base_config()
  config.seed = 7
  config_lib.apply_overrides(config, ["sweep.seeds=2", "sweep.optimizer.learning_rate=[0.1,0.01]"])
  members = sweep.members(config)
  assert [(m.seed, m.values) for m in members] == [
    (7, {"optimizer.learning_rate": 0.1}),
    (7, {"optimizer.learning_rate": 0.01}),
    (8, {"optimizer.learning_rate": 0.1}),
    (8, {"optimizer.learning_rate": 0.01}),
  ]
  assert members[1].label == "seed=7 optimizer.learning_rate=0.01"
  np.testing.assert_array_equal(
    sweep.member_hparams(members)["optimizer.learning_rate"], np.float32([0.1, 0.01, 0.1, 0.01])
  )
  # No sweep, or one seed: a plain run without a member axis.
  assert sweep.members(config_lib.base_config()) is None
  config_lib.apply_overrides(config := config_lib.base_config(), ["sweep.seeds=1"])
  assert sweep.members(config) is None


@pytest.mark.parametrize(
  "override, message",
  [
    ("sweep.train.batch_size=[32,64]", "cannot be swept in one program"),
    ("sweep.model.dropout=[0.1]", "is not a config key"),
    ("sweep.optimizer.learning_rat=[0.1]", "is not a config key"),
  ],
)
def test_unsweepable_keys_are_refused_when_overridden(override, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.apply_overrides(config_lib.base_config(), [override])


def test_bad_sweep_values_are_refused():
  config = config_lib.base_config()
  config_lib.apply_overrides(config, ["sweep.optimizer.learning_rate=[]"])
  with pytest.raises(ConfigError, match="non-empty list of numbers"):
    sweep.members(config)
  config = config_lib.base_config()
  config.sweep.seeds = -2
  with pytest.raises(ConfigError, match="sweep.seeds"):
    sweep.members(config)


def test_aggregate_gives_mean_std_and_every_member():
  out = sweep.aggregate([{"eval/loss": 1.0}, {"eval/loss": 3.0}])
  assert out == {
    "eval/loss": 2.0,
    "eval/loss/std": 1.0,
    "member0/eval/loss": 1.0,
    "member1/eval/loss": 3.0,
  }


class _Counter:
  """A resumable iterator of {"x": [seed, n]}."""

  def __init__(self, seed):
    self.seed, self.n = seed, 0

  def __next__(self):
    self.n += 1
    return {"x": np.array([self.seed, self.n])}

  def get_state(self):
    return {"n": self.n}

  def set_state(self, state):
    self.n = state["n"]


def test_stacked_iterator_shares_an_iterator_per_seed_and_resumes():
  made = []
  stacked = sweep.StackedIterator(lambda s: made.append(s) or _Counter(s), [3, 5, 3])
  assert made == [3, 5]  # One iterator per distinct seed.
  np.testing.assert_array_equal(next(stacked)["x"], [[3, 1], [5, 1], [3, 1]])
  state = stacked.get_state()
  assert json.loads(state) == [{"n": 1}, {"n": 1}]
  next(stacked)
  stacked.set_state(state)
  np.testing.assert_array_equal(next(stacked)["x"], [[3, 2], [5, 2], [3, 2]])
  with pytest.raises(ConfigError, match="the sweep it was written with"):
    stacked.set_state(json.dumps([{"n": 1}]).encode())


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep")
  single = {
    seed: trainer.train(_config(f"seed={seed}"), root / f"seed{seed}", show_progress=False)
    for seed in (0, 1)
  }
  result = trainer.train(_config("sweep.seeds=2"), root / "sweep", show_progress=False)
  return root, single, result


def test_each_seed_member_follows_its_separate_run(seed_runs):
  root, single, result = seed_runs
  swept = _last_metrics(root / "sweep")
  for i, seed in enumerate((0, 1)):
    alone = _last_metrics(root / f"seed{seed}")
    for key in ("train/loss", "train/param_norm", "eval/loss"):
      np.testing.assert_allclose(swept[f"member{i}/{key}"], alone[key], rtol=RTOL, err_msg=key)
  for key in ("train/loss", "eval/loss"):
    values = [swept[f"member{i}/{key}"] for i in range(2)]
    assert swept[key] == pytest.approx(np.mean(values))
    assert swept[f"{key}/std"] == pytest.approx(np.std(values))
  assert swept["member0/eval/loss"] != swept["member1/eval/loss"]  # Different seeds differ.
  assert result.summary.startswith("mean of 2 sweep members: test accuracy")
  assert "member 1 (seed=1)" in result.summary


def _records(workdir):
  return [
    {k: v for k, v in record.items() if not k.startswith("perf/")}
    for record in metrics_lib.read_metrics(workdir)
  ]


def test_a_sweep_reproduces_itself_to_the_bit(seed_runs, tmp_path):
  """The same sweep run again logs the same metrics and saves the same checkpoints, to the bit: what
  a sweep promises (its members follow their separate runs up to rounding that Adam may amplify,
  tests/test_sweep_members.py)."""
  root, _, _ = seed_runs
  trainer.train(_config("sweep.seeds=2"), tmp_path / "again", show_progress=False)
  assert _records(tmp_path / "again") == _records(root / "sweep")
  first, again = (
    Checkpointer(w / "checkpoints", read_only=True) for w in (root / "sweep", tmp_path / "again")
  )
  try:
    assert first.all_steps() == again.all_steps() == [4, 8]
    for step in first.all_steps():
      saved, resaved = first.restore_as_saved(step), again.restore_as_saved(step)
      assert jax.tree.structure(saved) == jax.tree.structure(resaved)
      for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(resaved)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=f"step {step}")
  finally:
    first.close()
    again.close()


@pytest.mark.slow  # Two more sweeps; CI runs it.
def test_sweep_checkpoint_holds_every_member_and_resumes_exactly(seed_runs, tmp_path):
  root, _, _ = seed_runs
  checkpointer = Checkpointer(root / "sweep" / "checkpoints", read_only=True)
  saved = checkpointer.restore_as_saved(8)
  checkpointer.close()
  kernel = saved["state"]["params"]["conv1"]["kernel"]
  assert kernel.shape[0] == 2 and not np.array_equal(kernel[0], kernel[1])
  # Half the run, then the rest from its checkpoint: the same metrics, to the bit.
  trainer.train(_config("sweep.seeds=2", "train.num_steps=4"), tmp_path / "r", show_progress=False)
  trainer.train(_config("sweep.seeds=2"), tmp_path / "r", show_progress=False)
  assert _last_metrics(tmp_path / "r") == _last_metrics(root / "sweep")
  step, metrics, summary = trainer.evaluate_workdir(tmp_path / "r")
  assert (
    step == 8 and metrics["member1/eval/loss"] == _last_metrics(root / "sweep")["member1/eval/loss"]
  )


@pytest.mark.slow  # A sweep and a run; CI runs it.
def test_learning_rate_sweep_gives_each_member_its_value(tmp_path):
  result = trainer.train(
    _config("sweep.optimizer.learning_rate=[1e-3,1e-4]"), tmp_path / "lr", show_progress=False
  )
  swept = _last_metrics(tmp_path / "lr")
  assert swept["member0/train/learning_rate"] == pytest.approx(1e-3)
  assert swept["member1/train/learning_rate"] == pytest.approx(1e-4)
  alone = trainer.train(
    _config("optimizer.learning_rate=1e-4"), tmp_path / "alone", show_progress=False
  )
  del result, alone
  alone_metrics = _last_metrics(tmp_path / "alone")
  np.testing.assert_allclose(swept["member1/train/loss"], alone_metrics["train/loss"], rtol=RTOL)
  np.testing.assert_allclose(swept["member1/eval/loss"], alone_metrics["eval/loss"], rtol=RTOL)
  assert swept["member0/train/loss"] < swept["member1/train/loss"]  # 10x the rate: faster.


@pytest.mark.slow  # A sweep; CI runs it.
def test_mapped_sweep_members_follow_their_separate_runs(seed_runs, tmp_path):
  """sweep.method=map runs the members one after another in one compiled loop (here through the
  trainer's calls of several steps). It is not bit-identical to the separate runs: where XLA:CPU
  emits fused multiply-adds, the loop body fuses some elementwise ops otherwise and the last bits
  differ from step 2 (tests/test_sweep_members.py measures the drift under each instruction set)."""
  root, _, _ = seed_runs
  trainer.train(_config("sweep.seeds=2", "sweep.method=map"), tmp_path / "map", show_progress=False)
  swept = _last_metrics(tmp_path / "map")
  for i, seed in enumerate((0, 1)):
    alone = _last_metrics(root / f"seed{seed}")
    for key in ("train/loss", "train/param_norm", "eval/loss"):
      np.testing.assert_allclose(swept[f"member{i}/{key}"], alone[key], rtol=RTOL, err_msg=key)


def test_unknown_sweep_method_is_refused():
  with pytest.raises(ConfigError, match="sweep.method='pmap' must be one of vmap, map"):
    sweep.over_members("pmap")


TINY_GPT = [
  "model.num_layers=1",
  "model.num_heads=2",
  "model.embed_dim=32",
  "model.block_size=32",
  "data.block_size=32",
  "train.batch_size=8",
  "data.eval_batch_size=64",
  "train.log_every_steps=4",
  "train.eval_every_steps=1000",
  "train.num_steps=8",
  "optimizer.warmup_steps=2",
  "optimizer.decay_steps=8",
]


@pytest.mark.slow  # Three small GPT runs; CI runs it.
def test_dropout_rate_sweep_gives_each_member_its_rate(tmp_path):
  """Each member's model is built with its (traced) dropout rate: member i follows the separate
  run with model.dropout_rate set to its value."""

  def run(name, *extra):
    config = config_lib.load_experiment(f"{REPO / 'experiments' / 'shakespeare_char_gpt.py'}:cpu")
    config_lib.apply_overrides(config, [*TINY_GPT, *extra])
    trainer.train(config, tmp_path / name, show_progress=False)
    return _last_metrics(tmp_path / name)

  swept = run("sweep", "sweep.model.dropout_rate=[0.0,0.3]")
  for i, rate in enumerate((0.0, 0.3)):
    alone = run(f"rate{i}", f"model.dropout_rate={rate}")
    for key in ("train/loss", "eval/loss"):
      np.testing.assert_allclose(swept[f"member{i}/{key}"], alone[key], rtol=RTOL, err_msg=key)
  assert swept["member0/train/loss"] != swept["member1/train/loss"]


def test_sweep_members_start_from_init_checkpoint_with_their_own_head(seed_runs, tmp_path):
  """init.checkpoint in a sweep copies the source's layers into every member; a layer left out of
  the mapping keeps each member's own initialisation (different seeds: different)."""
  root, _, _ = seed_runs
  config = _config(
    "sweep.seeds=2",
    f"init.checkpoint={root / 'seed0'}",
    "init.mapping=[('conv1','conv1'),('conv2','conv2')]",
  )
  setup = trainer.build(config, trainer.load_data(config))
  loop = setup.layout.to_saved(setup.init_loop())
  source = trainer._checkpoint_source(config.init)
  started = trainer._init_from_source(loop, source, config.init, setup.runs)["state"].params
  checkpointer = Checkpointer(root / "seed0" / "checkpoints", read_only=True)
  source = checkpointer.restore_as_saved(8)["state"]["params"]
  checkpointer.close()
  for member in range(2):
    for layer in ("conv1", "conv2"):
      np.testing.assert_array_equal(started[layer]["kernel"][member], source[layer]["kernel"])
  head = np.asarray(started["logits"]["kernel"])
  assert not np.array_equal(head[0], head[1])
  assert not np.array_equal(head[0], source["logits"]["kernel"])


def test_divergence_names_the_members_that_diverged():
  from jaxdl import interval_log
  from jaxdl.errors import NonFiniteLossError

  runs = sweep.Sweep(sweep.members(_config("sweep.optimizer.learning_rate=[1e-3,10.0]")))
  sums = {"first_nonfinite_step": np.asarray([-1, 7])}
  with pytest.raises(NonFiniteLossError, match=r"step 7 in sweep member\(s\) 1 \(seed=0 "):
    interval_log.raise_if_nonfinite(sums, runs)
  with pytest.raises(NonFiniteLossError, match=r"step 3: the loss"):
    interval_log.raise_if_nonfinite({"first_nonfinite_step": np.asarray(3)}, sweep.SingleRun(0))


def test_single_run_and_sweep_metrics_and_words():
  one = sweep.SingleRun(0)
  summary = lambda m: f"loss {m['loss']:.2f}"
  assert one.metrics({"loss": 1.0}, dict) == {"loss": 1.0}
  assert one.describe({"loss": 1.0}, summary) == "loss 1.00"
  two = sweep.runs(_config("sweep.seeds=2"))
  sums = {"loss": np.asarray([1.0, 3.0])}
  metrics = two.metrics(sums, lambda s: {"loss": float(s["loss"])})
  assert metrics == {"loss": 2.0, "loss/std": 1.0, "member0/loss": 1.0, "member1/loss": 3.0}
  assert two.describe(metrics, summary).splitlines() == [
    "mean of 2 sweep members: loss 2.00",
    "  member 0 (seed=0): loss 1.00",
    "  member 1 (seed=1): loss 3.00",
  ]
