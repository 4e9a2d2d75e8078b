"""The training loop with vision features: BatchNorm statistics (updated, frozen in evaluation,
saved and resumed to the bit), bfloat16 compute, label smoothing, a moving average of the weights,
and the CIFAR recipes for a few steps on generated files in CIFAR's binary layout.

The slow ones (marked) compile convolutional networks several times; `.ci/run` runs them.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdl import config as config_lib
from jaxdl import metrics as metrics_lib
from jaxdl import models, trainer
from jaxdl import workdir as workdir_lib
from jaxdl.checkpoint import Checkpointer
from jaxdl.data import cifar
from jaxdl.train import step as step_lib
from jaxdl.train import tasks
from tests.conftest import REPO

EXPERIMENTS = REPO / "experiments"
# A quarter-width ResNet-20 of experiments/fashion_mnist_resnet.py, trained on the shipped MNIST
# subset (Fashion-MNIST may be absent): BatchNorm everywhere, seconds a run.
SMALL_RESNET = [
  "model.width=4",
  "train.batch_size=32",
  "train.log_every_steps=5",
  "train.eval_every_steps=1000",
  "train.checkpoint_every_steps=10",
  "optimizer.warmup_steps=2",
  "optimizer.decay_steps=20",
  "data.eval_batch_size=500",
]


def _config(experiment, *overrides):
  config = config_lib.load_experiment(EXPERIMENTS / experiment)
  config_lib.apply_overrides(config, list(overrides))
  return config


def _resnet_config(*overrides):
  config = config_lib.load_experiment(EXPERIMENTS / "fashion_mnist_resnet.py")
  config.data = config_lib.base_config().data  # MNIST, the shipped subset.
  config_lib.apply_overrides(config, [*SMALL_RESNET, *overrides])
  return config


def _train_metrics(workdir):
  return {
    r["step"]: {k: v for k, v in r.items() if not k.startswith("perf/")}
    for r in metrics_lib.read_metrics(workdir)
    if "train/loss" in r
  }


def _saved_state(workdir, step):
  checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
  try:
    return checkpointer.restore_as_saved(step)["state"]
  finally:
    checkpointer.close()


def _evaluate_by_hand(workdir, model_state, *params):
  """[(accuracy, mean loss)], one for each tree of `params`, of the model of `workdir` in
  evaluation mode (BatchNorm's running statistics `model_state`) on its whole evaluation split:
  model.apply, argmax and the cross-entropy, apart from the trainer's evaluation."""
  config = workdir_lib.load_config(workdir)
  data = trainer.load_data(config)
  model = models.build_model(config.model, data.model_hints)
  (batch,) = data.eval_batches(batch_size=data.source["num_test"])
  assert batch["mask"].all()

  @jax.jit
  def accuracy_and_loss(params, model_state, image_BHWC, label_B):
    logits_BK = model.apply({"params": params, **model_state}, image_BHWC, train=False)
    return jnp.mean(jnp.argmax(logits_BK, -1) == label_B), tasks.cross_entropy(logits_BK, label_B)

  results = []
  for tree in params:
    accuracy, loss_B = accuracy_and_loss(tree, model_state, batch["image"], batch["label"])
    results.append((float(accuracy), float(np.mean(np.asarray(loss_B, np.float64)))))
  return results


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("resnet") / "run"
  config = _resnet_config("train.num_steps=20")
  return workdir, trainer.train(config, workdir, show_progress=False)


def test_batch_norm_statistics_are_trained_and_saved(resnet_run):
  """Every BatchNorm layer's running mean and variance left their start (0 and 1) and moved on
  between the checkpoints at steps 10 and 20, and the final evaluation is the model run by hand in
  evaluation mode with the saved statistics (not with each batch's own statistics, nor with
  the statistics' start)."""
  workdir, result = resnet_run
  saved = {step: _saved_state(workdir, step) for step in (10, 20)}
  stats = {
    step: {
      jax.tree_util.keystr(p): np.asarray(x)
      for p, x in jax.tree_util.tree_leaves_with_path(state["model_state"]["batch_stats"])
    }
    for step, state in saved.items()
  }
  assert len(stats[20]) == 2 * 19  # A mean and a variance for each of ResNet-20's 19 BatchNorms.
  for path, x in stats[20].items():
    start = 0.0 if "mean" in path else 1.0 if "var" in path else None
    assert start is not None and np.abs(x - start).max() > 1e-3, f"{path} never trained"
    assert not np.array_equal(x, stats[10][path]), f"{path}: step 10's statistics saved at 20"
  ((accuracy, loss),) = _evaluate_by_hand(workdir, saved[20]["model_state"], saved[20]["params"])
  m = result.eval_metrics
  assert m["eval/num_examples"] == 2000
  assert m["eval/accuracy"] == pytest.approx(accuracy, abs=0.5 / 2000)  # The same count right.
  assert m["eval/loss"] == pytest.approx(loss, rel=1e-5)
  # Twenty steps teach this ResNet little (about 15% accuracy), but statistics that fit its
  # weights keep it near chance, ln(10); statistics left at (0, 1) inflate the logits and the
  # loss (about 7).
  assert m["eval/loss"] < 1.1 * np.log(10)


@pytest.mark.slow  # About a minute on 2 cores (convolution compiles); CI runs it.
def test_batch_norm_statistics_resume_bit_exactly(resnet_run, tmp_path):
  workdir, _ = resnet_run
  resumed = tmp_path / "resumed"
  trainer.train(_resnet_config("train.num_steps=10"), resumed, show_progress=False)
  trainer.train(_resnet_config("train.num_steps=20"), resumed, show_progress=False)
  assert _train_metrics(resumed) == _train_metrics(workdir)
  straight, again = _saved_state(workdir, 20), _saved_state(resumed, 20)
  jax.tree.map(np.testing.assert_array_equal, straight["model_state"], again["model_state"])
  jax.tree.map(np.testing.assert_array_equal, straight["params"], again["params"])


def test_evaluation_uses_running_statistics_and_changes_nothing(resnet_run):
  workdir, result = resnet_run
  before = _saved_state(workdir, 20)["model_state"]
  step, metrics, _ = trainer.evaluate_workdir(workdir)
  assert metrics == result.eval_metrics  # Deterministic: no batch statistics in evaluation.
  jax.tree.map(np.testing.assert_array_equal, before, _saved_state(workdir, 20)["model_state"])


@pytest.mark.slow  # About a minute on 2 cores (convolution compiles); CI runs it.
def test_bfloat16_compute_trains_with_float32_parameters(tmp_path):
  config = _resnet_config("train.num_steps=30", "model.dtype=bfloat16")
  trainer.train(config, tmp_path / "bf16", show_progress=False)
  losses = [m["train/loss"] for m in _train_metrics(tmp_path / "bf16").values()]
  assert losses[-1] < losses[0]
  params = _saved_state(tmp_path / "bf16", 30)["params"]
  assert {np.asarray(p).dtype for p in jax.tree.leaves(params)} == {np.dtype(np.float32)}


def test_label_smoothing_matches_its_formula():
  logits = jnp.array([[2.0, 0.5, -1.0]])
  a, k = 0.1, 3
  target = np.full(3, a / k)
  target[0] += 1 - a
  expected = -(target * np.asarray(jax.nn.log_softmax(logits[0]))).sum()
  assert float(tasks.cross_entropy(logits, jnp.array([0]), a)[0]) == pytest.approx(expected)
  assert float(tasks.cross_entropy(logits, jnp.array([0]), 0.0)[0]) == pytest.approx(
    float(-jax.nn.log_softmax(logits[0])[0])
  )


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    return nn.Dense(3)(x)


def test_moving_average_of_weights_and_its_evaluation():
  model, tx, task = _Linear(), optax.sgd(0.5), tasks.Classification(input_key="image")
  batch = {"image": jnp.ones((4, 2)), "label": jnp.array([0, 1, 2, 0])}
  state = step_lib.create_train_state(model, tx, jax.random.key(0), batch["image"], ema=True)
  train_step = jax.jit(
    step_lib.make_train_step(model, tx, optax.constant_schedule(0.5), task, ema_decay=0.9)
  )
  new, _ = train_step(state, batch, jax.random.key(1))
  expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state.ema_params, new.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new.ema_params, expected)
  # Evaluation reads the average, not the latest parameters.
  eval_step = step_lib.make_eval_step(model, task)
  eval_batch = {**batch, "mask": jnp.ones(4, bool)}
  with_ema = eval_step(new, eval_batch)
  as_params = eval_step(new.replace(params=new.ema_params, ema_params=None), eval_batch)
  assert float(with_ema["loss_sum"]) == float(as_params["loss_sum"])
  assert float(with_ema["loss_sum"]) != float(
    eval_step(new.replace(ema_params=None), eval_batch)["loss_sum"]
  )


@pytest.mark.slow  # About a minute on 2 cores (convolution compiles); CI runs it.
def test_ema_run_saves_and_evaluates_the_average(tmp_path):
  """Each step's saved average is decay * the previous one + (1 - decay) * that step's saved
  parameters, and the final evaluation is the model run by hand with the average, not with the
  latest parameters."""
  decay, num_steps = 0.9, 4
  config = _resnet_config(
    f"train.num_steps={num_steps}",
    f"train.ema_decay={decay}",
    "train.checkpoint_every_steps=1",
    f"train.max_checkpoints={num_steps}",
  )
  result = trainer.train(config, tmp_path / "ema", show_progress=False)
  saved = [_saved_state(tmp_path / "ema", step) for step in range(1, num_steps + 1)]
  for before, after in zip(saved, saved[1:]):
    expected = jax.tree.map(
      lambda e, p: decay * np.asarray(e) + (1 - decay) * np.asarray(p),
      before["ema_params"],
      after["params"],
    )
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      after["ema_params"],
      expected,
    )
  last = saved[-1]
  moved = jax.tree.leaves(
    jax.tree.map(lambda e, p: np.abs(np.asarray(e) - p).max(), last["ema_params"], last["params"])
  )
  assert max(moved) > 1e-3  # The average is not the parameters.
  with_average, with_params = _evaluate_by_hand(
    tmp_path / "ema", last["model_state"], last["ema_params"], last["params"]
  )
  m = result.eval_metrics
  assert m["eval/accuracy"] == pytest.approx(with_average[0], abs=0.5 / 2000)
  assert m["eval/loss"] == pytest.approx(with_average[1], rel=1e-5)
  assert m["eval/loss"] != pytest.approx(with_params[1], rel=1e-3)


@pytest.fixture
def tiny_cifar(tmp_path):
  """CIFAR-10 in its binary layout: 5 x 64 training and 64 test records of noise."""
  rng = np.random.default_rng(0)
  folder = tmp_path / "cifar-10-batches-bin"
  folder.mkdir()
  for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    cifar.write_records(
      folder / name,
      rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
      rng.integers(0, 10, (64, 1), dtype=np.uint8),
    )
  return tmp_path


@pytest.mark.slow  # Three compiles of CIFAR-sized networks; CI runs them.
@pytest.mark.parametrize(
  "experiment, overrides",
  [
    ("cifar10_resnet20.py", ["model.width=4"]),
    ("cifar10_resnet18.py", ["model.width=4"]),
    (
      "cifar10_vit.py",
      [
        "model.embed_dim=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.mlp_dim=64",
        "optimizer.warmup_steps=2",
      ],
    ),
  ],
)
def test_cifar_recipes_train_on_cifar_format_files(experiment, overrides, tiny_cifar, tmp_path):
  config = _config(
    experiment,
    f"data.dir={tiny_cifar}",
    "train.num_steps=4",
    "train.batch_size=16",
    "data.eval_batch_size=32",
    "train.log_every_steps=2",
    *overrides,
  )
  result = trainer.train(config, tmp_path / "run", show_progress=False)
  assert result.step == 4 and result.eval_metrics["eval/num_examples"] == 64
  assert all(np.isfinite(m["train/loss"]) for m in _train_metrics(tmp_path / "run").values())
