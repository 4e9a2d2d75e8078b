"""Shared test setup: no downloads, small fast runs, the real data in ../shared when present."""

import os
from pathlib import Path

import pytest

# Tests never touch the network; the MNIST loader falls back to the shipped subset.
os.environ.setdefault("JAXDL_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def shared_mnist() -> Path:
  path = SHARED_DATA / "mnist"
  if not (path / "train-images-idx3-ubyte.gz").exists():
    pytest.skip(f"full MNIST not found at {path} (../shared/data is only on jaxdl dev machines)")
  return path
