"""The seed's recipe on full MNIST reaches the TensorFlow tutorial's accuracy (slow: ~5 minutes)."""

import pytest

from jaxdl import config as config_lib
from jaxdl import trainer
from tests.conftest import REPO


@pytest.mark.slow
def test_seed_recipe_reaches_99_percent(shared_mnist, tmp_path):
  config = config_lib.load_experiment(REPO / "experiments" / "mnist_cnn.py")
  config_lib.apply_overrides(config, [f"data.dir={shared_mnist}"])
  result = trainer.train(config, tmp_path / "full", show_progress=False)
  assert result.step == 5 * (60_000 // 64)
  assert result.eval_metrics["eval/num_examples"] == 10_000
  assert result.eval_metrics["eval/accuracy"] >= 0.99
