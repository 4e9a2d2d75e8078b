"""Shared test setup: no downloads, small fast runs, the real data in ../shared when present."""

import importlib.util
import os
from pathlib import Path

import pytest

# Tests never touch the network; the MNIST loader falls back to the shipped subset.
os.environ.setdefault("JAXDL_OFFLINE", "1")
# One CPU device, in this process and in the `jaxdl train` processes tests start, unless a test
# asks for more: runs compared with each other then see the same device count whichever process
# (and whichever test first started JAX) ran them. parallel.cpu_devices=auto would otherwise split
# a fresh process into 8 devices; tests/test_cpu_devices.py tests that apart.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=1"
  ).strip()

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
# .ci/run sets this: there every data set the tests read (../shared/data, the Fashion-MNIST
# package) is at hand, so a missing one is a failure rather than a skip that would hide it.
REQUIRE_DATA = os.environ.get("JAXDL_REQUIRE_DATA") == "1"


def need_data(available: bool, reason: str) -> None:
  """Skips the calling test when its data set is missing (`reason` says which and where), or, in
  CI (JAXDL_REQUIRE_DATA=1), fails it."""
  if available:
    return
  if REQUIRE_DATA:
    pytest.fail(f"JAXDL_REQUIRE_DATA=1 but {reason}", pytrace=False)
  pytest.skip(reason)


def needs_data(available: bool, reason: str):
  """The decorator form of `need_data`: @needs_data(path.is_dir(), "... not at path")."""
  return pytest.mark.needs_data(available=available, reason=reason)


def pytest_runtest_setup(item):
  for marker in item.iter_markers("needs_data"):
    need_data(marker.kwargs["available"], marker.kwargs["reason"])


def load_benchmark(name: str):
  """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
  spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture
def shared_mnist() -> Path:
  path = SHARED_DATA / "mnist"
  need_data(
    (path / "train-images-idx3-ubyte.gz").exists(),
    f"full MNIST not found at {path} (../shared/data is only on jaxdl dev machines)",
  )
  return path


def seed_cnn_run(workdir: Path, *overrides: str) -> list[dict]:
  """The logged records (perf/ timings left out) of 20 seed-CNN steps at batch 32 and an eval,
  with `overrides`: for tests that a speed option leaves a run's numbers as they were."""
  from jaxdl import config as config_lib
  from jaxdl import metrics as metrics_lib
  from jaxdl import trainer

  config = config_lib.load_experiment(REPO / "experiments" / "mnist_cnn.py")
  config_lib.apply_overrides(
    config,
    [
      "train.batch_size=32",
      "train.num_steps=20",
      "train.log_every_steps=10",
      "train.eval_every_steps=20",
      "data.eval_batch_size=500",
      *overrides,
    ],
  )
  trainer.train(config, workdir, show_progress=False)
  return [
    {k: v for k, v in r.items() if not k.startswith("perf/")}
    for r in metrics_lib.read_metrics(workdir)
  ]
