"""The package's layers import only what their layer may: jaxdl.kernels imports jax alone,
jaxdl.nn jax and flax (and the kernels), never optimizers, checkpoints, data or files."""

import json
from pathlib import Path
import pkgutil
import subprocess
import sys

import pytest

import jaxdl

PACKAGE = Path(jaxdl.__file__).parent
# Third-party top-level packages a layer must not pull in.
HEAVY = ("flax", "optax", "orbax", "grain", "ml_collections", "tensorboardX", "matplotlib")


def _imported_after(modules: list[str]) -> tuple[set[str], set[str]]:
  """(third-party top-level packages, jaxdl modules) loaded by importing `modules` in a fresh
  process."""
  code = (
    "import json, sys\n"
    + "".join(f"import {m}\n" for m in modules)
    + "print(json.dumps(sorted(sys.modules)))"
  )
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  loaded = json.loads(done.stdout)
  return {m.split(".")[0] for m in loaded}, {m for m in loaded if m.startswith("jaxdl.")}


def _modules(subpackage: str) -> list[str]:
  return [f"jaxdl.{subpackage}.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE / subpackage)])]


def test_kernels_import_jax_only():
  modules = _modules("kernels")
  assert {"jaxdl.kernels.im2col", "jaxdl.kernels.conv_pool", "jaxdl.kernels.lstm"} <= set(modules)
  top_level, ours = _imported_after(modules)
  assert not top_level & set(HEAVY), sorted(top_level & set(HEAVY))
  assert all(m.startswith("jaxdl.kernels") for m in ours), sorted(ours)


@pytest.mark.parametrize("module", ["jaxdl.nn"])
def test_models_import_jax_and_flax_only(module):
  top_level, ours = _imported_after([module])
  assert "flax" in top_level
  assert not top_level & set(HEAVY[1:]), sorted(top_level & set(HEAVY[1:]))
  assert all(m.startswith(("jaxdl.nn", "jaxdl.kernels")) for m in ours), sorted(ours)


# The optional extras' packages (pyproject.toml): only the feature that needs one imports it.
# (Left out: flatbuffers, the export extra, and torch, which jax and tensorboardX import
# themselves wherever they are installed.)
EXTRAS = ("datasets", "pyarrow", "wandb", "gcsfs", "safetensors", "tokenizers")


def test_the_core_imports_no_optional_extra():
  """A run on the built-in data with no tracker, and every data source's module: the core install
  must work without the extras (each is imported when a config asks for its feature)."""
  modules = ["jaxdl.cli", "jaxdl.trainer", "jaxdl.export", "jaxdl.serving", "jaxdl.predict"]
  modules += _modules("data")
  top_level, _ = _imported_after(modules)
  assert not top_level & set(EXTRAS), sorted(top_level & set(EXTRAS))
