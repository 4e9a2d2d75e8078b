"""runtime.compilation_cache: compiled steps are kept on disk and reused, with the same results."""

import json
import os
import subprocess
import sys

import jax
import pytest

from jaxdl import compile_cache
from tests.conftest import REPO

RUN = [
  sys.executable,
  "-m",
  "jaxdl.cli",
  "train",
  str(REPO / "experiments" / "mnist_cnn.py"),
  "train.num_steps=6",
  "train.batch_size=32",
  "train.log_every_steps=3",
  "train.eval_every_steps=6",
  "data.eval_batch_size=1000",
  "--no-progress",
]


def _train(workdir, cache):
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  # Every program is kept, not only those that took JAX's default second to compile: a step that
  # compiled in 0.9 s in one run and 1.1 s in the next (a busy machine) would look uncached.
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  out = subprocess.run(
    [*RUN, f"runtime.compilation_cache={cache}", "--workdir", str(workdir)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  compile_seconds = [r["perf/compile_seconds"] for r in records if "perf/compile_seconds" in r]
  return [
    {k: v for k, v in r.items() if not k.startswith("perf/")} for r in records
  ], compile_seconds


# Slow (two `jaxdl train` processes, ~20 s): end to end, run by CI's `-m slow`.
@pytest.mark.slow
def test_second_run_loads_the_cached_step_and_computes_the_same(tmp_path):
  cache = tmp_path / "xla"
  first, _ = _train(tmp_path / "a", cache)
  cached = sorted(p.name for p in cache.iterdir())
  assert any("update" in name or "train" in name for name in cached), cached
  second, _ = _train(tmp_path / "b", cache)
  assert second == first
  assert sorted(p.name for p in cache.iterdir()) == cached  # Nothing compiled anew.


def test_off_and_an_existing_jax_setting_are_left_alone(tmp_path):
  assert compile_cache.configure("") is None
  assert compile_cache.configure("off") is None
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "theirs"))
  try:
    assert compile_cache.configure(str(tmp_path / "ours")) is None
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "theirs")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
  assert not (tmp_path / "ours").exists()
