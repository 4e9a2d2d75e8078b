"""Shared test setup: no downloads, small fast runs, the real data in ../shared when present."""

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
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=1").strip()

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def shared_mnist() -> Path:
  path = SHARED_DATA / "mnist"
  if not (path / "train-images-idx3-ubyte.gz").exists():
    pytest.skip(f"full MNIST not found at {path} (../shared/data is only on jaxdl dev machines)")
  return path
